"""Ingest: formats, content-hash ids, idempotence, the malformed-row report, GSM8K gold."""

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pivottrace import pipeline, store
from pivottrace.cli import app
from pivottrace.datasets import (MAX_TEXT_CHARS, PoolFormatError, demo_problems, problem_id,
                                 read_pool, spread_by_steps)

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture
def db(tmp_path):
    return store.open_db(tmp_path / "pool.db")


def test_first_50_gsm8k_problems_ingest_with_gold(tmp_path, db):
    lines = GSM8K.read_text(encoding="utf-8").splitlines()[:50]
    pool = tmp_path / "gsm8k50.jsonl"
    pool.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = pipeline.ingest(db, pool)
    assert (report.added, report.existing, report.rejected) == (50, 0, [])
    first = json.loads(lines[0])
    row = store.get_problem(db, problem_id(first["question"]))
    assert row["text"] == first["question"].strip()
    assert row["gold"] == first["answer"].split("####")[-1].strip().replace(",", "")
    assert row["source"] == "gsm8k50"


def test_ingest_twice_adds_nothing(tmp_path, db):
    pool = tmp_path / "p.jsonl"
    pool.write_text('{"question": "What is 2+2?", "answer": "#### 4"}\n'
                    '{"question": "What  is 2+2?", "answer": "#### 4"}\n')  # same text modulo spaces
    first = pipeline.ingest(db, pool)
    second = pipeline.ingest(db, pool)
    assert first.added == 1 and second.added == 0 and second.existing == 1
    assert db["problems"].count == 1


def test_malformed_rows_are_reported_and_good_rows_load(tmp_path, db):
    pool = tmp_path / "bad.jsonl"
    rows = [
        json.dumps({"question": "Ava has 3 apples and buys 2. How many?", "answer": "#### 5"}),
        "{not json",
        json.dumps({"answer": "#### 3"}),
        json.dumps({"question": "   "}),
        json.dumps({"question": "x" * (1024 * 1024)}),
        json.dumps(["a", "list"]),
        json.dumps({"question": "Ben has 7 pens and loses 2. How many?", "answer": "#### 5"}),
    ]
    pool.write_text("\n".join(rows) + "\n")
    report = pipeline.ingest(db, pool)
    assert report.added == 2
    reasons = {r.line: r.reason for r in report.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "bad JSON" in reasons[2]
    assert "missing question" in reasons[3]
    assert "empty" in reasons[4]
    assert f"{MAX_TEXT_CHARS:,}" in reasons[5]


def test_cli_reports_line_numbers_and_exits_nonzero(tmp_path):
    pool = tmp_path / "bad.jsonl"
    pool.write_text('{"question": "What is 1+1?"}\n{oops\n')
    result = CliRunner().invoke(app, ["ingest", str(pool), "--db", str(tmp_path / "c.db")])
    assert result.exit_code == 2
    assert "Added 1 problems" in result.output
    assert "line 2" in result.output


def test_csv_with_chosen_columns_and_math_boxed(tmp_path, db):
    pool = tmp_path / "math.csv"
    pd.DataFrame({"prompt_text": ["Compute 1/2 + 0.", "Short"], "sol": ["So \\boxed{\\frac{1}{2}}.", "#### 1"]}
                 ).to_csv(pool, index=False)
    loaded = read_pool(pool, question_field="prompt_text", answer_field="sol")
    assert [p.gold for p in loaded.problems] == ["\\frac{1}{2}", "1"]
    missing = read_pool(pool, question_field="nope")
    assert not missing.problems and all("nope" in r.reason for r in missing.rejected)


def test_parquet_problem_solution_columns(tmp_path):
    pool = tmp_path / "pool.parquet"
    pd.DataFrame({"problem": ["What is 6*7?", ""], "solution": ["#### 42", "#### 0"]}).to_parquet(pool)
    loaded = read_pool(pool)
    assert [(p.text, p.gold) for p in loaded.problems] == [("What is 6*7?", "42")]
    assert [r.line for r in loaded.rejected] == [2]


def test_unknown_format_is_a_clear_error(tmp_path):
    bad = tmp_path / "pool.xlsx"
    bad.write_text("x")
    with pytest.raises(PoolFormatError, match="Unknown pool format"):
        read_pool(bad)


def test_spread_by_steps_puts_every_difficulty_up_front():
    problems = demo_problems(40, seed=0)
    spread = spread_by_steps(problems)
    assert sorted(p.id for p in spread) == sorted(p.id for p in problems)  # the same problems
    counts = sorted({p.meta["steps"] for p in problems})
    assert [p.meta["steps"] for p in spread[:len(counts)]] == counts
    ones = [p.id for p in problems if p.meta["steps"] == 1]
    assert [p.id for p in spread if p.meta["steps"] == 1] == ones  # each group keeps its order


def test_demo_generator_is_deterministic_with_known_answers():
    first, again = demo_problems(200, seed=3), demo_problems(200, seed=3)
    assert [p.id for p in first] == [p.id for p in again]
    assert len({p.id for p in first}) == 200
    assert {p.meta["steps"] for p in first} == {1, 2, 3, 4}
    assert all(p.gold is not None and int(p.gold) >= 0 for p in first)
    assert demo_problems(5, seed=4)[0].id != first[0].id
