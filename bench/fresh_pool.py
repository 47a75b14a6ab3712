"""Held-out pools of one- and two-step arithmetic word problems, for `pivottrace eval`.

The router's estimators are tuned on the demo pool (datasets.demo_problem) and GSM8K; these pools
use other wordings (shops, trains, recipes, classrooms in family A; savings, sports, farms,
libraries in family B) so a change can be checked on problems it was never tuned on. The two
families share no template, so they make two independent pools. About 70 % of the problems are
one-step (add, subtract, multiply or divide), the rest two-step; every answer is an exact integer.
It writes JSONL rows that `pivottrace ingest` reads (question, answer, plus template and family);
it does not trace or evaluate anything.

    python bench/fresh_pool.py --family A --n 300 --seed 1 --out freshA.jsonl
    pivottrace ingest freshA.jsonl --db freshA.db && pivottrace trace --db freshA.db
    pivottrace eval --db freshA.db
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ONE_STEP_SHARE = 0.7  # the rest are two-step: the embedded model gets few longer chains right
NAMES = ["Priya", "Tomas", "Noor", "Mateo", "Yuki", "Olu", "Zara", "Ravi", "Sofia", "Kwame",
         "Ingrid", "Diego"]


@dataclass(frozen=True)
class Template:
    """One wording. `draw` picks the numbers (in the order the text shows them) so that the answer
    is a positive integer; `answer` computes it from them."""

    name: str
    family: str
    steps: int
    text: str  # str.format fields: {who}, {a}, {b}, {c}
    draw: Callable[[random.Random], tuple[int, ...]]
    answer: Callable[..., int]


def _sum(r):
    return r.randint(12, 60), r.randint(5, 40)


def _difference(r):
    b = r.randint(4, 30)
    return b + r.randint(3, 45), b


def _product(r):
    return r.randint(2, 9), r.randint(3, 12)


def _quotient(r):
    divisor, quotient = r.randint(2, 9), r.randint(2, 12)
    return divisor * quotient, divisor


TEMPLATES = [
    # family A: shops, trains, recipes, classrooms
    Template("A_shop_add", "A", 1, "A corner shop sold {a} loaves of bread in the morning and {b} loaves in "
             "the afternoon. How many loaves did the shop sell in total?", _sum, lambda a, b: a + b),
    Template("A_train_sub", "A", 1, "A train left the station with {a} passengers. At the first stop {b} "
             "passengers got off and nobody got on. How many passengers are left on the train?",
             _difference, lambda a, b: a - b),
    Template("A_recipe_mul", "A", 1, "{who}'s recipe needs {a} eggs for one cake. {who} is baking {b} "
             "cakes for a party. How many eggs are needed?", _product, lambda a, b: a * b),
    Template("A_class_div", "A", 1, "A teacher shares {a} crayons equally among the {b} tables of a "
             "classroom. How many crayons does each table get?", _quotient, lambda a, b: a // b),
    Template("A_stall_mul_sub", "A", 2, "A market stall has {a} crates with {b} melons per crate. By noon "
             "{c} melons have been sold. How many melons are left?",
             lambda r: _product_less(r), lambda a, b, c: a * b - c),
    Template("A_carriage_add_div", "A", 2, "A train has {a} seats in first class and {b} seats in standard "
             "class, spread evenly over {c} carriages. How many seats are there per carriage?",
             lambda r: _split_sum(r), lambda a, b, c: (a + b) // c),
    Template("A_flour_div_add", "A", 2, "{who} divides {a} grams of flour equally between {b} bowls, then "
             "adds {c} more grams to one of them. How many grams of flour are in that bowl now?",
             lambda r: (*_quotient(r), r.randint(2, 20)), lambda a, b, c: a // b + c),
    # family B: savings, sports scores, farms, libraries
    Template("B_savings_add", "B", 1, "{who} put {a} dollars into a savings jar in March and {b} dollars "
             "in April. How many dollars did {who} save over those two months?", _sum, lambda a, b: a + b),
    Template("B_score_sub", "B", 1, "In a basketball game the home team scored {a} points and the "
             "visitors scored {b}. By how many points did the home team win?",
             _difference, lambda a, b: a - b),
    Template("B_orchard_mul", "B", 1, "An orchard has {a} rows of apple trees, with {b} trees in every "
             "row. How many apple trees grow in the orchard?", _product, lambda a, b: a * b),
    Template("B_library_div", "B", 1, "A library packs {a} new books into boxes that hold {b} books "
             "each. How many boxes does the library fill?", _quotient, lambda a, b: a // b),
    Template("B_wages_mul_sub", "B", 2, "{who} earns {a} dollars a week walking dogs. After {b} weeks, "
             "{who} spends {c} dollars on a helmet. How many dollars does {who} have left?",
             lambda r: _product_less(r), lambda a, b, c: a * b - c),
    Template("B_runs_add_add", "B", 2, "A cricket player scored {a} runs in the first match, {b} runs in "
             "the second and {c} runs in the third. How many runs did the player score altogether?",
             lambda r: (r.randint(5, 40), r.randint(5, 40), r.randint(5, 40)), lambda a, b, c: a + b + c),
    Template("B_cartons_add_div", "B", 2, "A farmer gathers {a} eggs on Monday and {b} eggs on Tuesday "
             "and packs all of them into cartons of {c}. How many cartons does the farmer fill?",
             lambda r: _split_sum(r), lambda a, b, c: (a + b) // c),
]
FAMILIES = ("A", "B")


def _product_less(r):
    """(a, b, c) with 0 < c < a * b."""
    a, b = _product(r)
    return a, b, r.randint(1, min(17, a * b - 1))


def _split_sum(r):
    """(a, b, c) with a + b divisible by c."""
    c = r.randint(2, 6)
    total = c * r.randint(3, 12)
    a = r.randint(1, total - 1)
    return a, total - a, c


def fresh_problem(rng: random.Random, template: Template) -> dict:
    """One JSONL row from `template` with freshly drawn numbers."""
    numbers = template.draw(rng)
    fields = dict(zip("abc", numbers), who=rng.choice(NAMES))
    return {"question": template.text.format(**fields), "answer": str(template.answer(*numbers)),
            "template": template.name, "family": template.family}


def fresh_pool(n: int, *, family: str, seed: int) -> list[dict]:
    """`n` distinct problems of one family, deterministic for a seed, ~ONE_STEP_SHARE one-step."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: use {' or '.join(FAMILIES)}")
    rng = random.Random(seed)
    one = [t for t in TEMPLATES if t.family == family and t.steps == 1]
    two = [t for t in TEMPLATES if t.family == family and t.steps == 2]
    rows: dict[str, dict] = {}
    for _ in range(100 * n + 1000):
        if len(rows) == n:
            break
        row = fresh_problem(rng, rng.choice(one if rng.random() < ONE_STEP_SHARE else two))
        rows.setdefault(row["question"], row)
    else:
        raise RuntimeError(f"family {family} cannot produce {n} distinct problems")
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, required=True)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    args = parser.parse_args()
    rows = fresh_pool(args.n, family=args.family, seed=args.seed)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} family-{args.family} problems to {args.out}")


if __name__ == "__main__":
    main()
