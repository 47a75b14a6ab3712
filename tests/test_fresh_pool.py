"""bench/fresh_pool.py: every template's answer matches its text, the families share no wording,
and the rows load through the ingest reader."""

import importlib.util
import json
import random
import re
import sys
from pathlib import Path

import pytest

from pivottrace.datasets import read_pool

_SPEC = importlib.util.spec_from_file_location("fresh_pool", Path(__file__).parents[1] / "bench" / "fresh_pool.py")
fresh_pool = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("fresh_pool", fresh_pool)  # dataclasses look their module up there
_SPEC.loader.exec_module(fresh_pool)

# The arithmetic each template's text describes, written out again from the wording, applied to
# the numbers read back from the question text in the order they appear.
EXPECTED = {
    "A_shop_add": lambda a, b: a + b,
    "A_train_sub": lambda a, b: a - b,
    "A_recipe_mul": lambda a, b: a * b,
    "A_class_div": lambda a, b: a / b,
    "A_stall_mul_sub": lambda a, b, c: a * b - c,
    "A_carriage_add_div": lambda a, b, c: (a + b) / c,
    "A_flour_div_add": lambda a, b, c: a / b + c,
    "B_savings_add": lambda a, b: a + b,
    "B_score_sub": lambda a, b: a - b,
    "B_orchard_mul": lambda a, b: a * b,
    "B_library_div": lambda a, b: a / b,
    "B_wages_mul_sub": lambda a, b, c: a * b - c,
    "B_runs_add_add": lambda a, b, c: a + b + c,
    "B_cartons_add_div": lambda a, b, c: (a + b) / c,
}


def test_every_template_is_checked():
    assert sorted(EXPECTED) == sorted(t.name for t in fresh_pool.TEMPLATES)


@pytest.mark.parametrize("template", fresh_pool.TEMPLATES, ids=lambda t: t.name)
def test_answer_follows_from_the_numbers_in_the_text(template):
    rng = random.Random(template.name)
    for _ in range(200):
        row = fresh_pool.fresh_problem(rng, template)
        numbers = [int(x) for x in re.findall(r"\d+", row["question"])]
        expected = EXPECTED[template.name](*numbers)
        assert expected == int(expected) and expected > 0, row  # an exact, positive integer
        assert row["answer"] == str(int(expected)), row


def test_families_share_no_template_and_differ_in_wording():
    a = [t for t in fresh_pool.TEMPLATES if t.family == "A"]
    b = [t for t in fresh_pool.TEMPLATES if t.family == "B"]
    assert a and b and len(a) + len(b) == len(fresh_pool.TEMPLATES)
    assert not {t.name for t in a} & {t.name for t in b}
    assert not {t.text for t in a} & {t.text for t in b}
    pool_a = fresh_pool.fresh_pool(200, family="A", seed=1)
    pool_b = fresh_pool.fresh_pool(200, family="B", seed=1)
    assert {r["family"] for r in pool_a} == {"A"} and {r["family"] for r in pool_b} == {"B"}
    assert not {r["question"] for r in pool_a} & {r["question"] for r in pool_b}


def test_pool_is_seeded_distinct_and_mostly_one_step():
    rows = fresh_pool.fresh_pool(300, family="A", seed=1)
    assert rows == fresh_pool.fresh_pool(300, family="A", seed=1)
    assert rows != fresh_pool.fresh_pool(300, family="A", seed=2)
    assert len({r["question"] for r in rows}) == 300
    steps = {t.name: t.steps for t in fresh_pool.TEMPLATES}
    one_step = sum(steps[r["template"]] == 1 for r in rows) / len(rows)
    assert 0.6 < one_step < 0.8


def test_rows_load_through_the_ingest_reader(tmp_path):
    rows = fresh_pool.fresh_pool(20, family="B", seed=3)
    path = tmp_path / "freshB.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = read_pool(path)
    assert not loaded.rejected and len(loaded.problems) == 20
    assert [p.gold for p in loaded.problems] == [r["answer"] for r in rows]
