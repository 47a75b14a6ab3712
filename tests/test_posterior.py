"""The Bayesian update of the cold-start prior: it is the prior with no labels, the base rate
moves after a handful of labels, weights follow the evidence, intervals shrink with labels, and
with enough labels it is calibrated on problems it never saw."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from pivottrace.metrics import expected_calibration_error
from pivottrace.posterior import (BAYES_FACTOR_TO_SWITCH, PosteriorModel, estimator_for, fit_posterior,
                                  laplace_log_evidence)
from pivottrace.uncertainty import ColdStartPrior, EstimatorConfig


def pool(n: int, seed: int = 0) -> list[dict]:
    """A pool with every signal varying independently."""
    rng = np.random.default_rng(seed)
    return [{"problem_id": f"p{i}", "model_id": "m", "majority_answer": "1",
             "vote_share": float(rng.choice([0.4, 0.6, 0.8, 1.0])), "n_distinct": int(rng.integers(1, 4)),
             "vote_entropy": float(rng.random()), "answer_found": int(rng.random() < 0.9),
             "greedy_agrees": int(rng.random() < 0.7), "mean_logprob": float(rng.normal(-0.6, 0.2)),
             "min_logprob": float(rng.normal(-4, 1)), "answer_prob": float(rng.random()),
             "length": int(rng.integers(40, 200)), "pivot_density": float(rng.gamma(2, 0.5)),
             "max_pivot_score": float(rng.normal(2, 1)), "mean_entropy": float(rng.random()),
             "mean_temporal": float(rng.random() * 0.1), "mean_consistency": float(rng.normal(0.85, 0.03))}
            for i in range(n)]


def test_with_no_labels_the_posterior_is_the_cold_start_prior():
    rows = pool(300)
    prior = ColdStartPrior()
    model = PosteriorModel(prior=prior).fit([], np.zeros(0), pool=rows)
    assert np.allclose(model.predict(rows), prior.predict(rows), atol=1e-9)
    assert fit_posterior(rows, {}) .kind == "cold_start"


def test_the_base_rate_moves_after_a_handful_of_labels():
    """The prior thinks ~40 % are wrong; ten random labels that are all wrong lift the whole pool."""
    rows = pool(400)
    prior_mean = ColdStartPrior().predict(rows).mean()
    rng = np.random.default_rng(1)
    picked = rng.choice(len(rows), size=10, replace=False)
    model = fit_posterior(rows, {rows[i]["problem_id"]: 1 for i in picked})
    assert model.predict(rows).mean() > prior_mean + 0.15
    assert model.mean[0] > 1.0  # the intercept carried it
    right = fit_posterior(rows, {rows[i]["problem_id"]: 0 for i in picked})
    assert right.predict(rows).mean() < prior_mean - 0.1
    one = fit_posterior(rows, {rows[picked[0]]["problem_id"]: 1})
    assert prior_mean < one.predict(rows).mean() < prior_mean + 0.15  # one label moves it, a little


def test_a_signal_weight_grows_with_evidence_for_it_and_shrinks_without():
    """Outcomes follow dispersed attention (mean_entropy) alone: its weight grows, and the weight
    on pivot density, which the outcomes ignore, shrinks towards 0."""
    rows = pool(800)
    model0 = PosteriorModel().fit([], np.zeros(0), pool=rows)
    names = model0.names()
    entropy, density = names.index("mean_entropy"), names.index("pivot_density")
    values = np.array([r["mean_entropy"] for r in rows])
    rank = values.argsort().argsort() / (len(rows) - 1)
    model = fit_posterior(rows, {r["problem_id"]: int(rank[i] > 0.5) for i, r in enumerate(rows)}, reweight=False)
    assert model.mean[entropy] > model0.mean[entropy] + 1.0
    assert abs(model.mean[density]) < 0.5 * model0.mean[density]
    assert model.metrics["weights"]["pivot_density"]["prior"] == pytest.approx(model0.mean[density], abs=1e-3)


def test_credible_intervals_shrink_as_labels_arrive_and_contain_the_estimate():
    rows = pool(400)
    rng = np.random.default_rng(3)
    truth = rng.random(len(rows)) < 0.5
    order = rng.permutation(len(rows))
    widths = []
    for n in (0, 10, 100):
        model = PosteriorModel().fit([rows[i] for i in order[:n]], truth[order[:n]].astype(int), pool=rows)
        lower, upper = model.predict_interval(rows)
        u = model.predict(rows)
        assert np.all(lower <= u) and np.all(u <= upper)
        widths.append(float(np.mean(upper - lower)))
    assert widths[0] > widths[1] > widths[2]


def test_held_out_problems_are_calibrated_when_the_outcomes_follow_a_logistic_model():
    """Outcomes drawn from the posterior's own model family, but not the prior's: a base rate one
    logit lower, dispersed attention weighing in, pivot density not at all. Half the pool labelled
    at random; on the other half the posterior is calibrated and close to the true P(wrong), where
    the prior is off by its base rate."""
    rows = pool(3000, seed=4)
    model0 = PosteriorModel().fit([], np.zeros(0), pool=rows)
    names = model0.names()
    theta = model0.mean.copy()  # [P]
    theta[0] -= 1.0
    theta[names.index("mean_entropy")] += 1.5
    theta[names.index("pivot_density")] = 0.0
    p = expit(model0.design(rows) @ theta)  # [N] the true P(wrong)
    y = (np.random.default_rng(5).random(len(rows)) < p).astype(int)  # [N]
    half = len(rows) // 2
    model = fit_posterior(rows, {r["problem_id"]: int(y[i]) for i, r in enumerate(rows[:half])})
    held = model.predict(rows)[half:]  # [N/2] problems whose labels it never saw
    assert expected_calibration_error(held, y[half:]) < 0.05
    assert np.abs(held - p[half:]).mean() < 0.05
    prior = ColdStartPrior().predict(rows)[half:]
    assert expected_calibration_error(prior, y[half:]) > 0.1  # the labels were needed


def test_extra_signal_columns_enter_with_a_zero_prior_weight():
    rows = pool(200)
    for i, r in enumerate(rows):
        r["first_pivot_position"] = float(i % 7)
    config = EstimatorConfig(columns=("first_pivot_position",))
    model = estimator_for(rows, {"p0": 1, "p1": 0}, config=config)
    assert model.names()[-1] == "first_pivot_position"
    assert model.prior_mean[-1] == 0.0


def test_labels_outside_the_pool_are_refused():
    rows = pool(50)
    with pytest.raises(ValueError, match="not in the pool"):
        PosteriorModel().fit([{**rows[0], "problem_id": "stranger"}], np.ones(1), pool=rows)


def test_the_laplace_evidence_matches_the_integral_for_one_parameter():
    """An intercept-only model: log p(y) by numerical integration over the intercept's prior."""
    from scipy.integrate import quad
    from scipy.stats import norm

    y = (np.arange(40) < 13).astype(float)  # [M] 13 wrong of 40
    x = np.ones((y.size, 1))  # [M, 1]
    mean, sd = np.array([0.5]), np.array([1.0])

    def log_joint(b):
        return float(np.sum(y * b - np.logaddexp(0.0, b)) + norm.logpdf(b, mean[0], sd[0]))

    peak = max(log_joint(b) for b in np.linspace(-5, 5, 201))
    exact = peak + np.log(quad(lambda b: np.exp(log_joint(b) - peak), -10, 10)[0])
    assert laplace_log_evidence(x, y, mean, sd) == pytest.approx(exact, abs=0.02)


def test_the_labels_switch_to_a_single_signal_only_on_strong_evidence():
    """Outcomes that follow token confidence alone make the confidence-only model win by a Bayes
    factor above the switch; outcomes from the all-signal model's own prior keep it; a handful of
    labels, or labels of one outcome only, never switch."""
    from sklearn.metrics import roc_auc_score

    rows = pool(600, seed=7)
    confidence = np.array([r["mean_logprob"] for r in rows])
    y = (confidence < np.quantile(confidence, 0.4)).astype(int)  # [N] low confidence = wrong, nothing else counts
    picked = np.random.default_rng(8).choice(len(rows), size=120, replace=False)
    model = estimator_for(rows, {rows[i]["problem_id"]: int(y[i]) for i in picked})
    assert model.name == "confidence only" and model.metrics["model"] == "confidence only"
    assert model.metrics["bayes_factor"] > BAYES_FACTOR_TO_SWITCH
    assert set(model.metrics["model_log_evidence"]) == {"all signals", "confidence only", "vote share only"}
    assert roc_auc_score(y, model.predict(rows)) > 0.95
    assert estimator_for(rows, {rows[i]["problem_id"]: int(y[i]) for i in picked},
                         config=EstimatorConfig().single()).name == "all signals"  # no alternatives: no switch

    blend = (np.random.default_rng(9).random(len(rows)) < ColdStartPrior().predict(rows)).astype(int)  # [N]
    stays = estimator_for(rows, {rows[i]["problem_id"]: int(blend[i]) for i in picked})
    assert stays.name == "all signals" and stays.metrics["bayes_factor"] < BAYES_FACTOR_TO_SWITCH

    few = estimator_for(rows, {rows[i]["problem_id"]: int(y[i]) for i in picked[:4]})
    assert few.name == "all signals"
    wrong_only = [i for i in picked if y[i] == 1][:30]
    one_outcome = estimator_for(rows, {rows[i]["problem_id"]: 1 for i in wrong_only})
    assert one_outcome.name == "all signals" and "bayes_factor" not in one_outcome.metrics
