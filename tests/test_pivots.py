"""Pivot scoring on hand-checkable arrays."""

import numpy as np

from pivottrace.pivots import PIVOT_THRESHOLD, pool_stats, score_trace


def _quiet_trace(rng, n_layers=4, n_steps=10):
    return {
        "entropy": 0.5 + 0.01 * rng.standard_normal((n_layers, n_steps)),  # [L, S]
        "temporal_change": np.abs(0.05 + 0.01 * rng.standard_normal((n_layers, n_steps))),  # [L, S]
        "consistency": 0.9 + 0.01 * rng.standard_normal(n_steps),  # [S]
        "pred_entropy_mean": 1.0 + 0.05 * rng.standard_normal(n_steps),  # [S]
        "cue": np.zeros(n_steps),  # [S]
    }


def test_one_planted_shift_marks_that_step_and_only_that_step():
    rng = np.random.default_rng(0)
    pool = [_quiet_trace(rng) for _ in range(30)]
    stats = pool_stats(pool)
    target = _quiet_trace(rng)
    target["temporal_change"][:, 6] = 0.6  # the model suddenly looks elsewhere at step 6
    target["consistency"][6] = 0.5  # and its layers disagree
    result = score_trace(target, stats, n_completion_tokens=200)
    assert result.pivots == [6]
    assert {"temporal_change", "layer_disagreement"} <= set(result.fired[6])
    assert result.density == 100 * 1 / 200
    assert result.scores[6] == result.max_score > PIVOT_THRESHOLD


def test_quiet_trace_has_no_pivots_and_cue_alone_fires():
    rng = np.random.default_rng(1)
    pool = [_quiet_trace(rng) for _ in range(30)]
    stats = pool_stats(pool)
    quiet = _quiet_trace(rng)
    assert score_trace(quiet, stats, 100).pivots == []
    quiet["cue"][3] = 2  # "wait, actually"
    result = score_trace(quiet, stats, 100)
    assert result.pivots == [3] and "cue" in result.fired[3]


def test_first_step_temporal_change_is_ignored():
    rng = np.random.default_rng(2)
    stats = pool_stats([_quiet_trace(rng) for _ in range(10)])
    trace = _quiet_trace(rng)
    trace["temporal_change"][:, 0] = 0.9  # undefined for step 0; must not count
    assert 0 not in score_trace(trace, stats, 100).pivots


def test_constant_signals_do_not_divide_by_zero():
    flat = {"entropy": np.full((2, 3), 0.5), "temporal_change": np.zeros((2, 3)),
            "consistency": np.ones(3), "pred_entropy_mean": np.ones(3), "cue": np.zeros(3)}
    result = score_trace(flat, pool_stats([flat, flat]), 30)
    assert np.all(np.isfinite(result.scores)) and result.pivots == []
