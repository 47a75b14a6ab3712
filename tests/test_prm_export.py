"""PRM export: human step labels -> TRL PRMTrainer rows (prompt, completions, labels), read back."""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pivottrace import store
from pivottrace.cli import app
from pivottrace.export import ExportError, export
from pivottrace.prm import step_bools
from tests.conftest import build_app_db, lease_and_label


def test_step_bools_follow_prm800k():
    assert step_bools(2, 5) == [True, True, False]  # steps after the first wrong one carry no label
    assert step_bools(-1, 3) == [True, True, True]
    assert step_bools(0, 3) == [False]
    assert step_bools(2, 4, [1, 0, -1, 1]) == [True, True, False]  # ratings: 0 is neutral, counts as right
    assert step_bools(1, 3, [1, None, -1]) == [True, False]  # incomplete ratings: the first wrong step rules


@pytest.fixture
def labelled(tmp_path):
    db = build_app_db(tmp_path / "prm.db", n_problems=12)
    rows = db.execute("select problem_id, steps from traces order by problem_id limit 3").fetchall()
    (p1, s1), (p2, s2), (p3, _) = rows
    store.save_step_label(db, problem_id=p1, annotator="ann", first_wrong_step=2)
    store.save_step_label(db, problem_id=p2, annotator="bob", first_wrong_step=-1)
    store.save_step_label(db, problem_id=p3, annotator="ann", first_wrong_step=0)
    store.undo_last_step_label(db, "ann")  # takes back p3's label: it must not be exported
    return db, {p1: json.loads(s1), p2: json.loads(s2)}


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_prm_export_has_trl_columns_and_only_human_step_labels(labelled, tmp_path, suffix):
    db, steps = labelled
    out = tmp_path / f"prm{suffix}"
    result = export(db, fmt="prm", out=out)
    assert result.rows == {"train": 2} and result.label_sources == {"human": 2}
    frame = pd.read_parquet(out) if suffix == ".parquet" else pd.read_json(out, lines=True)
    assert list(frame.columns)[:3] == ["prompt", "completions", "labels"]
    by_id = {row.problem_id: row for row in frame.itertuples()}
    assert set(by_id) == set(steps)
    first, second = sorted(steps)
    wrong_at_2 = by_id[first] if len(by_id[first].labels) == 3 else by_id[second]
    assert list(wrong_at_2.labels) == [True, True, False]
    all_right = by_id[second] if wrong_at_2 is by_id[first] else by_id[first]
    assert all(all_right.labels) and len(all_right.labels) == len(all_right.completions)
    for row in frame.itertuples():
        assert list(row.completions) == [s["text"].strip() for s in steps[row.problem_id]][:len(row.labels)]
        assert isinstance(row.prompt, str) and row.prompt
    if suffix == ".parquet":
        schema = pq.read_schema(out)
        assert str(schema.field("completions").type) == "list<element: string>"
        assert str(schema.field("labels").type) == "list<element: bool>"


def test_a_step_label_whose_verdict_was_undone_is_left_out(labelled, tmp_path):
    db, steps = labelled
    other = db.execute("select t.problem_id from traces t join routes r on r.problem_id = t.problem_id "
                       "where t.problem_id not in (?, ?) and r.route = 'annotate' limit 1", list(steps)).fetchone()[0]
    lease_and_label(db, other, "ann", "wrong", gold_answer="7")  # a verdict needs ann's lease
    store.save_step_label(db, problem_id=other, annotator="ann", first_wrong_step=0)
    assert export(db, fmt="prm", out=tmp_path / "a.jsonl").rows == {"train": 3}
    store.undo_last_label(db, "ann")  # the verdict is taken back: its step label no longer goes out
    result = export(db, fmt="prm", out=tmp_path / "b.jsonl")
    assert result.rows == {"train": 2} and result.skipped == {"its verdict was undone": 1}


def test_prm_export_without_step_labels_is_a_clear_error(tmp_path):
    db = build_app_db(tmp_path / "none.db", n_problems=6)
    with pytest.raises(ExportError, match="no problem has a human step label"):
        export(db, fmt="prm", out=tmp_path / "prm.jsonl")
    assert not (tmp_path / "prm.jsonl").exists()


def test_cli_export_prm(labelled, tmp_path, monkeypatch):
    db, _ = labelled
    path = db.execute("pragma database_list").fetchone()[2]
    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(app, ["export", "--format", "prm", "--out", str(out), "--db", path])
    assert result.exit_code == 0, result.output
    assert "Wrote 2 train rows" in result.output and len(pd.read_parquet(out)) == 2
