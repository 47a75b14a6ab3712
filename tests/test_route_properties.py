"""Routing invariants on random pools (hypothesis): whatever the pool, budget, target, labels and
previous routing, every problem gets one route, the budget is never overspent, each band keeps its
definition, and probes are queued all or none and only where the certificate says they can pay."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pivottrace.route import RouterConfig, route_pool
from pivottrace.vocab import ROUTES

SHARES = [0.2, 0.4, 0.6, 0.8, 1.0]


@st.composite
def routing_cases(draw):
    n = draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    rng = np.random.default_rng(seed)
    share = rng.choice(SHARES, size=n)  # [N]
    u = rng.beta(draw(st.floats(0.3, 3.0)), draw(st.floats(0.3, 3.0)), size=n)  # [N]
    rows = [{"problem_id": f"p{i}", "model_id": "m", "vote_share": float(share[i]),
             "majority_answer": None if rng.random() < 0.05 else "7",
             "pivot_density": float(rng.gamma(1.0, 1.0))} for i in range(n)]
    budget = draw(st.one_of(st.none(), st.integers(0, n + 10)))
    labelled = [f"p{i}" for i in range(n) if rng.random() < draw(st.floats(0.0, 0.5))]
    outcomes = {pid: int(rng.random() < 0.5) for pid in labelled}
    config = RouterConfig(target_precision=draw(st.floats(0.55, 0.97)), delta=draw(st.floats(0.01, 0.3)),
                          explore_share=draw(st.sampled_from([0.0, 0.2, 0.5, 0.9])))
    return rows, u, budget, outcomes, config, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(routing_cases())
def test_routing_invariants_hold_on_any_pool(case):
    rows, u, budget, outcomes, config, with_previous = case
    previous = previous_routes = None
    if with_previous:  # a router version before the latest labels: the hysteresis path
        first = route_pool(rows, u, budget_remaining=budget, config=config)
        previous, previous_routes = first.thresholds, dict(zip(first.problem_ids, first.routes.tolist()))
    routing = route_pool(rows, u, budget_remaining=budget, config=config, exclude=set(outcomes),
                         outcomes=outcomes, previous=previous, previous_routes=previous_routes)
    routes, t = routing.routes, routing.thresholds
    n = len(rows)
    assert routes.shape == (n,) and set(routes.tolist()) <= set(ROUTES)
    labelled = np.array([r["problem_id"] in outcomes for r in rows])  # [N]
    assert (routes[labelled] == "annotate").all()  # labels keep their route
    picks = (routes == "annotate") & ~labelled  # [N] open problems sent to humans
    capacity = budget if budget is not None else t["default_capacity"]
    assert picks.sum() <= capacity  # the budget (or the default cap) is never overspent
    share = np.array([r["vote_share"] for r in rows])
    has_majority = np.array([r["majority_answer"] is not None for r in rows])
    for band in ("self_train", "self_train_pending"):
        members = routes == band
        assert has_majority[members].all() and (share[members] < 1.0).all() and (u[members] < 0.5).all()
    low = routes == "low_priority"
    assert has_majority[low].all() and (share[low] == 1.0).all()
    cert = t["self_train_certificate"]
    assert (routes == "self_train").any() <= cert["open"]  # pseudo-labels only from a certified band
    probes = t["calibration_probes"]
    assert 0 <= probes <= int(capacity * config.explore_share)
    queued = [c for c in (cert, t["low_priority_certificate"]) if c and c["probes_queued"]]
    assert probes == sum(c["probes_to_go"] for c in queued)  # all of a certificate's probes, or none
    for c in (cert, t["low_priority_certificate"]):
        if c and c["probes_to_go"] and not c["probes_queued"]:
            assert c["probes_held"] in ("band_too_small", "budget", "annotate_queue")
