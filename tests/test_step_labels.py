"""Step labels (first wrong step, per-step ratings): append-only storage, undo, checks."""

import json

import pytest

from pivottrace import store
from tests.conftest import build_app_db, lease_and_label


@pytest.fixture
def db(tmp_path):
    return build_app_db(tmp_path / "steps.db", n_problems=12, budget=5)


def _traced(db):
    row = db.execute("select problem_id, steps from traces limit 1").fetchone()
    return row[0], len(json.loads(row[1]))


def test_first_wrong_step_is_stored_superseded_and_undone_append_only(db):
    problem_id, n_steps = next((pid, len(json.loads(steps))) for pid, steps in db.execute(
        "select t.problem_id, t.steps from traces t join routes r on r.problem_id = t.problem_id "
        "where r.route = 'annotate' and t.model_id = r.model_id") if len(json.loads(steps)) >= 2)
    lease_and_label(db, problem_id, "ann", "wrong", gold_answer="5")  # a verdict needs ann's lease
    first = store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=1)
    [row] = store.effective_step_labels(db, problem_id=problem_id)
    assert row["id"] == first and row["first_wrong_step"] == 1 and row["n_steps"] == n_steps
    assert row["label_id"] is not None and row["model_id"] == "synth"
    ratings = [1, -1] + [None] * (n_steps - 2)
    second = store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=1, ratings=ratings)
    [row] = store.effective_step_labels(db, problem_id=problem_id)
    assert row["id"] == second and row["ratings"] == ratings  # the newer label is in force
    undone = store.undo_last_step_label(db, "ann")
    assert undone["step_label_id"] == second
    [row] = store.effective_step_labels(db, problem_id=problem_id)
    assert row["id"] == first  # undoing the newer one brings the older one back
    store.undo_last_step_label(db, "ann", problem_id=problem_id)
    assert store.effective_step_labels(db) == []
    with pytest.raises(store.NothingToUndo):
        store.undo_last_step_label(db, "ann")
    assert db.execute("select count(*) from step_labels").fetchone()[0] == 4  # nothing deleted


def test_two_annotators_keep_their_own_step_labels(db):
    problem_id, _ = _traced(db)
    store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=0)
    store.save_step_label(db, problem_id=problem_id, annotator="bob", first_wrong_step=-1)
    rows = store.effective_step_labels(db, problem_id=problem_id)
    assert {(r["annotator"], r["first_wrong_step"]) for r in rows} == {("ann", 0), ("bob", -1)}
    store.undo_last_step_label(db, "bob")
    assert [r["annotator"] for r in store.effective_step_labels(db)] == ["ann"]


def test_bad_step_labels_get_a_clear_error_and_store_nothing(db):
    problem_id, n_steps = _traced(db)
    with pytest.raises(store.StoreError, match="step number"):
        store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=n_steps)
    with pytest.raises(store.StoreError, match="ratings"):
        store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=0, ratings=[2] * n_steps)
    with pytest.raises(store.StoreError, match="No trace"):
        store.save_step_label(db, problem_id="nope", annotator="ann", first_wrong_step=0)
    assert db.execute("select count(*) from step_labels").fetchone()[0] == 0
