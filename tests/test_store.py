"""Store: migrations, leases, append-only labels, undo, roles, resumable pending lists."""

import numpy as np
import pytest

from conftest import build_app_db

from pivottrace import store
from pivottrace.datasets import demo_problems
from pivottrace.synthetic import synthetic_trace


@pytest.fixture
def routed_db(tmp_path):
    return build_app_db(tmp_path / "s.db", n_problems=40, budget=10, seed=0)


def test_open_is_idempotent_and_versioned(tmp_path):
    path = tmp_path / "v.db"
    first = store.open_db(path)
    assert store.schema_version(first) == len(store.MIGRATIONS)
    assert store.schema_version(store.open_db(path)) == len(store.MIGRATIONS)
    assert first.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def as_version_9(db) -> None:
    """Take a database back to the schema before migration 10 (credible intervals on routes)."""
    for column in ("u_low", "u_high"):
        db.execute(f"alter table routes drop column {column}")
    db.execute("PRAGMA user_version = 9")


def as_version_8(db) -> None:
    """Take a database back to the schema before migration 9 (sign-in, sessions, audit)."""
    as_version_9(db)
    for table in ("sessions", "sign_in_attempts", "audit"):
        db.execute(f"drop table {table}")
    db.execute("drop index idx_users_email")
    for column in ("password_hash", "email", "must_change_password"):
        db.execute(f"alter table users drop column {column}")
    db.execute("PRAGMA user_version = 8")


def as_version_4(db) -> None:
    """Take a database back to the schema before migration 5 (step labels, token pivot columns),
    6 (trace claims) and 9 (sign-in; 7's and 8's tables go in as_version_3)."""
    as_version_8(db)
    db.execute("drop table trace_claims")
    db.execute("drop table step_labels")
    for name in store.PIVOT_FEATURES:
        db.execute(f"alter table features drop column {name}")
    db.execute("PRAGMA user_version = 4")


def as_version_3(db) -> None:
    """Take a database back to the schema the last release wrote (before migration 4)."""
    as_version_4(db)
    for name, kind in db.execute("select name, type from sqlite_master where sql is not null").fetchall():
        if name.startswith("features_") and kind == "trigger":
            db.execute(f"drop trigger {name}")
    db.execute("drop table feature_columns")
    db.execute("drop table if exists rollouts")  # migration 5
    db.execute("drop table overlap_settings")  # migration 8
    db.execute("drop table reviews")
    db.execute("alter table router_versions drop column counts")
    db.execute(f"drop index {store.QUEUE_INDEX}")
    db.execute("drop index idx_traces_created_at")
    db.execute("create index idx_routes_queue on routes (route, value, problem_id)")
    db.execute("PRAGMA user_version = 3")


def test_a_version_3_database_upgrades_with_its_queue_and_labels(tmp_path):
    path = tmp_path / "old.db"
    old = build_app_db(path, n_problems=30, budget=8)
    item = store.next_item(old, "ann")  # labelled under today's rules (the budget counts overlap labels),
    store.save_label(old, problem_id=item["problem_id"], annotator="ann", verdict="correct")
    as_version_3(old)  # then the file is taken back to the old schema with its label
    queue = [r[0] for r in old.execute("select problem_id from routes where route = 'annotate' "
                                       "order by value desc, problem_id")]
    old.conn.close()

    db = store.open_db(path)
    assert store.schema_version(db) == len(store.MIGRATIONS)
    names = {r[0] for r in db.execute("select name from sqlite_master")}
    assert store.QUEUE_INDEX in names and "idx_routes_queue" not in names and "feature_columns" in names
    assert [r[0] for r in db.execute(f"select problem_id from routes indexed by {store.QUEUE_INDEX} "
                                     "where route = 'annotate' order by value desc, problem_id")] == queue
    assert len(store.effective_labels(db)) == 1
    assert [v["counts"] for v in store.router_versions(db)] == [None]  # older versions keep no mix
    table = store.load_feature_table(db, "synth")  # no column copy yet: built from the rows
    assert len(table) == 30 and db.execute("select n from feature_columns").fetchone()[0] == 30
    nxt = store.next_item(db, "bob")
    assert nxt is not None and nxt["problem_id"] != item["problem_id"]


def test_arrays_round_trip(routed_db):
    problem_id = routed_db.execute("select problem_id from traces limit 1").fetchone()[0]
    trace = store.load_trace(routed_db, problem_id)
    entropy = trace["arrays"]["entropy"]
    assert entropy.ndim == 2 and entropy.shape[1] == len(trace["steps"])


def test_two_annotators_never_share_an_item(routed_db):
    first = store.next_item(routed_db, "ann")
    second = store.next_item(routed_db, "bob")
    assert first["problem_id"] != second["problem_id"]
    assert store.next_item(routed_db, "ann")["problem_id"] == first["problem_id"]  # lease renewed
    with pytest.raises(store.LeaseError):
        store.save_label(routed_db, problem_id=first["problem_id"], annotator="bob", verdict="correct")


def test_queue_is_highest_value_first(routed_db):
    item = store.next_item(routed_db, "ann")
    top = routed_db.execute("select max(value) from routes where route = 'annotate'").fetchone()[0]
    assert item["value"] == top


def test_labels_are_append_only_and_undo_is_a_row(routed_db):
    item = store.next_item(routed_db, "ann")
    store.save_label(routed_db, problem_id=item["problem_id"], annotator="ann", verdict="wrong",
                     gold_answer="12", seconds=4.2)
    with pytest.raises(store.LeaseError):  # no silent overwrite
        store.save_label(routed_db, problem_id=item["problem_id"], annotator="ann", verdict="correct")
    undone = store.undo_last_label(routed_db, "ann")
    assert undone["problem_id"] == item["problem_id"]
    rows = list(routed_db.query("select verdict, undoes from labels order by id"))
    assert [r["verdict"] for r in rows] == ["wrong", "undo"]
    assert store.get_problem(routed_db, item["problem_id"])["verdict"] is None
    assert store.next_item(routed_db, "ann")["problem_id"] == item["problem_id"]  # back with ann
    with pytest.raises(store.NothingToUndo):
        store.undo_last_label(routed_db, "ann")


def test_expired_lease_returns_to_the_queue(routed_db):
    item = store.next_item(routed_db, "ann", lease_minutes=-1)
    assert store.next_item(routed_db, "bob")["problem_id"] == item["problem_id"]


def test_skipped_items_come_last(routed_db):
    item = store.next_item(routed_db, "ann")
    store.save_label(routed_db, problem_id=item["problem_id"], annotator="ann", verdict="skip")
    assert store.next_item(routed_db, "ann")["problem_id"] != item["problem_id"]
    assert store.budget_status(routed_db)["spent"] == 0  # a skip spends nothing


def test_only_a_lead_sets_the_budget(routed_db):
    with pytest.raises(store.PermissionDenied):
        store.set_budget(routed_db, user="ann", total=1000)
    with pytest.raises(store.PermissionDenied):
        store.set_budget(routed_db, user="stranger", total=1000)
    assert store.budget_status(routed_db)["total"] == 10


def test_annotate_never_exceeds_budget_and_decisions_carry_router_version(routed_db):
    counts = store.route_counts(routed_db)
    assert counts["annotate"] <= 10
    versions = {r[0] for r in routed_db.execute("select distinct router_version from routes")}
    assert versions == {routed_db.execute("select max(id) from router_versions").fetchone()[0]}


def test_pending_lists_only_untraced(tmp_path):
    db = store.open_db(tmp_path / "p.db")
    problems = demo_problems(5, seed=1)
    store.insert_problems(db, problems)
    store.save_trace(db, problems[0].id, "m", synthetic_trace(problems[0], np.random.default_rng(0)))
    pending = store.pending_problems(db, "m")
    assert [p["id"] for p in pending] == [p.id for p in problems[1:]]
    assert len(store.pending_problems(db, "other")) == 5


def test_the_store_refuses_an_unknown_verdict_and_a_wrong_without_gold_and_saves_nothing(routed_db):
    item = store.next_item(routed_db, "ann")
    with pytest.raises(store.StoreError, match="Unknown verdict"):
        store.save_label(routed_db, problem_id=item["problem_id"], annotator="ann", verdict="approve")
    for gold in (None, ""):
        with pytest.raises(store.StoreError, match="gold"):
            store.save_label(routed_db, problem_id=item["problem_id"], annotator="ann", verdict="wrong",
                             gold_answer=gold)
    assert routed_db["labels"].count == 0
    assert store.get_problem(routed_db, item["problem_id"])["verdict"] is None
    assert store.budget_status(routed_db)["spent"] == 0


def test_a_version_9_database_gains_credible_intervals_without_losing_routes(tmp_path):
    path = tmp_path / "v9.db"
    old = build_app_db(path, n_problems=20, budget=5)
    as_version_9(old)
    routes = dict(old.execute("select problem_id, route from routes").fetchall())
    old.conn.close()
    db = store.open_db(path)
    assert store.schema_version(db) == len(store.MIGRATIONS)
    assert dict(db.execute("select problem_id, route from routes").fetchall()) == routes
    assert db.execute("select count(*) from routes where u_low is not null").fetchone()[0] == 0
    problem_id = next(iter(routes))
    assert store.queue_item(db, problem_id)["uncertainty_interval"] is None  # shown as the estimate alone
