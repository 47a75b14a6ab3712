"""Does a pivot mark the first wrong step? The localisation metric, and its baselines.

Input: per chain, its steps' pivot flags and scores, its steps' token counts and the first wrong
step (from an annotator's step label, or known because the error was injected: injected.py).
Output: how often the first wrong step is a pivot, or within +-1 step of one, against
- a random set of steps of the same size as the pivots (so a detector cannot win by marking more),
- one random step, and the longest step (the step with the most tokens: long steps hold more
  numbers, the obvious guess);
plus the precision and recall of "pivot" for "first wrong step", and the top-scoring step's hit
rate against the same single-step baselines. Chains without an error (first wrong step -1) count
as false-alarm checks: the share of them with any pivot. numpy only; no model, no store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import comb

import numpy as np

NEAR = 1  # "within +-1 step" of the first wrong step


@dataclass
class LocalisationCase:
    pivots: list[int]  # pivot steps
    scores: list[float]  # [S] step scores (higher = more pivot-like)
    step_tokens: list[int]  # [S] tokens per step
    first_wrong: int  # first wrong step; -1 when the chain has none


def first_wrong_step(steps: list[dict], error_char: int) -> int:
    """The step holding character `error_char` (steps as in TraceResult.steps: char_start/char_end)."""
    for index, step in enumerate(steps):
        if step["char_start"] <= error_char < step["char_end"]:
            return index
    return len(steps) - 1 if steps and error_char >= steps[-1]["char_end"] else -1


def _neighbours(first: int, n_steps: int) -> range:
    return range(max(0, first - NEAR), min(n_steps, first + NEAR + 1))


def _random_set_hit(n_steps: int, n_picked: int, n_good: int) -> float:
    """P(a uniformly random set of n_picked of n_steps steps holds at least one of n_good given steps)."""
    if n_picked <= 0:
        return 0.0
    n_picked = min(n_picked, n_steps)
    return 1.0 - comb(n_steps - n_good, n_picked) / comb(n_steps, n_picked)


@dataclass
class LocalisationReport:
    n_chains: int  # chains with an error
    mean_steps: float
    with_pivot: float  # share of error chains with any pivot
    recall: float  # share whose first wrong step is a pivot
    recall_near: float  # ... or within +-1 of a pivot
    random_same_size: float  # expected `recall` of random step sets of the pivots' size
    random_same_size_near: float
    precision: float  # share of pivot steps (error chains) that are the first wrong step
    precision_near: float  # ... or within +-1 of it
    mean_pivots: float  # pivot steps per error chain
    top_step: float  # share whose top-scoring step is the first wrong step
    top_step_near: float
    random_step: float  # expected hit rate of one random step
    random_step_near: float
    longest_step: float  # hit rate of the longest step
    longest_step_near: float
    n_clean: int  # chains without an error
    clean_with_pivot: float  # share of them with any pivot (false alarms); NaN without clean chains
    clean_mean_pivots: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def localisation_report(cases: list[LocalisationCase]) -> LocalisationReport:
    """The metric over `cases` (see the module docstring)."""
    wrong = [c for c in cases if c.first_wrong >= 0 and len(c.scores)]
    clean = [c for c in cases if c.first_wrong < 0]
    rows = []
    hit_pivots = hit_pivots_near = n_pivots = 0
    for case in wrong:
        n = len(case.scores)
        near = set(_neighbours(case.first_wrong, n))
        pivots = set(case.pivots)
        top = int(np.argmax(case.scores))
        longest = int(np.argmax(case.step_tokens))
        hit_pivots += case.first_wrong in pivots
        hit_pivots_near += len(pivots & near)
        n_pivots += len(pivots)
        rows.append([
            n, bool(pivots), case.first_wrong in pivots, bool(pivots & near),
            _random_set_hit(n, len(pivots), 1), _random_set_hit(n, len(pivots), len(near)),
            top == case.first_wrong, top in near, 1 / n, len(near) / n,
            longest == case.first_wrong, longest in near, len(pivots)])
    table = np.array(rows, dtype=np.float64).reshape(len(rows), 13)  # [N, 13]
    mean = table.mean(0) if len(rows) else np.full(13, np.nan)
    clean_pivots = np.array([len(c.pivots) for c in clean], dtype=np.float64)
    return LocalisationReport(
        n_chains=len(wrong), mean_steps=float(mean[0]), with_pivot=float(mean[1]),
        recall=float(mean[2]), recall_near=float(mean[3]),
        random_same_size=float(mean[4]), random_same_size_near=float(mean[5]),
        precision=hit_pivots / n_pivots if n_pivots else float("nan"),
        precision_near=hit_pivots_near / n_pivots if n_pivots else float("nan"),
        mean_pivots=float(mean[12]),
        top_step=float(mean[6]), top_step_near=float(mean[7]),
        random_step=float(mean[8]), random_step_near=float(mean[9]),
        longest_step=float(mean[10]), longest_step_near=float(mean[11]),
        n_clean=len(clean), clean_with_pivot=float((clean_pivots > 0).mean()) if clean else float("nan"),
        clean_mean_pivots=float(clean_pivots.mean()) if clean else float("nan"))


def binomial_interval(successes: float, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (for the report's hit rates)."""
    from scipy.stats import norm

    if n == 0:
        return float("nan"), float("nan")
    z = norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)
