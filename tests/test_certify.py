"""The self-train band's verified precision: Clopper-Pearson bounds hold their coverage on
simulated bands, the band stays closed without evidence and opens with it, and one label does not
move many problems between routes."""

from __future__ import annotations

import numpy as np
import pytest

from pivottrace.certify import (CANDIDATE_EDGES, certify_band, clopper_pearson_lower, probes_to_open)
from pivottrace.posterior import fit_posterior
from pivottrace.route import RouterConfig, route_pool


def test_clopper_pearson_matches_the_closed_form_for_all_right_labels():
    # with n labels all right, the one-sided lower bound is delta ** (1 / n)
    for n in (1, 5, 20):
        assert clopper_pearson_lower(n, n, 0.1) == pytest.approx(0.1 ** (1 / n))
    assert clopper_pearson_lower(0, 10, 0.1) == 0.0 and clopper_pearson_lower(0, 0, 0.1) == 0.0
    # target 0.85 at delta 0.1: 15 right labels open a single band (0.1 ** (1/15) = 0.858)
    assert probes_to_open(0, 0, target=0.85, delta=0.1, assumed=1.0) == 15
    assert probes_to_open(14, 14, target=0.85, delta=0.1) == 1
    assert probes_to_open(15, 15, target=0.85, delta=0.1) == 0
    assert probes_to_open(8, 10, target=0.85, delta=0.1) is None  # 0.8 observed: never at this precision
    more = probes_to_open(19, 20, target=0.85, delta=0.1)
    assert more is not None and more > 0
    total = 20 + more
    assert clopper_pearson_lower(int(0.95 * total), total, 0.1) >= 0.85


@pytest.mark.parametrize("shape", ["flat_below", "declining"])
def test_certified_bands_fall_below_target_in_at_most_delta_of_runs(shape):
    """Simulated bands whose precision is at or below the target in part or all of the band;
    random probes; the certified prefix's true precision is below target in <= delta of runs."""
    rng = np.random.default_rng(0)
    target, delta, runs, size = 0.85, 0.1, 2000, 400
    if shape == "flat_below":
        p = np.full(size, target - 0.02)  # every prefix is below target: any opening is a failure
    else:
        p = np.linspace(0.97, 0.70, size)  # inner prefixes are fine, outer ones are not
    failures = opened = 0
    for _ in range(runs):
        right = rng.random(size) < p  # [C] the truth
        status = np.full(size, -1)
        probes = rng.choice(size, size=int(rng.integers(20, 200)), replace=False)
        status[probes] = right[probes].astype(int)
        cert = certify_band(status, target=target, delta=delta)
        if cert.open:
            opened += 1
            failures += right[:cert.certified].mean() < target
    assert failures / runs <= delta
    if shape == "declining":
        assert opened > runs // 5  # the guarantee is not bought by never opening


def test_band_stays_closed_without_evidence_and_says_how_many_probes_would_open_it():
    rows, u = _split_pool(600)
    routing = route_pool(rows, u, budget_remaining=0)
    route = np.array([d["route"] for d in routing.decisions])
    assert "self_train" not in set(route) and (route == "self_train_pending").sum() > 0
    cert = routing.thresholds["self_train_certificate"]
    assert not routing.thresholds["self_train_open"] and cert["labels"] == 0
    assert cert["probes_to_go"] is not None and cert["probes_to_go"] >= 23  # 4 edges: delta / 4 each
    assert routing.thresholds["calibration_probes"] == 0  # no budget, no probes
    assert routing.thresholds["low_priority_verified"] is False


def test_band_opens_with_right_probe_labels_and_not_with_wrong_ones():
    rows, u = _split_pool(600)

    def probe_rounds(verdict: int, rounds: int = 4):
        """Route, label every probe drawn from the self-train band with `verdict`, re-route."""
        outcomes = {}
        routing = route_pool(rows, u, budget_remaining=100)
        for _ in range(rounds):
            assert routing.thresholds["calibration_probes"] > 0 or routing.thresholds["self_train_open"] \
                or routing.thresholds["self_train_certificate"]["probes_to_go"] is None
            size = routing.thresholds["self_train_candidates"]
            band = set(np.flatnonzero(np.isin(np.arange(len(rows)), _band(rows, routing.uncertainty, size))))
            picked = [i for i in band if routing.routes[i] == "annotate" and rows[i]["problem_id"] not in outcomes]
            outcomes.update({rows[i]["problem_id"]: verdict for i in picked})
            routing = route_pool(rows, u, budget_remaining=100, exclude=set(outcomes), outcomes=outcomes,
                                 previous=routing.thresholds)
        return routing, outcomes

    opened, labels = probe_rounds(0)  # every probed majority was right
    assert opened.thresholds["self_train_open"] and len(labels) >= 23
    assert (opened.routes == "self_train").sum() > 0
    closed, labels = probe_rounds(1)  # every probed majority was wrong
    assert not closed.thresholds["self_train_open"] and labels
    assert closed.thresholds["self_train_certificate"]["probes_to_go"] is None  # never at 0 % right
    band = _band(rows, closed.uncertainty, closed.thresholds["self_train_candidates"])
    fresh = [i for i in band if closed.routes[i] == "annotate" and rows[i]["problem_id"] not in labels]
    # and no more probes are spent on it: band members still picked are the budget's spill-over
    assert not closed.thresholds["self_train_certificate"]["probes_queued"]
    assert len(fresh) <= closed.thresholds["spilled_into_annotate"]


def _band(rows, u, size):
    split = [i for i, r in enumerate(rows) if r["majority_answer"] and r["vote_share"] < 1.0 and u[i] < 0.5]
    return sorted(split, key=lambda i: u[i])[:size]


def test_uncertified_ablation_self_trains_on_the_estimate():
    rows, u = _split_pool(600)
    routing = route_pool(rows, u, budget_remaining=0, config=RouterConfig(certify=False))
    assert (np.array([d["route"] for d in routing.decisions]) == "self_train").sum() > 0


def test_one_label_moves_few_problems_between_routes():
    """5,000 problems, 60 labels: the 61st label, with the posterior refitted, moves < 1 % of the pool."""
    from test_posterior import pool

    rows = pool(5000, seed=4)
    rng = np.random.default_rng(5)
    truth = rng.random(len(rows)) < 0.4
    order = rng.permutation(len(rows))
    outcomes = {rows[i]["problem_id"]: int(truth[i]) for i in order[:60]}
    model = fit_posterior(rows, outcomes, with_metrics=False)
    before = route_pool(rows, model.predict(rows), budget_remaining=500, exclude=set(outcomes), outcomes=outcomes)
    i = order[60]
    outcomes[rows[i]["problem_id"]] = int(truth[i])
    model = fit_posterior(rows, outcomes, with_metrics=False)
    after = route_pool(rows, model.predict(rows), budget_remaining=499, exclude=set(outcomes), outcomes=outcomes,
                       previous=before.thresholds, previous_routes=dict(zip(before.problem_ids, before.routes)))
    moved = int((before.routes != after.routes).sum())
    assert moved < 0.01 * len(rows)


def _split_pool(n: int):
    """Rows with split votes and low uncertainty (a self-train band), some unanimous ones."""
    rng = np.random.default_rng(0)
    share = rng.choice([0.6, 0.8, 1.0], size=n, p=[0.3, 0.4, 0.3])
    u = np.clip(rng.beta(1, 12, n) + 0.3 * (share < 0.7), 0.001, 0.99)
    rows = [{"problem_id": f"s{i:04d}", "model_id": "m", "majority_answer": "3", "vote_share": float(share[i]),
             "pivot_density": float(rng.gamma(2, 0.5))} for i in range(n)]
    return rows, u


def test_bonferroni_edges_constant_is_what_the_docs_say():
    assert CANDIDATE_EDGES == 4


def test_a_jump_of_the_base_rate_drains_a_band_a_step_at_a_time():
    """Labels that say the pool is far more often wrong lift every u at once: without hysteresis the
    low_priority band would empty in one pass; with it, at most the step limit leaves per new label,
    least certain first, and drift alone does not swap members."""
    from scipy.special import expit, logit

    from pivottrace.route import BAND_STEP_PER_LABEL, MIN_STEP_PER_LABEL

    rows, u = _split_pool(5000)
    before = route_pool(rows, u, budget_remaining=0)
    low = before.routes == "low_priority"
    assert low.sum() > 500
    lifted = expit(logit(u) + 2.0)  # [N] odds x7.4
    assert (route_pool(rows, lifted, budget_remaining=0).routes == "low_priority").sum() < 0.5 * low.sum()
    outcomes = {rows[0]["problem_id"]: 1}
    after = route_pool(rows, lifted, budget_remaining=0, exclude=set(outcomes), outcomes=outcomes,
                       previous=before.thresholds, previous_routes=dict(zip(before.problem_ids, before.routes)))
    left = low & (after.routes != "low_priority")
    assert 0 < left.sum() <= max(BAND_STEP_PER_LABEL * len(rows), MIN_STEP_PER_LABEL)
    stayed = low & (after.routes == "low_priority")
    assert lifted[left].min() >= np.median(lifted[stayed])  # the least certain left first

    drift = expit(logit(u) + np.random.default_rng(1).normal(0, 0.05, u.size))  # [N] a label's worth of noise
    again = route_pool(rows, drift, budget_remaining=0, previous=before.thresholds,
                       previous_routes=dict(zip(before.problem_ids, before.routes)))
    assert int((again.routes != before.routes).sum()) <= 0.002 * len(rows)
