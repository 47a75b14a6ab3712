"""Routes each problem to annotate / self_train / low_priority (or deferred past the budget) with
thresholds derived from the budget, the pool and the uncertainty model; it estimates nothing.

Input: feature rows, their uncertainties u = P(majority answer wrong), the remaining label budget
and a pseudo-label precision target. Output: one decision per problem (annotate / self_train /
low_priority / deferred) and the thresholds that produced them. It does not estimate uncertainty
(uncertainty.py) or write to the database.

How the bands are derived (none is a constant):
- low_priority: problems where every sample agrees and whose own error is low: u <= 1 -
  `target_precision` (each alone would meet the pseudo-label target). In GRPO a unanimous group
  has zero advantage, so these teach nothing now. Unanimous answers with a higher u (confidently,
  probably wrongly) are annotate candidates: that is where a human's label corrects the model.
- self_train: walk the problems with a split but existing majority from the most certain up and
  keep the longest run whose estimated pseudo-label precision, mean(1 - u), stays at or above
  `target_precision`, and never a problem whose majority is likelier wrong than right
  (u >= MAX_PSEUDO_LABEL_ERROR). Their majority answer becomes the pseudo-label.
- annotate: everything else (split votes beyond the band, unanimous answers that are probably
  wrong, no answer at all), ranked by value = u lifted by pivot richness. The top `remaining
  budget` go to humans, the rest are `deferred`. When the budget is larger than this set, the
  rest of it is spent on the least certain self_train items, then low_priority ones (`spill_over`).
Labelled problems (`exclude`) keep the `annotate` route and are not counted against the budget.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .records import ROUTING_COLUMNS, FeatureTable
from .uncertainty import pool_percentiles
from .vocab import ROUTES

PIVOT_VALUE_WEIGHT = 0.25  # how much pivot richness lifts an uncertain problem's value (rank tiebreak-ish)
MAX_PSEUDO_LABEL_ERROR = 0.5  # never self-train on a majority answer we think is likelier wrong than right
EXPLORE_SHARE = 0.2  # share of the annotate capacity spent on calibration probes (see the docstring)
DEFAULT_TARGET_PRECISION = 0.85  # the self_train band's precision target unless a lead sets another
MIN_TARGET_PRECISION = 1.0 - MAX_PSEUDO_LABEL_ERROR  # a lead's target below this would admit majorities
# likelier wrong than right (the router never self-trains on those anyway, so such a target means nothing)
FIXED_THRESHOLDS = (0.2, 0.5)  # (low_priority_max, self_train_max) of the fixed-threshold ablation:
# a hand-set pair (unanimous and under 0.2 is easy; under 0.5 the majority is likelier right than wrong)


@dataclass
class RouterConfig:
    target_precision: float = DEFAULT_TARGET_PRECISION  # estimated pseudo-label precision the self_train band must keep
    pivot_value_weight: float = PIVOT_VALUE_WEIGHT  # 0: rank the annotate candidates by u alone
    three_way: bool = True  # False: annotate vs everything else (an ablation)
    fixed_thresholds: tuple | None = None  # (low_priority_max, self_train_max): an ablation, not the default
    spill_over: bool = True  # spend a budget larger than the uncertain set on the least certain self_train items
    explore_share: float = EXPLORE_SHARE  # share of the annotate capacity given to random calibration probes

    def __post_init__(self):
        if not 0.0 < float(self.target_precision) < 1.0:
            raise ValueError(f"target_precision must be in (0, 1), got {self.target_precision}.")
        if self.pivot_value_weight < 0:
            raise ValueError("pivot_value_weight must not be negative.")
        if not 0.0 <= float(self.explore_share) < 1.0:
            raise ValueError(f"explore_share must be in [0, 1), got {self.explore_share}.")
        if self.fixed_thresholds is not None:
            low, high = self.fixed_thresholds
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"fixed_thresholds must be 0 <= low_priority_max <= self_train_max <= 1, "
                                 f"got {self.fixed_thresholds}.")


@dataclass
class Routing:
    """One decision per problem, as columns ([N] each), and the thresholds that produced them."""

    problem_ids: list
    model_ids: list
    routes: np.ndarray  # [N] route names
    uncertainty: np.ndarray  # [N]
    value: np.ndarray  # [N] annotate rank: u lifted by pivot richness (probes placed among the picks)
    thresholds: dict = field(default_factory=dict)

    @property
    def decisions(self) -> list[dict]:
        """[N] {problem_id, model_id, route, uncertainty, value} dicts (for small pools and tests)."""
        return [{"problem_id": pid, "model_id": mid, "route": name, "uncertainty": ui, "value": vi}
                for pid, mid, name, ui, vi in zip(self.problem_ids, self.model_ids, self.routes.tolist(),
                                                  self.uncertainty.tolist(), self.value.tolist())]

    def counts(self) -> dict[str, int]:
        out = {route: 0 for route in ROUTES}
        names, counts = np.unique(self.routes.astype(str), return_counts=True)
        out.update({str(name): int(count) for name, count in zip(names, counts)})
        return out


def route_pool(rows, uncertainty: np.ndarray, *, budget_remaining: int | None,
               config: RouterConfig = RouterConfig(), exclude: set | None = None) -> Routing:
    """Route every row (feature dicts or a FeatureTable). `budget_remaining` None means no budget
    is set: every candidate is annotate."""
    table = FeatureTable.from_rows(rows, ROUTING_COLUMNS)
    exclude = exclude or set()
    n = len(table)
    u = np.asarray(uncertainty, dtype=np.float64)  # [N]
    if u.shape != (n,):
        raise ValueError(f"{n} rows but uncertainty of shape {u.shape}.")
    if budget_remaining is not None and int(budget_remaining) < 0:
        raise ValueError("budget_remaining must not be negative.")
    if table.majority_answers is None or table.model_ids is None:
        raise ValueError("Routing needs each row's model_id and majority_answer.")
    density = np.nan_to_num(table.column("pivot_density"))  # [N], missing -> 0
    value = u * (1.0 + config.pivot_value_weight * pool_percentiles(density))  # [N]
    has_majority = np.array([a is not None for a in table.majority_answers], bool)  # [N]
    unanimous = has_majority & (np.nan_to_num(table.column("vote_share")) >= 1.0)  # [N]
    open_ = np.ones(n, bool) if not exclude else np.array([pid not in exclude for pid in table.ids], bool)  # [N]
    capacity = int(open_.sum()) if budget_remaining is None else int(budget_remaining)
    target = float(config.target_precision)

    route = np.full(n, "deferred", dtype=object)
    route[~open_] = "annotate"
    if not config.three_way:  # ablation: the top of the open pool to humans, every other majority self-trained
        low = np.zeros(n, bool)
        self_train = open_ & has_majority
        candidates = np.flatnonzero(open_)
    else:
        if config.fixed_thresholds is not None:
            low_max, self_train_max = config.fixed_thresholds
            low = open_ & unanimous & (u <= low_max)
            self_train = open_ & has_majority & ~unanimous & (u <= self_train_max)
        else:
            low = open_ & unanimous & (u <= 1.0 - target)
            self_train = _precision_band(u, open_ & has_majority & ~unanimous & (u < MAX_PSEUDO_LABEL_ERROR),
                                         target)
        candidates = np.flatnonzero(open_ & ~low & ~self_train)
    n_probes = int(capacity * config.explore_share) if capacity < open_.sum() else 0
    annotate = _top_by_value(candidates, value, capacity - n_probes)
    spilled = 0
    if config.three_way and config.spill_over and config.fixed_thresholds is None:
        for band in (self_train, low):
            left = capacity - n_probes - annotate.size
            if left <= 0:
                break
            extra = _top_by_value(np.flatnonzero(band), value, left)
            band[extra] = False
            annotate = np.concatenate([annotate, extra])
            spilled += extra.size
    probes = _probes(table.ids, open_, annotate, min(n_probes, capacity - annotate.size))
    if probes.size:
        value = value.copy()
        value[probes] = _interleaved_values(value[annotate], probes.size)
        for band in (low, self_train):
            band[probes] = False
        annotate = np.concatenate([annotate, probes])
    route[low] = "low_priority"
    route[self_train] = "self_train"
    route[annotate] = "annotate"  # two-way: annotate wins over self_train for the picks

    self_train_final = open_ & (route == "self_train")
    low_final = route == "low_priority"
    thresholds = {
        "target_precision": target,
        "low_priority_max": _max_or_none(u[low_final]),
        "self_train_max": _max_or_none(u[self_train_final]),
        "annotate_min": _min_or_none(u[annotate]),
        "annotate_min_value": _min_or_none(value[annotate]),
        "annotate_capacity": None if budget_remaining is None else capacity,
        "spilled_into_annotate": spilled,
        "calibration_probes": int(probes.size),
        "estimated_self_train_precision": _mean_or_none(1.0 - u[self_train_final]),
        "estimated_low_priority_precision": _mean_or_none(1.0 - u[low_final]),
        "three_way": config.three_way,
        "fixed_thresholds": list(config.fixed_thresholds) if config.fixed_thresholds else None,
        "pivot_value_weight": config.pivot_value_weight,
    }
    return Routing(list(table.ids), list(table.model_ids), route, u, value, thresholds)


def _precision_band(u: np.ndarray, mask: np.ndarray, target: float) -> np.ndarray:
    """[N] bool: the longest most-certain-first run of `mask` with mean(1 - u) >= target."""
    band = np.zeros(u.shape, bool)
    members = np.flatnonzero(mask)
    if members.size == 0:
        return band
    ordered = members[np.argsort(u[members], kind="stable")]  # [M] most certain first
    precision = np.cumsum(1.0 - u[ordered]) / np.arange(1, ordered.size + 1)  # [M] non-increasing
    keep = int(np.count_nonzero(precision >= target))
    band[ordered[:keep]] = True
    return band


def probe_keys(problem_ids) -> np.ndarray:
    """[N] stable pseudo-random numbers in [0, 1), one per problem id (CRC-32 of its UTF-8 bytes):
    probes are the smallest keys. Stable across processes, unlike hash(); ~10 ms per 100k ids."""
    crc = zlib.crc32
    return np.array([crc(str(pid).encode("utf-8")) for pid in problem_ids], dtype=np.float64) / 2.0 ** 32


def _probes(problem_ids: list, open_: np.ndarray, taken: np.ndarray, k: int) -> np.ndarray:
    """Indexes of `k` open problems not yet taken, by smallest probe key (a uniform sample)."""
    free = open_.copy()
    free[taken] = False
    members = np.flatnonzero(free)
    if k <= 0 or members.size == 0:
        return np.zeros(0, dtype=np.int64)
    keys = probe_keys([problem_ids[i] for i in members])  # [M]
    return members[np.argsort(keys, kind="stable")[:k]]


def _interleaved_values(picked: np.ndarray, n: int) -> np.ndarray:
    """[n] values that place n probes evenly among the picks in a highest-value-first queue."""
    if picked.size == 0:
        return np.zeros(n)
    ordered = np.sort(picked)[::-1]  # [P] highest first
    spacing = (ordered.size + n) / n  # queue positions per probe
    positions = np.minimum((np.arange(1, n + 1) * spacing).astype(int) - 1, ordered.size - 1)  # [n]
    return ordered[positions] - 1e-9  # just below the pick it follows


def _top_by_value(indexes: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    if k <= 0 or indexes.size == 0:
        return np.zeros(0, dtype=np.int64)
    ranked = indexes[np.argsort(-value[indexes], kind="stable")]
    return ranked[:k]


def _max_or_none(x: np.ndarray) -> float | None:
    return float(x.max()) if x.size else None


def _min_or_none(x: np.ndarray) -> float | None:
    return float(x.min()) if x.size else None


def _mean_or_none(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None
