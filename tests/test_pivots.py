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


# --- token-level pivots ---------------------------------------------------------------------

from scipy.stats import false_discovery_control  # noqa: E402

from pivottrace.pivots import FDR_Q, analyse_trace, benjamini_hochberg, score_tokens, token_null  # noqa: E402


def _token_trace(rng, n_steps=4, per_step=12):
    n = n_steps * per_step
    arrays = _quiet_trace(rng, n_steps=n_steps)
    arrays.update(token_logprob=-rng.gamma(1.0, 0.2, n), token_entropy=rng.gamma(2.0, 0.3, n),
                  token_shift=rng.gamma(2.0, 0.02, n), token_received=rng.gamma(2.0, 0.005, n))
    steps = [{"tok_start": s * per_step, "tok_end": (s + 1) * per_step} for s in range(n_steps)]
    return arrays, steps


def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(0).uniform(0, 0.2, 40) ** 2
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    assert benjamini_hochberg(np.zeros(0)).size == 0


def test_one_surprising_token_makes_its_step_a_pivot():
    rng = np.random.default_rng(3)
    pool = [_token_trace(rng) for _ in range(200)]
    null = token_null([a for a, _ in pool])
    arrays, steps = _token_trace(rng)
    quiet = score_tokens(arrays, steps, null)
    assert quiet.pivots == [] and quiet.pivot_tokens == []
    arrays["token_logprob"][27] = -12.0  # the chain writes a number the model did not expect (step 2)
    result = score_tokens(arrays, steps, null)
    assert result.pivot_tokens == [27] and result.pivots == [2]
    assert result.step_signals[2] == ["surprisal"] and result.token_q[27] <= FDR_Q
    assert result.step_scores[2] == result.step_scores.max() > 1.0  # -log10 q
    stats = pool_stats([a for a, _ in pool])
    combined, _ = analyse_trace(arrays, steps, stats, null, n_completion_tokens=48)
    assert combined.pivots == [2] and "surprisal" in combined.fired[2]
    assert combined.pivots == [int(s) for s in np.flatnonzero(combined.scores > PIVOT_THRESHOLD)]  # what views draw
    assert combined.scores[2] > PIVOT_THRESHOLD and combined.density == 100 / 48


def test_quiet_traces_rarely_have_token_pivots():
    """BH at FDR_Q: under the null, a trace has any pivot token with probability <= FDR_Q."""
    rng = np.random.default_rng(4)
    pool = [_token_trace(rng) for _ in range(300)]
    null = token_null([a for a, _ in pool[:200]])
    fired = [bool(score_tokens(a, s, null).pivots) for a, s in pool[200:]]
    assert np.mean(fired) <= FDR_Q + 0.05


def test_traces_without_attention_token_arrays_still_score():
    rng = np.random.default_rng(5)
    pool = [_token_trace(rng) for _ in range(50)]
    for arrays, _ in pool:
        del arrays["token_shift"], arrays["token_received"]  # stored before they existed
    null = token_null([a for a, _ in pool])
    assert set(null.sorted_values) == {"surprisal", "forking"}
    result = score_tokens(*pool[0], null)
    assert result.token_q.shape == (48,) and result.forking_share.shape == (4,)


def test_numbers_are_tested_against_the_pools_numbers():
    """A number the model did not expect is a pivot even where words are often as surprising;
    a surprising word is not tested when the chain has numbers."""
    rng = np.random.default_rng(6)
    texts = (["Sam", " has", " 4", " apples", " and", " 3", " more", "."] * 6)  # 48 tokens, 12 numbers
    is_number = np.array([t.strip().isdigit() for t in texts])
    pool = []
    for _ in range(150):
        arrays, steps = _token_trace(rng)
        arrays["token_logprob"] = np.where(is_number, -rng.gamma(1.0, 0.1, 48), -rng.gamma(1.0, 3.0, 48))
        pool.append((arrays, steps))
    null = token_null([a for a, _ in pool], [texts] * len(pool))
    arrays, steps = _token_trace(rng)
    arrays["token_logprob"] = np.where(is_number, -0.05, -1.0)  # typical numbers and words
    arrays["token_logprob"][26] = -6.0  # " 3" in step 2: ordinary for a word, extreme for a number
    arrays["token_logprob"][27] = -40.0  # " more": a very surprising word, but words are not tested here
    result = score_tokens(arrays, steps, null, tokens=texts)
    assert result.pivot_tokens == [26] and result.pivots == [2]
    untyped = score_tokens(arrays, steps, null)  # without token texts every token is tested, one class
    assert 27 in untyped.pivot_tokens
