"""Three-way routing with thresholds derived from the budget, the pool and the uncertainty model.

Input: feature rows, their uncertainties, the remaining label budget and a precision target.
Output: one decision per problem (annotate / self_train / low_priority / deferred) and the
thresholds that produced them. It does not estimate uncertainty or write to the database.

How the thresholds are derived (none is a constant):
- self_train: walk the problems that have a majority answer from the most certain up, and keep
  the longest prefix whose estimated pseudo-label precision, mean(1 - uncertainty), stays at or
  above `target_precision`. Its largest uncertainty is `self_train_max`.
- low_priority: inside that band, the problems where every sample agrees and the uncertainty is
  below the band's median (the easy half of the unanimous band). Their GRPO groups have zero
  advantage: they teach nothing now.
- annotate: everything above the self-train band, ranked by value = uncertainty, lifted by pivot
  richness; the top `remaining budget` go to humans, the rest are `deferred`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .uncertainty import _percentiles

PIVOT_VALUE_WEIGHT = 0.25  # how much pivot richness lifts an uncertain problem's value


@dataclass
class RouterConfig:
    target_precision: float = 0.85  # estimated pseudo-label precision the self_train band must keep
    pivot_value_weight: float = PIVOT_VALUE_WEIGHT
    three_way: bool = True  # False: annotate vs everything else (an ablation)
    fixed_thresholds: tuple | None = None  # (self_train_max, annotate_min): an ablation, not the default


@dataclass
class Routing:
    decisions: list[dict]  # {problem_id, model_id, route, uncertainty, value}
    thresholds: dict = field(default_factory=dict)


def route_pool(rows: list[dict], uncertainty: np.ndarray, *, budget_remaining: int | None,
               config: RouterConfig = RouterConfig(), exclude: set | None = None) -> Routing:
    """Route every row. `exclude`: problem ids already labelled (kept in `annotate`, not counted)."""
    exclude = exclude or set()
    n = len(rows)
    u = np.asarray(uncertainty, dtype=np.float64)  # [N]
    richness = _percentiles(np.array([r.get("pivot_density") or 0.0 for r in rows], float)) if n else u
    value = u * (1.0 + config.pivot_value_weight * richness)  # [N]
    has_majority = np.array([r.get("majority_answer") is not None for r in rows], bool)  # [N]
    unanimous = np.array([(r.get("vote_share") or 0.0) >= 1.0 for r in rows], bool)  # [N]
    open_ = np.array([r["problem_id"] not in exclude for r in rows], bool)  # [N]

    if config.fixed_thresholds is not None:
        self_train_max, annotate_min = config.fixed_thresholds
        self_train = open_ & has_majority & (u <= self_train_max)
    else:
        self_train_max = _precision_band(u[open_ & has_majority], config.target_precision)
        self_train = open_ & has_majority & (u <= self_train_max)
        annotate_min = self_train_max
    band = u[self_train]
    low_cut = float(np.median(band)) if band.size else -1.0
    low_priority = self_train & unanimous & (u <= low_cut)
    self_train &= ~low_priority

    route = np.full(n, "annotate", dtype=object)
    if config.three_way:
        route[self_train] = "self_train"
        route[low_priority] = "low_priority"
        candidates = np.flatnonzero(open_ & ~self_train & ~low_priority)
    else:  # two-way ablation: the top of the whole pool to humans, the rest self-trained
        candidates = np.flatnonzero(open_)
    ranked = candidates[np.argsort(-value[candidates], kind="stable")]
    capacity = len(ranked) if budget_remaining is None else max(int(budget_remaining), 0)
    rest = ranked[capacity:]
    if config.three_way:
        route[rest] = "deferred"
    else:
        route[rest] = np.where(has_majority[rest], "self_train", "deferred")

    decisions = [{"problem_id": r["problem_id"], "model_id": r["model_id"], "route": str(route[i]),
                  "uncertainty": float(u[i]), "value": float(value[i])} for i, r in enumerate(rows)]
    thresholds = {
        "self_train_max": float(self_train_max), "annotate_min": float(annotate_min),
        "low_priority_max": float(low_cut), "target_precision": config.target_precision,
        "annotate_capacity": None if budget_remaining is None else int(capacity),
        "estimated_self_train_precision": float(1 - u[self_train].mean()) if self_train.any() else None,
        "three_way": config.three_way,
    }
    return Routing(decisions, thresholds)


def _precision_band(u: np.ndarray, target: float) -> float:
    """Largest uncertainty such that mean(1 - u) over all problems at or below it is >= target."""
    if u.size == 0:
        return -1.0
    ordered = np.sort(u)  # [M]
    precision = np.cumsum(1.0 - ordered) / np.arange(1, ordered.size + 1)  # [M] running mean
    ok = np.flatnonzero(precision >= target)
    return float(ordered[ok[-1]]) if ok.size else -1.0
