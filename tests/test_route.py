"""Routing: thresholds respond to the budget and the precision target, bands keep their promises,
probes are stable; recalibration writes a router version and changes the routes."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import lease_and_label

from pivottrace import pipeline, store
from pivottrace.answers import answers_match
from pivottrace.datasets import demo_problems
from pivottrace.route import RouterConfig, probe_keys, route_pool
from pivottrace.synthetic import synthetic_trace
from pivottrace.views.budget import band_state



def pool(n: int = 400, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Rows with a majority answer, a vote share and pivots, and an uncertainty per row."""
    rng = np.random.default_rng(seed)
    share = rng.choice([0.4, 0.6, 0.8, 1.0], size=n, p=[0.15, 0.2, 0.25, 0.4])  # [N]
    u = np.clip(0.05 + 0.6 * (1 - share) + rng.normal(0, 0.08, n), 0.01, 0.99)  # [N]
    rows = [{"problem_id": f"p{i:04d}", "model_id": "m", "majority_answer": None if i % 25 == 0 else "3",
             "vote_share": float(share[i]), "pivot_density": float(rng.gamma(2, 0.5))} for i in range(n)]
    return rows, u


def routes_of(routing) -> np.ndarray:
    return np.array([d["route"] for d in routing.decisions])


@pytest.mark.parametrize("explore", [0.0, 0.2])
def test_smaller_budget_gives_fewer_annotate_picks_never_more_than_the_budget(explore):
    rows, u = pool()
    picks = []
    for budget in (0, 5, 20, 60, 150):
        routing = route_pool(rows, u, budget_remaining=budget, config=RouterConfig(explore_share=explore))
        n = int((routes_of(routing) == "annotate").sum())
        assert n <= budget
        assert routing.thresholds["annotate_capacity"] == budget
        picks.append(n)
    assert picks == sorted(picks) and picks[0] == 0 and picks[-1] > picks[1]
    assert picks[-1] == 150  # a large budget is spent: spill-over into the self_train band


def test_labelled_problems_stay_annotate_and_do_not_use_the_budget():
    rows, u = pool()
    labelled = {r["problem_id"] for r in rows[:30]}
    routing = route_pool(rows, u, budget_remaining=10, exclude=labelled)
    route = routes_of(routing)
    assert (route[:30] == "annotate").all()
    assert (route[30:] == "annotate").sum() == 10


def test_self_train_band_keeps_the_precision_target_and_shrinks_as_it_rises():
    rows, u = pool()
    sizes = []
    for target in (0.6, 0.75, 0.85, 0.95):
        routing = route_pool(rows, u, budget_remaining=20, config=RouterConfig(target_precision=target))
        route = routes_of(routing)
        band = route == "self_train"
        if band.any():
            assert 1 - u[band].mean() >= target - 1e-12
            assert routing.thresholds["estimated_self_train_precision"] == pytest.approx(1 - u[band].mean())
        low = route == "low_priority"
        assert (u[low] <= 1 - target).all()  # each low-priority answer alone meets the target
        assert (u[band] < 0.5).all()
        # the estimated bands (certified or waiting, probes included) shrink as the target rises
        sizes.append(routing.thresholds["self_train_candidates"] + routing.thresholds["low_priority_candidates"])
    assert sizes == sorted(sizes, reverse=True) and sizes[0] > sizes[-1]


def test_low_priority_is_unanimous_and_unanimous_but_doubtful_answers_can_go_to_humans():
    rows, u = pool()
    u = u.copy()
    doubtful = next(i for i, r in enumerate(rows) if r["vote_share"] == 1.0 and r["majority_answer"])
    u[doubtful] = 0.95  # every sample agrees, yet the model thinks it is probably wrong
    routing = route_pool(rows, u, budget_remaining=30, config=RouterConfig(explore_share=0.0))
    route = routes_of(routing)
    shares = np.array([r["vote_share"] for r in rows])
    assert (shares[route == "low_priority"] == 1.0).all()
    assert (shares[route == "self_train"] < 1.0).all()
    assert route[doubtful] == "annotate"
    no_majority = np.array([r["majority_answer"] is None for r in rows])
    assert not np.isin(route[no_majority], ["self_train", "low_priority"]).any()


def test_probes_are_queued_only_when_the_budget_can_open_the_band():
    """Probes toward a certificate the budget cannot complete would be labels lost: none are queued,
    and the certificate says why; a budget that can pay for all of them gets all of them."""
    rows, u = pool()
    config = RouterConfig(explore_share=0.2)
    short = route_pool(rows, u, budget_remaining=50, config=config)  # 20 % of 50 = 10 probes at most
    cert = short.thresholds["self_train_certificate"]
    assert cert["probes_to_go"] > 10 and cert["probes_held"] == "budget" and not cert["probes_queued"]
    assert short.thresholds["calibration_probes"] == 0
    assert "more than the budget left can spare" in band_state(cert)
    ample = route_pool(rows, u, budget_remaining=120, config=config)  # 24 probes at most
    cert = ample.thresholds["self_train_certificate"]
    assert cert["probes_held"] is None and cert["probes_queued"]
    assert ample.thresholds["calibration_probes"] == cert["probes_to_go"]  # all of them, not a part


def test_low_priority_is_verified_only_with_budget_the_annotate_queue_cannot_use():
    """A probe into low_priority buys no training example: it takes only capacity that the annotate
    candidates leave unused, never a pick from them."""
    rows, u = pool()
    config = RouterConfig(explore_share=0.2)
    unanimous_sure = np.array([r["vote_share"] == 1.0 and r["majority_answer"] is not None for r in rows]) & (u <= 0.15)
    tight = route_pool(rows, u, budget_remaining=120, config=config)
    cert = tight.thresholds["low_priority_certificate"]
    assert cert["probes_to_go"] > 0 and cert["probes_held"] == "annotate_queue"
    assert not (routes_of(tight)[unanimous_sure] == "annotate").any()
    assert band_state(cert, goal="verify") == (f"{cert['probes_to_go']} probe labels would verify it; they wait "
                                               "until the annotate queue leaves budget unused (verifying it adds "
                                               "no training example)")
    ample = route_pool(rows, u, budget_remaining=250, config=config)  # more than the uncertain set
    cert = ample.thresholds["low_priority_certificate"]
    assert cert["probes_held"] is None
    assert (routes_of(ample)[unanimous_sure] == "annotate").sum() == cert["probes_to_go"]


def test_probes_come_from_the_band_are_stable_and_interleave_in_the_queue():
    rows, u = pool()
    config = RouterConfig(explore_share=0.2)
    first = route_pool(rows, u, budget_remaining=120, config=config)
    assert first.thresholds["calibration_probes"] == 23  # what certification needs at 4 edges, all right
    shifted = route_pool(rows, np.clip(u + np.random.default_rng(1).normal(0, 0.01, u.size), 0.01, 0.99),
                         budget_remaining=120, config=config)

    def probes(routing):  # annotate picks inside the self-train candidate band: the probes
        size = routing.thresholds["self_train_candidates"]
        split = [i for i, r in enumerate(rows) if r["majority_answer"] and r["vote_share"] < 1.0
                 and routing.uncertainty[i] < 0.5]
        band = set(sorted(split, key=lambda i: routing.uncertainty[i])[:size])
        return {rows[i]["problem_id"] for i, d in enumerate(routing.decisions) if d["route"] == "annotate" and i in band}

    assert len(probes(first)) == 23 and len(probes(first) & probes(shifted)) >= 12
    queue = sorted((d for d in first.decisions if d["route"] == "annotate"), key=lambda d: -d["value"])
    top_half = {d["problem_id"] for d in queue[:60]}
    assert top_half & probes(first)  # probes are not all at the end of the queue


def test_two_way_and_fixed_threshold_ablations():
    rows, u = pool()
    two = routes_of(route_pool(rows, u, budget_remaining=40, config=RouterConfig(three_way=False, explore_share=0)))
    assert set(two) <= {"annotate", "self_train", "deferred"} and (two == "annotate").sum() == 40
    fixed = route_pool(rows, u, budget_remaining=40, config=RouterConfig(fixed_thresholds=(0.1, 0.3), explore_share=0))
    route = routes_of(fixed)
    assert (u[route == "low_priority"] <= 0.1).all() and (u[route == "self_train"] <= 0.3).all()


def test_bad_inputs_are_refused_with_clear_errors():
    rows, u = pool(20)
    with pytest.raises(ValueError, match="target_precision"):
        RouterConfig(target_precision=1.2)
    with pytest.raises(ValueError, match="fixed_thresholds"):
        RouterConfig(fixed_thresholds=(0.5, 0.2))
    with pytest.raises(ValueError, match="explore_share"):
        RouterConfig(explore_share=1.0)
    with pytest.raises(ValueError, match="uncertainty of shape"):
        route_pool(rows, u[:5], budget_remaining=3)
    with pytest.raises(ValueError, match="negative"):
        route_pool(rows, u, budget_remaining=-1)


# --------------------------------------------------------------------------- recalibration

POOL_MIX = (0.55, 0.25, 0.12, 0.08)  # these tests' pool, fixed apart from the product's demo mix


def synthetic_db(path, *, n: int = 160, budget: int = 80, seed: int = 0, model_id: str = "synth"):
    db = store.open_db(path)
    problems = demo_problems(n, seed=seed, mix=POOL_MIX)
    store.insert_problems(db, problems)
    store.upsert_model(db, model_id, spec="synthetic", n_layers=6)
    rng = np.random.default_rng(seed)
    for p in problems:
        store.save_trace(db, p.id, model_id, synthetic_trace(p, rng, n_layers=6))
    store.add_user(db, "lee", "lead", by=store.LocalOperator("tests"))
    store.add_user(db, "oracle", "annotator", by=store.LocalOperator("tests"))
    if budget is not None:
        store.set_budget(db, user="lee", total=budget)
    return db


def oracle_label(db, problem_id: str | None = None, *, every: int):
    """The oracle labels `problem_id` (leased first), or the top of its queue when None."""
    if problem_id is None:
        problem_id = store.next_item(db, "oracle")["problem_id"]
    else:
        store.lease_item(db, problem_id, "oracle")
    gold = store.get_problem(db, problem_id)["gold"]
    majority = next(r["majority_answer"] for r in db.query(
        "select majority_answer from features where problem_id = ?", [problem_id]))
    right = majority is not None and answers_match(majority, gold)
    return pipeline.label(db, problem_id=problem_id, annotator="oracle", verdict="correct" if right else "wrong",
                          gold_answer=None if right else gold, shown_answer=majority, recalibrate_every=every)


def test_recalibration_writes_a_router_version_and_changes_the_routes(tmp_path):
    db = synthetic_db(tmp_path / "r.db", n=240, budget=120)
    first = pipeline.route(db, note="cold start")
    assert first.kind == "cold_start"
    before = {r["problem_id"]: r["route"] for r in db.query("select problem_id, route from routes")}
    reports = [oracle_label(db, every=20) for _ in range(80)]  # the top of the queue each time
    made = [r for r in reports if r is not None]
    assert len(made) == 4  # every 20 labels, not after each one
    versions = store.router_versions(db)
    assert [v["n_labels"] for v in versions[-4:]] == [20, 40, 60, 80]
    latest = versions[-1]
    assert latest["thresholds"]["target_precision"] == 0.85
    assert {"self_train_max", "low_priority_max", "annotate_capacity"} <= set(latest["thresholds"])
    # the posterior's weights (prior and posterior per signal) are recorded with the version
    assert latest["kind"] == "bayes" and latest["metrics"]["n"] == 80
    weights, metrics = latest["metrics"]["weights"], latest["metrics"]
    assert "intercept" in weights and weights["intercept"]["posterior"] != weights["intercept"]["prior"]
    # with it, every candidate model's evidence and the one that ranks the pool (on this synthetic
    # pool confidence alone often wins: its generator makes token confidence track difficulty closely)
    assert set(metrics["model_log_evidence"]) == {"all signals", "confidence only", "vote share only"}
    assert metrics["model"] in metrics["model_log_evidence"]
    assert ("pivot_density" in weights) == (metrics["model"] == "all signals")
    choice = [line for line in pipeline.explain(made[-1]) if line.startswith("Ranked by")]
    assert len(choice) == 1 and choice[0].startswith(f"Ranked by {metrics['model']}") and "Bayes factor" in choice[0]
    from pivottrace import views

    assert views.router_history(db)[-1]["ranked by"] == metrics["model"]  # what the Budget page lists
    after = {r["problem_id"]: r["route"] for r in db.query("select problem_id, route from routes")}
    assert sum(before[p] != after[p] for p in before) > 0 and sum(r.changed for r in made) > 0
    labelled = {r["problem_id"] for r in store.effective_labels(db)}
    assert all(after[p] == "annotate" for p in labelled)
    unlabelled_annotate = sum(1 for p, r in after.items() if r == "annotate" and p not in labelled)
    assert unlabelled_annotate <= store.budget_status(db)["remaining"]


def test_recalibration_keeps_the_leads_precision_target(tmp_path):
    db = synthetic_db(tmp_path / "t.db", n=60, budget=20)
    pipeline.route(db, config=RouterConfig(target_precision=0.95), note="lead set 0.95")
    pid = next(r["problem_id"] for r in db.query("select problem_id from routes where route = 'annotate'"))
    report = oracle_label(db, pid, every=1)
    assert report is not None and report.thresholds["target_precision"] == 0.95


def test_traces_of_a_new_checkpoint_trigger_a_recalibration(tmp_path):
    db = synthetic_db(tmp_path / "c.db", n=40, budget=10)
    assert pipeline.recalibration_due(db).cause == pipeline.RecalibrationDue.NEW_CHECKPOINT
    pipeline.route(db)
    assert pipeline.recalibration_due(db) is None
    store.upsert_model(db, "synth-v2", spec="synthetic", n_layers=6)
    rng = np.random.default_rng(7)
    for p in demo_problems(40, seed=0)[:15]:
        store.save_trace(db, p.id, "synth-v2", synthetic_trace(p, rng, n_layers=6))
    due = pipeline.recalibration_due(db)
    assert (due.cause, due.model_id, due.rescore) == (pipeline.RecalibrationDue.NEW_CHECKPOINT, "synth-v2", True)
    report = pipeline.recalibrate_if_due(db)
    assert report is not None and store.router_versions(db)[-1]["model_id"] == "synth-v2"
    assert db.execute("select count(*) from features where model_id = 'synth-v2'").fetchone()[0] == 15
    assert pipeline.recalibrate_if_due(db) is None


def test_label_outcomes_reread_labels_against_a_new_checkpoints_majority(tmp_path):
    db = synthetic_db(tmp_path / "o.db", n=20, budget=10)
    pipeline.route(db)
    row = next(db.query("select f.problem_id, f.majority_answer, p.gold from features f "
                        "join problems p on p.id = f.problem_id join routes r on r.problem_id = f.problem_id "
                        "where f.majority_answer is not null and r.route = 'annotate'"))
    wrong_shown = str(int(float(row["gold"])) + 1)
    lease_and_label(db, row["problem_id"], "oracle", "wrong", gold_answer=row["gold"], shown_answer=wrong_shown)
    assert pipeline.label_outcomes(db)[row["problem_id"]] == 1  # the verdict, as given
    new_majority = [{"problem_id": row["problem_id"], "majority_answer": row["gold"]}]
    assert pipeline.label_outcomes(db, new_majority)[row["problem_id"]] == 0  # the new model got it right


def test_a_feature_table_routes_exactly_as_its_rows():
    from pivottrace.features import FeatureTable

    rows, u = pool(seed=3)
    rows[7]["pivot_density"] = None  # missing values read the same way in both forms
    rows[8]["vote_share"] = None
    exclude = {"p0002", "p0010"}
    as_rows = route_pool(rows, u, budget_remaining=40, exclude=exclude)
    as_table = route_pool(FeatureTable.from_rows(rows), u, budget_remaining=40, exclude=exclude)
    assert as_table.decisions == as_rows.decisions
    assert as_table.thresholds == as_rows.thresholds
    counts = as_table.counts()
    assert sum(counts.values()) == len(rows)
    assert counts == {name: int((routes_of(as_rows) == name).sum()) for name in counts}
    with pytest.raises(ValueError, match="model_id and majority_answer"):
        route_pool(FeatureTable(["a"], {"pivot_density": np.ones(1), "vote_share": np.ones(1)}),
                   np.array([0.5]), budget_remaining=1)


def test_the_route_summary_line_follows_the_route_order_and_reads_on_screen():
    from pivottrace import vocab

    assert store.ROUTES is vocab.ROUTES and store.VERDICTS is vocab.VERDICTS  # aliases, not copies
    counts = {"self_train": 5, "deferred": 0, "annotate": 3}
    assert vocab.route_summary(counts) == "annotate 3, self_train 5, deferred 0"
    assert vocab.route_summary(counts, readable=True) == "annotate 3, self train 5, deferred 0"


def test_route_without_a_budget_caps_annotate_and_explains_itself(tmp_path):
    db = synthetic_db(tmp_path / "nb.db", n=120, budget=None)
    report = pipeline.route(db, note="no budget")
    assert report.counts["annotate"] <= 12  # 10 % of the pool, not everything
    assert report.counts["deferred"] > 0 and report.thresholds["annotate_capacity"] is None
    lines = pipeline.explain(report)
    assert any(line.startswith("No budget set") for line in lines)
    cert = report.thresholds["self_train_certificate"]
    wanted = {None: "probe labels to go", "band_too_small": f"too many for its {cert['candidates']} problems",
              "budget": "more than the budget left can spare"}[cert["probes_held"]]
    assert any(line.startswith("Self-train: closed") and f"{cert['probes_to_go']} probe labels" in line
               and wanted in line for line in lines)
    low = report.thresholds["low_priority_certificate"]
    if low["candidates"] and low["probes_to_go"] and not report.thresholds["low_priority_verified"]:
        assert any(line.startswith("Low priority: unverified") and f"{low['probes_to_go']} probe labels would "
                   "verify it" in line for line in lines)


def test_probes_are_queued_only_where_the_band_can_repay_them():
    """A band that needs more probe labels than half its problems gets none (they would be cheaper
    to label directly); a large band gets its probes, and the certificate says which."""
    for n, repays in ((60, False), (2000, True)):
        rows, _ = pool(n, seed=3)
        u = np.full(n, 0.05)  # every split vote looks like a near-certain pseudo-label
        routing = route_pool(rows, u, budget_remaining=n // 2)
        cert = routing.thresholds["self_train_certificate"]
        assert cert["candidates"] > 0 and not cert["open"] and cert["probes_to_go"] > 0
        assert cert["probes_repay"] is repays
        assert (routing.thresholds["calibration_probes"] > 0) is repays
        assert (cert["candidates"] >= 2 * cert["probes_to_go"]) is repays


def test_every_route_carries_a_credible_interval_that_labels_narrow(tmp_path):
    """The stored uncertainty comes with its posterior interval (the prior's own before any label);
    the annotate page shows both; labels narrow the intervals."""
    db = synthetic_db(tmp_path / "ci.db", n=120, budget=60)
    pipeline.route(db, note="cold start")

    def intervals():
        rows = list(db.query("select uncertainty, u_low, u_high from routes"))
        u, low, high = (np.array([r[k] for r in rows]) for k in ("uncertainty", "u_low", "u_high"))
        return u, low, high

    u, low, high = intervals()
    assert len(u) == 120 and np.all(low <= u + 1e-12) and np.all(u <= high + 1e-12) and np.all(high - low > 0.01)
    width_before = float(np.median(high - low))
    for _ in range(20):
        oracle_label(db, every=1)
    pipeline.route(db, rescore=False, note="after 20 labels")
    u, low, high = intervals()
    assert np.all(low <= u + 1e-12) and np.all(u <= high + 1e-12)
    assert float(np.median(high - low)) < width_before

    from pivottrace.views import annotate

    item = annotate.next_item(db, "oracle")
    low, high = item.uncertainty_interval
    assert low <= item.uncertainty <= high
    assert item.uncertainty_text == f"{item.uncertainty:.2f} ({low:.2f}–{high:.2f})"
