"""Store at scale: the Budget page's aggregates, the queue walk of next_item, the indexes and the
feature column copy of migrations 2-4."""

import datetime as dt

import numpy as np
import pytest
from conftest import OPERATOR, build_app_db

from pivottrace import analytics, pipeline, store

DAY = 86400
AT = dt.datetime(2026, 3, 10, 12, tzinfo=dt.timezone.utc).timestamp()


@pytest.fixture
def db(tmp_path):
    db = build_app_db(tmp_path / "b.db", n_problems=40, budget=10, seed=1)
    store.set_budget(db, user="lee", total=10, cost_per_label=2.5)
    return db


def label(db, annotator, verdict, seconds, days_ago):
    item = store.next_item(db, annotator)
    gold = "5" if verdict == "wrong" else None
    label_id = store.save_label(db, problem_id=item["problem_id"], annotator=annotator,
                                verdict=verdict, gold_answer=gold, seconds=seconds)
    db.execute("update labels set created_at = ? where id = ?", [AT - days_ago * DAY, label_id])
    return item["problem_id"]


def test_budget_aggregates(db):
    label(db, "ann", "correct", 10.0, days_ago=9)  # outside the 7-day window
    label(db, "ann", "wrong", 30.0, days_ago=3)
    label(db, "ann", "correct", 20.0, days_ago=2)
    label(db, "bob", "flawed", 40.0, days_ago=1)
    skipped = store.next_item(db, "bob")["problem_id"]
    store.save_label(db, problem_id=skipped, annotator="bob", verdict="skip")
    label(db, "bob", "correct", 50.0, days_ago=0)
    store.undo_last_label(db, "bob")

    agg = analytics.budget_aggregates(db, at=AT)
    assert (agg["total"], agg["spent"], agg["remaining"]) == (10, 4, 6)
    assert agg["cost_spent"] == pytest.approx(10.0)
    assert agg["window_days"] == 7 and agg["burn_rate_per_day"] == pytest.approx(3 / 7)
    expected_run_out = dt.datetime.fromtimestamp(AT + 6 / (3 / 7) * DAY, dt.timezone.utc).date()
    assert agg["projected_run_out"] == expected_run_out.isoformat()
    days = {d["day"]: d["labels"] for d in agg["per_day"]}
    assert len(days) == 10 and sum(days.values()) == 4  # day -9 .. today, zeros included
    assert days["2026-03-01"] == 1 and days["2026-03-05"] == 0 and days["2026-03-10"] == 0

    ann, bob = agg["annotators"]
    assert ann == {"annotator": "ann", "labels": 3, "correct": 2, "wrong": 1, "flawed": 0,
                   "skips": 0, "undos": 0, "median_seconds": 20.0, "accept_rate": pytest.approx(2 / 3),
                   "agreement": None}
    assert (bob["labels"], bob["flawed"], bob["skips"], bob["undos"]) == (1, 1, 1, 1)
    assert bob["accept_rate"] is None and bob["median_seconds"] == 40.0
    assert agg["agreement"] is None
    assert agg["routes"] == store.route_counts(db)
    assert agg["queue_remaining"] == agg["routes"]["annotate"] - 4


def test_burn_window_is_the_time_since_the_first_label_and_no_budget_has_no_run_out(tmp_path):
    db = store.open_db(tmp_path / "n.db")
    agg = analytics.budget_aggregates(db, at=AT)
    assert agg["total"] is None and agg["projected_run_out"] is None
    assert agg["burn_rate_per_day"] == 0 and agg["per_day"] == [] and agg["annotators"] == []


def test_short_history_uses_a_shorter_window(db):
    label(db, "ann", "correct", 5.0, days_ago=2)
    label(db, "ann", "correct", 5.0, days_ago=0)
    agg = analytics.budget_aggregates(db, at=AT)
    assert agg["window_days"] == pytest.approx(2.0) and agg["burn_rate_per_day"] == pytest.approx(1.0)


def test_pairwise_agreement_when_two_annotators_label_one_problem(db):
    first = label(db, "ann", "correct", 5.0, days_ago=1)
    second = label(db, "ann", "wrong", 5.0, days_ago=1)
    # a double-annotation round: bob judges the same two problems (rows as the store writes them)
    for problem_id, verdict in ((first, "correct"), (second, "correct")):
        db["labels"].insert({"problem_id": problem_id, "annotator": "bob", "verdict": verdict,
                             "gold_answer": None, "shown_answer": None, "seconds": 5.0,
                             "created_at": AT - DAY, "undoes": None, "router_version": None})
    agg = analytics.budget_aggregates(db, at=AT)
    assert agg["agreement"] == pytest.approx(0.5)
    assert {a["annotator"]: a["agreement"] for a in agg["annotators"]} == {"ann": 0.5, "bob": 0.5}


def test_next_item_passes_labelled_items_and_serves_skipped_ones_last(db):
    annotate = store.route_counts(db)["annotate"]
    first_pass = []
    for k in range(annotate):  # skip every other item, accept the rest
        item = store.next_item(db, "ann")
        verdict = "skip" if k % 2 == 0 else "correct"
        store.save_label(db, problem_id=item["problem_id"], annotator="ann", verdict=verdict)
        first_pass.append((item["problem_id"], item["value"], verdict))
    assert len({p for p, _, _ in first_pass}) == annotate  # every open item once
    values = [v for _, v, _ in first_pass]
    assert values == sorted(values, reverse=True)  # best first
    skipped = [p for p, _, v in first_pass if v == "skip"]
    for problem_id in skipped:  # then the skipped ones, best first, past the labelled ones
        item = store.next_item(db, "ann")
        assert item["problem_id"] == problem_id
        store.save_label(db, problem_id=problem_id, annotator="ann", verdict="correct")
    assert store.next_item(db, "ann") is None


def test_an_item_leased_to_another_is_never_served(db):
    annotate = store.route_counts(db)["annotate"]
    for k in range(annotate):
        store.add_user(db, f"a{k}", "annotator", by=OPERATOR)
    store.add_user(db, "late", "annotator", by=OPERATOR)
    held = {store.next_item(db, f"a{k}")["problem_id"] for k in range(annotate)}
    assert len(held) == annotate
    assert store.next_item(db, "late") is None


def test_migration_indexes_are_used(db):
    assert store.schema_version(db) >= 3
    for skipped in (False, True):
        plan = " ".join(r[3] for r in db.execute(
            "explain query plan " + store._top_open_item_sql(skipped=skipped), [0.0, "a", "a"]))
        assert f"COVERING INDEX {store.QUEUE_INDEX}" in plan and "TEMP B-TREE" not in plan
        assert "COVERING INDEX idx_problems_id_verdict" in plan
    plan = " ".join(r[3] for r in db.execute(
        "explain query plan select count(*) from problems where verdict is not null"))
    assert "idx_problems_labelled" in plan
    plan = " ".join(r[3] for r in db.execute(
        "explain query plan select 1 from labels u where u.undoes = ?", [1]))
    assert "idx_labels_undoes" in plan


def test_the_queue_index_holds_only_annotate_rows_through_a_full_reroute(db):
    def indexed() -> int:
        return db.execute(f"select count(*) from routes indexed by {store.QUEUE_INDEX} "
                          "where route = 'annotate'").fetchone()[0]

    before = store.route_counts(db)
    assert indexed() == before["annotate"] > 0
    store.save_routes(db, [{**d, "route": "self_train"} for d in db.query(
        "select problem_id, model_id, uncertainty, value from routes")], router_version=99)
    assert indexed() == 0  # every row left the queue; the partial index followed
    pipeline.route(db, rescore=False)  # every row rewritten again
    assert indexed() == store.route_counts(db)["annotate"] == before["annotate"]
    assert store.next_item(db, "ann") is not None
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert sum(store.route_counts(db).values()) == sum(before.values())


def test_feature_table_matches_the_rows_and_follows_every_write(db):
    model_id = store.latest_model_id(db)
    rows = store.load_features(db, model_id)
    table = store.load_feature_table(db, model_id)  # served from the column copy save_features wrote
    assert db.execute("select n from feature_columns where model_id = ?", [model_id]).fetchone()[0] == len(rows)
    assert table.ids == [r["problem_id"] for r in rows] == sorted(table.ids)
    assert table.majority_answers == [r["majority_answer"] for r in rows]
    assert table.model_ids == [model_id] * len(rows)
    for name in store.FEATURE_TABLE_COLUMNS:
        expected = np.array([np.nan if r[name] is None else r[name] for r in rows], float)
        np.testing.assert_array_equal(table.column(name), expected)

    # a write that bypasses save_features drops the copy (trigger); the next load sees the write
    target = rows[3]["problem_id"]
    db.execute("update features set vote_share = 0.125, majority_answer = null where problem_id = ?", [target])
    assert db.execute("select count(*) from feature_columns").fetchone()[0] == 0
    fresh = store.load_feature_table(db, model_id)
    i = fresh.ids.index(target)
    assert fresh.column("vote_share")[i] == 0.125 and fresh.majority_answers[i] is None
    assert db.execute("select count(*) from feature_columns").fetchone()[0] == 1  # saved again
    assert store.load_feature_table(db, model_id).column("vote_share")[i] == 0.125

    db.execute("delete from features where problem_id = ?", [target])
    assert target not in store.load_feature_table(db, model_id).ids
    store.save_features(db, [rows[3]])  # back through save_features: the copy is rebuilt at once
    assert db.execute("select n from feature_columns").fetchone()[0] == len(rows)
    assert store.load_feature_table(db, model_id).ids == table.ids
