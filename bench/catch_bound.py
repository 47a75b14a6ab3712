"""Benchmark: how much of a shortfall in caught wrong majorities the cold start decided.

`pivottrace eval` labels the picks in rounds; the first round is picked before any label returns,
so it is the cold start's alone. This script replays PivotTrace and the single-signal baselines on a
pool (a database, as `pivottrace eval` reads it) and prints, for each budget:

- what PivotTrace and the best single-signal baseline caught;
- hindsight: the first round, then the rest ranked by PivotTrace's estimator fitted to every gold
  answer in the pool (learning taken to its limit; a luckier ranking can beat it by a few);
- a clairvoyant switch: PivotTrace's first round, then the best baseline's own picks (what a model
  choice that knew the right model after one round would reach);
- hindsight from each single signal's own first round, and from a first round that alternates
  PivotTrace's and confidence only's picks: what a cold start that ranked like that would reach
  with learning taken to its limit.

When hindsight is below the baseline, learning to the limit does not close the gap: only a
different cold start could. Then, label-free, how each single signal agrees with the vote (what an
estimator without labels can see) against its AUROC for "majority wrong" (what only labels show).

    python bench/catch_bound.py --db pool.db [--db other.db] [--budgets 0.05 0.1 0.2]

It does not change the router and does not write reports (`pivottrace eval` does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pivottrace import evaluate  # noqa: E402
from pivottrace.metrics import calibration_metrics  # noqa: E402
from pivottrace.records import FeatureTable  # noqa: E402
from pivottrace.report import MAIN, SINGLE_SIGNALS  # noqa: E402
from pivottrace.store import open_db  # noqa: E402
from pivottrace.uncertainty import pool_percentiles  # noqa: E402

SIGNALS = {"vote_share": -1, "mean_logprob": -1, "length": +1, "pivot_density": +1, "mean_entropy": +1}  # higher = wrong


def switched(ours: evaluate.BudgetResult, baseline: evaluate.BudgetResult, after: int, wrong: dict) -> int:
    """Caught by PivotTrace's first `after` rounds followed by the baseline's picks, in its order."""
    picked = [pid for rnd in ours.picked_rounds[:after] for pid in rnd]
    seen = set(picked)
    for pid in (p for rnd in baseline.picked_rounds for p in rnd):
        if len(picked) >= ours.labels:
            break
        if pid not in seen:
            picked.append(pid)
            seen.add(pid)
    return sum(wrong[pid] for pid in picked)


def mixed_start(ours: list, other: list) -> list:
    """Rounds whose first alternates two strategies' first-round picks (same size), then as many
    later picks as `ours` had (only their number matters to the hindsight catch)."""
    first = []
    for pid in (p for pair in zip(ours[0], other[0]) for p in pair):
        if pid not in first and len(first) < len(ours[0]):
            first.append(pid)
    return [first, *ours[1:]]


def budget_table(pool: evaluate.EvalPool, shares: tuple) -> list[str]:
    chosen = {s.name: s for s in evaluate.strategies() if s.name in (MAIN,) + SINGLE_SIGNALS}
    table = FeatureTable.from_rows(pool.rows)
    truth = np.asarray(pool.wrong, int)  # [N]
    wrong = dict(zip(table.ids, truth))
    lines = ["| budget | per round | PivotTrace | best single signal | first round caught | hindsight "
             "| switch after 1 round | hindsight from confidence's first round | from vote share's | from a mixed one |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for share in shares:
        budget = int(round(share * pool.size))
        runs = {name: evaluate.play(pool, strategy, budget) for name, strategy in chosen.items()}
        ours = runs[MAIN]
        best = max((runs[name] for name in SINGLE_SIGNALS), key=lambda r: r.caught)
        starts = [runs["confidence_only"].picked_rounds, runs["vote_share_only"].picked_rounds,
                  mixed_start(ours.picked_rounds, runs["confidence_only"].picked_rounds)]
        from_first = [evaluate.hindsight_caught(table, truth, chosen[MAIN], rounds) for rounds in starts]
        cells = [f"{caught}{' (below)' if caught < best.caught else ''}"
                 for caught in [ours.hindsight_caught, switched(ours, best, 1, wrong), *from_first]]
        lines.append(f"| {share:.0%} ({budget}) | {len(ours.picked_rounds[0])} | {ours.caught} "
                     f"| {best.caught} ({best.strategy}) | {ours.first_round_caught} | " + " | ".join(cells) + " |")
    return lines


def label_free_table(pool: evaluate.EvalPool) -> list[str]:
    table = FeatureTable.from_rows(pool.rows, tuple(SIGNALS))
    vote = -np.nan_to_num(table.column("vote_share"))
    lines = ["| signal | Spearman with the vote's doubt (label-free) | AUROC for majority wrong (needs labels) |",
             "|---|---:|---:|"]
    for name, sign in SIGNALS.items():
        column = sign * np.nan_to_num(table.column(name))
        rho = spearmanr(vote, column).correlation
        auroc = calibration_metrics(pool_percentiles(column), np.asarray(pool.wrong, int))["auroc"]
        lines.append(f"| {name} | {rho:+.2f} | {auroc:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", action="append", required=True, help="a traced pool with gold answers (repeatable)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.05, 0.10, 0.20])
    args = parser.parse_args()
    for db in args.db:
        pool = evaluate.load_pool(open_db(db, create=False))
        print(f"## {db}: {pool.size} problems, {int(np.sum(pool.wrong))} wrong majorities\n")
        print("\n".join(budget_table(pool, tuple(args.budgets))) + "\n")
        print("\n".join(label_free_table(pool)) + "\n", flush=True)


if __name__ == "__main__":
    main()
