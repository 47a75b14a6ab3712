"""Pivot weights fitted from step labels: the prior without labels, the MLE with a flat prior, and learning."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pivottrace.pivot_weights import (FEATURES, PRIOR_WEIGHTS, LabelledChain, fit_pivot_weights, training_steps)
from pivottrace.pivots import PIVOT_THRESHOLD


def _chains(rng, n, *, informative="predictive_entropy", shift=3.0):
    """Chains whose first wrong step has a high `informative` signal; other signals are noise."""
    k = FEATURES.index(informative)
    chains = []
    for _ in range(n):
        n_steps = int(rng.integers(3, 7))
        x = np.abs(rng.normal(0, 1, (n_steps, len(FEATURES))))
        first = int(rng.integers(-1, n_steps))
        if first >= 0:
            x[first, k] += shift
        chains.append(LabelledChain(x, first))
    return chains


def test_without_labels_the_weights_are_the_hand_set_prior():
    fitted = fit_pivot_weights([])
    assert fitted.weights == pytest.approx(PRIOR_WEIGHTS) and fitted.threshold == PIVOT_THRESHOLD
    assert fitted.n_steps == 0


def test_training_steps_stop_at_the_first_wrong_step():
    x = np.arange(4 * len(FEATURES), dtype=float).reshape(4, len(FEATURES))
    xs, y, w = training_steps([LabelledChain(x, 1), LabelledChain(x[:2], -1), LabelledChain(x[:3], None)])
    assert y.tolist() == [0, 1, 0, 0, 0, 0, 0] and len(xs) == 7
    assert w.tolist() == [1, 1, 1, 1, 0.25, 0.25, 0.25]


def test_a_flat_prior_gives_the_maximum_likelihood_fit():
    rng = np.random.default_rng(0)
    chains = _chains(rng, 300, shift=0.7)  # overlapping classes: the maximum-likelihood fit is finite
    x, y, _ = training_steps(chains)
    fitted = fit_pivot_weights(chains, prior_sd=1e4)
    reference = LogisticRegression(C=np.inf, max_iter=5000).fit(x, y)
    np.testing.assert_allclose([fitted.weights[f] for f in FEATURES], reference.coef_[0], atol=2e-3)
    assert fitted.threshold == pytest.approx(-reference.intercept_[0], abs=2e-3)


def test_labels_move_the_weights_toward_the_signal_that_marks_the_first_wrong_step():
    few = fit_pivot_weights(_chains(np.random.default_rng(1), 3))
    many = fit_pivot_weights(_chains(np.random.default_rng(1), 400))
    move = {name: abs(few.weights[name] - PRIOR_WEIGHTS[name]) for name in FEATURES}
    assert max(move.values()) < 1.0  # a handful of labels moves no weight far from the prior
    assert many.weights["predictive_entropy"] > PRIOR_WEIGHTS["predictive_entropy"] + 0.5
    assert many.weights["predictive_entropy"] == max(many.weights.values())
    assert many.n_first_wrong > 0 and many.to_dict()["weights"].keys() == set(FEATURES)


def test_a_rescoring_route_fits_pivot_weights_from_step_labels_and_records_them(tmp_path):
    import json

    from pivottrace import pipeline, store
    from tests.conftest import build_app_db

    db = build_app_db(tmp_path / "w.db", n_problems=20)
    first = pipeline.route(db, model_id="synth")
    assert "pivot_weights" not in store.latest_router_version(db)["thresholds"]
    rows = db.execute("select problem_id, steps from traces order by problem_id limit 6").fetchall()
    for problem_id, steps in rows:
        store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=len(json.loads(steps)) - 1)
    report = pipeline.route(db, model_id="synth")
    recorded = store.latest_router_version(db)["thresholds"]["pivot_weights"]
    assert report.router_version == first.router_version + 1
    assert recorded["n_chains"] == 6 and recorded["n_first_wrong"] == 6 and set(recorded["weights"]) == set(FEATURES)
    assert recorded["weights"] != pytest.approx(PRIOR_WEIGHTS)  # six labels moved the weights a little
