"""Uncertainty: the cold-start prior is a sensible probability, calibration is calibrated, the
gate keeps the prior when labels do not support a model, and the metrics are right."""

from __future__ import annotations

import numpy as np
import pytest

from pivottrace.features import NUMERIC_FEATURES
from pivottrace.uncertainty import (AUROC_TOLERANCE, VOTE_FLOOR, CalibratedModel, ColdStartPrior, EstimatorConfig,
                                    FeatureTable, can_calibrate, choose_estimator,
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


def known_relation_pool(n: int, seed: int) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Rows whose P(wrong) = sigmoid(2 a - 1.5 b) for two standard-normal features a, b."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)  # [N], [N]
    p = 1.0 / (1.0 + np.exp(-(2.0 * a - 1.5 * b)))  # [N]
    y = (rng.random(n) < p).astype(int)  # [N]
    rows = [row(f"k{i}", mean_logprob=float(a[i]), vote_share=float(b[i])) for i in range(n)]
    return rows, y, p


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


def test_calibrated_model_on_a_known_relation_has_low_ece():
    rows, y, p = known_relation_pool(3000, seed=1)
    model = CalibratedModel(columns=("mean_logprob", "vote_share"))
    model.fit(rows[:1500], y[:1500], pool=rows)
    held = model.predict(rows)[1500:]  # [1500] problems it never saw
    assert expected_calibration_error(held, y[1500:]) < 0.05
    assert np.abs(held - p[1500:]).mean() < 0.05  # close to the true probabilities
    assert set(model.metrics) >= {"ece", "brier", "auroc", "n"}
    assert model.metrics["n"] == 1500 and model.metrics["auroc"] > 0.8


def test_calibrated_model_with_the_prior_as_input_still_learns_the_labels():
    rows, y, p = known_relation_pool(2000, seed=2)
    model = CalibratedModel(columns=("mean_logprob", "vote_share"), prior=ColdStartPrior())
    model.fit(rows[:1000], y[:1000], pool=rows)
    held = model.predict(rows)[1000:]
    assert calibration_metrics(held, y[1000:])["auroc"] > 0.8
    assert expected_calibration_error(held, y[1000:]) < 0.06


def test_calibration_refuses_one_sided_labels_and_rows_outside_the_pool():
    rows, y, _ = known_relation_pool(200, seed=3)
    with pytest.raises(ValueError, match="right and"):
        CalibratedModel().fit(rows, np.ones(200, dtype=int))
    with pytest.raises(ValueError, match="not in the pool"):
        CalibratedModel().fit(rows[:150], y[:150], pool=rows[10:])
    assert not can_calibrate(np.array([1] * 30 + [0] * 19))
    assert can_calibrate(np.array([1] * 30 + [0] * 20))


def test_choose_estimator_uses_labels_only_as_far_as_they_beat_the_prior():
    rows, y, _ = known_relation_pool(1500, seed=4)
    outcomes = {r["problem_id"]: int(v) for r, v in zip(rows[:600], y[:600])}
    chosen = choose_estimator(rows, outcomes)
    assert chosen.kind == "calibrated"  # the prior cannot know this relation; the labels can
    scores = chosen.metrics["candidates"]
    assert scores["all_signals"]["brier"] < scores["prior"]["brier"]
    assert scores["all_signals"]["auroc"] > scores["prior"]["auroc"]
    # labels drawn from the prior's own probabilities, 100 from the top of the queue: the chosen
    # candidate has the best held-out Brier among those that rank about as well as the prior
    kinds = []
    for seed in range(6):
        pool = typical_pool(500, seed=seed)
        u = ColdStartPrior().predict(pool)
        draw = np.random.default_rng(seed + 1).random(len(pool)) < u
        sample = {pool[i]["problem_id"]: int(draw[i]) for i in np.argsort(-u)[:100]}
        chosen = choose_estimator(pool, sample)
        kinds.append(chosen.kind)
        if not chosen.metrics:
            continue  # too few of one outcome: the prior, nothing fitted
        scores = chosen.metrics["candidates"]
        name = {"cold_start": "prior", "calibrated_prior": "prior_rescaled", "calibrated": "all_signals"}[chosen.kind]
        floor = scores["prior"]["auroc"] - AUROC_TOLERANCE
        eligible = [k for k, v in scores.items() if k == "prior" or v["auroc"] >= floor]
        assert scores[name]["brier"] == min(scores[k]["brier"] for k in eligible)
    assert set(kinds) - {"calibrated"}  # the prior (as it is or rescaled) is kept when labels do not support more
    # too few of one outcome: the prior, no fit at all
    few = {r["problem_id"]: 1 for r in rows[:60]} | {r["problem_id"]: 0 for r in rows[60:79]}
    assert choose_estimator(rows, few).kind == "cold_start"


def test_a_rescaled_prior_keeps_the_priors_ranking_and_fixes_its_scale():
    pool = typical_pool(600, seed=9)
    u = ColdStartPrior().predict(pool)
    truth = np.clip(3 * u, 0, 0.97)  # the model is wrong three times as often as the prior says
    y = (np.random.default_rng(2).random(len(pool)) < truth).astype(int)
    model = CalibratedModel(columns=(), prior=ColdStartPrior(), kind="calibrated_prior")
    model.fit(pool[:300], y[:300], pool=pool)
    p = model.predict(pool)
    assert calibration_metrics(p, y)["auroc"] == pytest.approx(calibration_metrics(u, y)["auroc"], abs=0.02)  # same order
    assert abs(p.mean() - y.mean()) < abs(u.mean() - y.mean()) / 3  # the scale follows the labels


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
    assert w.max() / np.median(w) <= 10.0 + 1e-9  # MAX_WEIGHT: a few probes cannot take over
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
