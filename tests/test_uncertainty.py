"""Uncertainty: the cold-start prior is a sensible probability, the covariate-shift weights lift
rarely labelled regions, configs drop signals everywhere, and the metrics are right. (The
posterior that learns from labels is tested in test_posterior.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from pivottrace.features import NUMERIC_FEATURES
from pivottrace.uncertainty import (MAX_WEIGHT, VOTE_FLOOR, ColdStartPrior, EstimatorConfig, FeatureTable,
                                    covariate_shift_weights)
from pivottrace.metrics import calibration_metrics, expected_calibration_error

TYPICAL = {  # a middling problem: split vote, middling confidence and pivots
    "vote_share": 0.6, "n_distinct": 2, "vote_entropy": 0.67, "answer_found": 1, "greedy_agrees": 1,
    "mean_logprob": -0.6, "min_logprob": -4.0, "answer_prob": 0.5, "length": 120,
    "pivot_density": 1.0, "max_pivot_score": 2.0, "mean_entropy": 0.6, "mean_temporal": 0.05,
    "mean_consistency": 0.85,
}


def row(pid: str, **values) -> dict:
    return {"problem_id": pid, "model_id": "m", "majority_answer": "1", **TYPICAL, **values}


def typical_pool(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [row(f"p{i}", vote_share=float(rng.choice([0.4, 0.6, 0.8, 1.0])),
                mean_logprob=float(rng.normal(-0.6, 0.2)), pivot_density=float(rng.gamma(2, 0.5)),
                mean_consistency=float(rng.normal(0.85, 0.03)))
            for i in range(n)]


def test_prior_ranks_an_obviously_uncertain_case_above_an_obviously_certain_one():
    certain = row("certain", vote_share=1.0, vote_entropy=0.0, n_distinct=1, mean_logprob=-0.05,
                  min_logprob=-0.5, answer_prob=0.99, pivot_density=0.0, max_pivot_score=0.1,
                  mean_entropy=0.4, mean_temporal=0.01, mean_consistency=0.97)
    uncertain = row("uncertain", vote_share=0.4, vote_entropy=1.3, n_distinct=4, answer_found=0,
                    greedy_agrees=0, mean_logprob=-1.8, min_logprob=-9.0, answer_prob=None,
                    pivot_density=4.0, max_pivot_score=6.0, mean_entropy=0.8, mean_temporal=0.3,
                    mean_consistency=0.6)
    u = ColdStartPrior().predict(typical_pool(60) + [certain, uncertain])  # [62]
    assert u[-1] > u[-2]
    assert u[-2] < 0.05  # a confident unanimous answer: probably right
    assert u[-1] > 0.6  # split votes, no answer, low confidence, many pivots: probably wrong
    assert np.all((u > 0) & (u < 1))


def test_prior_is_anchored_on_the_vote_and_is_a_probability_not_a_rank():
    # every other signal equal: the adjustment is neutral and the prior is the vote anchor itself
    rows = [row("a", vote_share=1.0), row("b", vote_share=0.6), row("c", vote_share=0.0)]
    u = ColdStartPrior().predict(rows)
    expected = VOTE_FLOOR + (1 - 2 * VOTE_FLOOR) * (1 - np.array([1.0, 0.6, 0.0]))
    np.testing.assert_allclose(u, expected)
    # a pool of unanimous answers stays near the floor: not the 0.5 a rank average would give
    assert ColdStartPrior().predict(typical_pool(50) + [row("u", vote_share=1.0)])[-1] < 0.2


def test_feature_table_imputes_missing_values_with_the_column_median():
    rows = [row("a", answer_prob=0.2), row("b", answer_prob=None), row("c", answer_prob=0.8)]
    table = FeatureTable.from_rows(rows)
    np.testing.assert_allclose(table.matrix(("answer_prob",))[:, 0], [0.2, 0.5, 0.8])
    assert table.matrix(NUMERIC_FEATURES).shape == (3, len(NUMERIC_FEATURES))
    with pytest.raises(KeyError):
        table.matrix(("no_such_feature",))


def test_covariate_shift_weights_lift_labels_from_rarely_labelled_regions():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 1))  # [P, 1]
    top = np.flatnonzero(x[:, 0] > 1.0)  # the router labelled the top slice...
    rare = np.flatnonzero(x[:, 0] < -1.0)[:5]  # ...and a few probes from elsewhere
    labelled = np.concatenate([top, rare])
    w = covariate_shift_weights(x, labelled)  # [M]
    assert w.shape == labelled.shape
    assert w.mean() == pytest.approx(1.0)
    assert w.max() / np.median(w) <= MAX_WEIGHT + 1e-9  # a few probes cannot take over
    assert w[-5:].min() > w[:-5].max()  # each probe stands for many unlabelled problems


def test_ece_and_brier_on_hand_computed_cases():
    probs = np.array([0.1, 0.1, 0.9, 0.9])
    y = np.array([0, 0, 1, 1])
    assert expected_calibration_error(probs, y) == pytest.approx(0.1)
    metrics = calibration_metrics(probs, y)
    assert metrics["brier"] == pytest.approx(0.01)
    assert metrics["auroc"] == 1.0
    assert calibration_metrics(probs, np.ones(4, dtype=int))["auroc"] is None  # one outcome: no AUROC
    weighted = expected_calibration_error(np.array([0.1, 0.9]), np.array([0, 0]), weights=np.array([3.0, 1.0]))
    assert weighted == pytest.approx(0.75 * 0.1 + 0.25 * 0.9)


def test_estimator_config_without_attention_drops_those_signals_everywhere():
    config = EstimatorConfig.without(("pivot_density", "mean_entropy"))
    assert "pivot_density" not in config.columns and "pivot_density" not in config.prior_weights
    assert "mean_logprob" in config.columns and "mean_logprob" in config.prior_weights


def test_priors_with_different_settings_do_not_share_a_cached_prediction():
    """The prior caches its prediction on the feature table; the key must hold every setting."""
    rows = typical_pool(80, seed=3)
    variants = [ColdStartPrior(), ColdStartPrior(adjust_logits=0.0), ColdStartPrior(anchor=None),
                ColdStartPrior(weights={"mean_logprob": (-1, 1.0)}),
                ColdStartPrior(weights={"mean_logprob": (1, 1.0)})]
    shared = FeatureTable.from_rows(rows)
    for prior in variants:
        fresh = prior.predict(FeatureTable.from_rows(rows))  # [N] on a table with an empty cache
        assert np.allclose(prior.predict(shared), fresh)
    assert len({tuple(np.round(p.predict(shared), 9)) for p in variants}) == len(variants)
