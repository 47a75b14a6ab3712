"""Three-way routing with thresholds derived from the budget, the pool, the posterior and the labels.

Input: feature rows, their uncertainties u = P(majority answer wrong), the remaining label budget,
a pseudo-label precision target with its risk delta, and the labels in force. Output: one decision
per problem (annotate / self_train / self_train_pending / low_priority / deferred) and the
thresholds and certificates that produced them. It does not estimate uncertainty or write to the
database.

How the bands are derived (none is a constant):
- self_train candidates: problems with a split but existing majority, most certain first, the
  longest run whose *estimated* precision mean(1 - u) stays >= `target_precision`, never one whose
  majority is likelier wrong than right (u >= MAX_PSEUDO_LABEL_ERROR). An estimate is not enough
  (measured: estimated 0.85, real 0.125 on an unseen pool), so the band is *certified*
  (certify.certify_band): the largest of a few nested prefixes whose labels (random calibration
  probes drawn from the band, plus labels that fall in it) give a one-sided Clopper-Pearson lower
  bound >= target at risk delta, Bonferroni-corrected for the prefixes tried. The certified prefix
  is `self_train` (its majority answers become pseudo-labels); the rest waits as
  `self_train_pending` until labels open it, and the thresholds say how many probe labels would.
- low_priority: problems where every sample agrees and whose own error is low, u <= 1 - target
  (in GRPO a unanimous group has zero advantage, so these teach nothing now). The same bound is
  computed for them; `low_priority_verified` says whether it holds (the route stays, since nothing
  is trained on it, but the claim "error <= 1 - target" is shown as unverified until it does).
- calibration probes: as many labels as certification still needs (if the precision seen so far
  holds), drawn uniformly (by a stable hash) from the open candidates of a band, all of them or
  none. A probe is a label not spent on a likely wrong majority, so none are queued (and the
  certificate's `probes_held` says why) when
  - the band could not open at the precision its labels show;
  - it could not repay them: it holds fewer than twice the probes still needed (each probe should
    unlock at least one pseudo-label; measured: probes into bands of 11-17 problems, which need
    >= 23 labels to open at target 0.85, cost 3-7 caught wrong majorities per budget on the demo
    pools, and never opened);
  - the budget cannot finish them ("budget"): more are needed than `explore_share` of the annotate
    capacity left, so the band could not open before the budget ends (measured on the synthetic
    pool: 6-12 such probes at the 5 % and 10 % budgets, and the band never opened);
  - low_priority only ("annotate_queue"): verifying it adds no training example, so its probes take
    only capacity the annotate candidates leave unused (measured on the synthetic pool: 23 probes a
    round verifying low_priority left 22 wrong majorities caught at the 20 % budget instead of 34).
- annotate: everything else (split votes beyond the band, unanimous answers that are probably
  wrong, no answer at all), ranked by value = u, pivot-richer first among equal u. The posterior
  already weighs the pivot signals by what the labels show; a fixed lift on top ranked problems by
  a signal beyond its evidence (measured: a 25 % lift caught fewer wrong majorities than u alone on
  all three evaluation pools; `pivot_value_weight` keeps it as an option). The top of the capacity
  left after the probes goes to humans, the rest is `deferred`. A budget larger than this set is
  spent on the pending band, then the self_train band, then low_priority (`spill_over`).
- hysteresis: a band's candidate count (from the estimate) stays at the previous router
  version's while the new estimate is within HYSTERESIS_SHARE of it, and then moves only by the
  excess (backlash); the annotate queue and each band keep an incumbent unless a newcomer beats it
  by RANK_HYSTERESIS (so the posterior's drift reorders without moving members); and per new label
  a band's count moves, and a band or the queue takes in, at most max(MIN_STEP_PER_LABEL,
  BAND_STEP_PER_LABEL of the pool) problems. The posterior's drift with each label then does not
  move problems back and forth across an edge, nor thousands at once, while a small pool still
  follows what its labels teach. Certification is unaffected: it is computed on the band as routed.
- no budget set: nobody can label yet, so annotate is capped at DEFAULT_BUDGET_SHARE of the open
  pool (the thresholds say so), the rest deferred; set a budget to change it.
Labelled problems (`exclude`) keep the `annotate` route and are not counted against the budget;
they still count as evidence for the band they fall in.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from .certify import DEFAULT_DELTA, BandCertificate, certify_band
from .records import ROUTING_COLUMNS, FeatureTable
from .uncertainty import pool_percentiles
from .vocab import ROUTES

PIVOT_VALUE_WEIGHT = 0.0  # how much pivot richness lifts an uncertain problem's value beyond u (0: u alone)
PIVOT_TIEBREAK = 1e-6  # among equal u, pivot-richer problems rank first (far below any real difference of u)
HASH_TIEBREAK = 1e-9  # then a stable pseudo-random order (probe_keys), not the order rows happen to come in
PROBE_REPAY = 2.0  # probes are queued only while a band holds at least this many times the probes still needed
MAX_PSEUDO_LABEL_ERROR = 0.5  # never self-train on a majority answer we think is likelier wrong than right
EXPLORE_SHARE = 0.5  # at most this share of the annotate capacity goes to calibration probes (the count
# itself comes from what certification needs): the other half keeps the uncertain-first promise
DEFAULT_TARGET_PRECISION = 0.85  # the self_train band's precision target unless a lead sets another
MIN_TARGET_PRECISION = 1.0 - MAX_PSEUDO_LABEL_ERROR  # a lead's target below this would admit majorities
# likelier wrong than right (the router never self-trains on those anyway, so such a target means nothing)
FIXED_THRESHOLDS = (0.2, 0.5)  # (low_priority_max, self_train_max) of the fixed-threshold ablation:
# a hand-set pair (unanimous and under 0.2 is easy; under 0.5 the majority is likelier right than wrong)
HYSTERESIS_SHARE = 0.05  # a band's candidate count trails the estimate's by up to 5 % (backlash): it moves
# only by as much as the estimate leaves that dead zone
BAND_STEP_PER_LABEL = 0.001  # a band's candidate count moves by at most this share of the pool per label
# that arrived since the previous router version (100 problems per label at 100k): one label carries
# little information, so it may not swing thousands of problems between waiting and routed
MIN_STEP_PER_LABEL = 10  # ... but at least this many problems per label: on a pool of 300, 0.1 % would
# let the queue take in 0.3 problems per label, and the labels' lesson would never reach the picks
RANK_HYSTERESIS = 0.1  # a problem in the annotate queue keeps its place unless a newcomer's value is 10 %
# higher, and a band member keeps its place unless a newcomer's u is 10 % lower: the drift of u with
# each label then does not swap problems at the edges
DEFAULT_BUDGET_SHARE = 0.1  # with no budget set, annotate takes at most 10 % of the open pool: the
# middle of the budgets the evaluation measures (5-50 %), so a new pool shows all routes


@dataclass
class RouterConfig:
    target_precision: float = DEFAULT_TARGET_PRECISION  # pseudo-label precision the self_train band must be certified at
    delta: float = DEFAULT_DELTA  # risk that a certified band is below target (a lead may set it)
    pivot_value_weight: float = PIVOT_VALUE_WEIGHT  # > 0: lift pivot-rich problems' value (an ablation)
    pivot_tiebreak: bool = True  # among equal u, pivot-richer first (off for the single-signal baselines)
    three_way: bool = True  # False: annotate vs everything else (an ablation)
    fixed_thresholds: tuple | None = None  # (low_priority_max, self_train_max): an ablation, not the default
    spill_over: bool = True  # spend a budget larger than the uncertain set on the waiting bands
    explore_share: float = EXPLORE_SHARE  # most of the annotate capacity that calibration probes may take
    certify: bool = True  # False: self-train on the estimate alone (the uncertified ablation)

    def __post_init__(self):
        if not 0.0 < float(self.target_precision) < 1.0:
            raise ValueError(f"target_precision must be in (0, 1), got {self.target_precision}.")
        if not 0.0 < float(self.delta) < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}.")
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
    value: np.ndarray  # [N] annotate rank: u, pivot-richer first among ties (probes placed among the picks)
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
               config: RouterConfig = RouterConfig(), exclude: set | None = None,
               outcomes: dict | None = None, previous: dict | None = None,
               previous_routes: dict | None = None) -> Routing:
    """Route every row (feature dicts or a FeatureTable).

    `budget_remaining` None: no budget is set (annotate capped at DEFAULT_BUDGET_SHARE of the open
    pool). `outcomes`: {problem_id: 1 majority wrong / 0 right} of the labels in force, the
    evidence that certifies the bands. `previous`: the last router version's thresholds, and
    `previous_routes` {problem_id: route} the routes in force (both for hysteresis).
    """
    table = FeatureTable.from_rows(rows, ROUTING_COLUMNS)
    exclude = exclude or set()
    outcomes = outcomes or {}
    previous = previous or {}
    n = len(table)
    u = np.asarray(uncertainty, dtype=np.float64)  # [N]
    if u.shape != (n,):
        raise ValueError(f"{n} rows but uncertainty of shape {u.shape}.")
    if budget_remaining is not None and int(budget_remaining) < 0:
        raise ValueError("budget_remaining must not be negative.")
    if table.majority_answers is None or table.model_ids is None:
        raise ValueError("Routing needs each row's model_id and majority_answer.")
    density = np.nan_to_num(table.column("pivot_density"))  # [N], missing -> 0
    richness = pool_percentiles(density)  # [N] in [0, 1]
    value = (u * (1.0 + config.pivot_value_weight * richness) + PIVOT_TIEBREAK * config.pivot_tiebreak * richness
             + HASH_TIEBREAK * probe_keys(table.ids))  # [N]
    has_majority = np.array([a is not None for a in table.majority_answers], bool)  # [N]
    unanimous = has_majority & (np.nan_to_num(table.column("vote_share")) >= 1.0)  # [N]
    open_ = np.ones(n, bool) if not exclude else np.array([pid not in exclude for pid in table.ids], bool)  # [N]
    n_open = int(open_.sum())
    if budget_remaining is None:
        capacity = min(n_open, math.ceil(DEFAULT_BUDGET_SHARE * n_open))
        budget_note = (f"no budget set: annotate capped at {DEFAULT_BUDGET_SHARE:.0%} of the open pool "
                       f"({capacity} problems), the rest deferred; set a budget to change it")
    else:
        capacity = int(budget_remaining)
        budget_note = None
    target = float(config.target_precision)
    # evidence: 1 = labelled and the majority was right, 0 = labelled and wrong, -1 = unlabelled
    evidence = np.full(n, -1, dtype=np.int64)  # [N]
    if outcomes:
        for i, pid in enumerate(table.ids):
            if pid in outcomes:
                evidence[i] = 1 - int(outcomes[pid])

    new_labels = max(len(outcomes) - int(previous.get("n_labels") or 0), 1)
    max_step = step_per_label(n) * new_labels  # problems a band or the queue may take in this pass
    was = _previous_route(table.ids, previous_routes)  # [N] route in force, "" where none
    route = np.full(n, "deferred", dtype=object)
    route[~open_] = "annotate"
    pending = np.zeros(n, bool)
    certificates: dict[str, BandCertificate] = {}
    band_sizes = {}
    held: dict[str, str | None] = {}  # band -> why its probes are not queued (None: they are, or none needed)
    probe_sets: list[np.ndarray] = []
    if not config.three_way:  # ablation: the top of the open pool to humans, every other majority self-trained
        low = np.zeros(n, bool)
        self_train = open_ & has_majority
        candidates = np.flatnonzero(open_)
    elif config.fixed_thresholds is not None:
        low_max, self_train_max = config.fixed_thresholds
        low = open_ & unanimous & (u <= low_max)
        self_train = open_ & has_majority & ~unanimous & (u <= self_train_max)
        candidates = np.flatnonzero(open_ & ~low & ~self_train)
    else:
        split = has_majority & ~unanimous & (u < MAX_PSEUDO_LABEL_ERROR)
        band_s, band_sizes["self_train"] = _estimated_band(
            u, split, target, previous.get("self_train_candidates"), max_step=max_step,
            incumbent=(was == "self_train") | (was == "self_train_pending"))
        band_l, band_sizes["low_priority"] = _estimated_band(
            u, unanimous & (u <= 1.0 - target), None, previous.get("low_priority_candidates"),
            max_step=max_step, incumbent=was == "low_priority", keep=unanimous & (was == "low_priority"))
        self_train, low = np.zeros(n, bool), np.zeros(n, bool)
        low[band_l] = True
        low &= open_
        for name, band in (("self_train", band_s), ("low_priority", band_l)):
            certificates[name] = certify_band(evidence[band], target=target, delta=config.delta,
                                              estimated=1.0 - u[band])
        if config.certify:
            certified = band_s[:certificates["self_train"].certified]
            self_train[certified] = True
            pending[band_s] = True
            pending[certified] = False
        else:
            self_train[band_s] = True
        self_train &= open_
        pending &= open_
        candidates = np.flatnonzero(open_ & ~low & ~self_train & ~pending)
        capacity_for_probes = min(capacity, int(capacity * config.explore_share)) if capacity < n_open else 0
        spare = max(capacity - candidates.size, 0)  # capacity the annotate candidates cannot use
        for name, band in (("self_train", band_s), ("low_priority", band_l)):
            cert = certificates[name]
            members = band[open_[band]]
            wanted = cert.probes_to_go or 0
            used = sum(p.size for p in probe_sets)
            room = capacity_for_probes - used
            if name == "low_priority":  # verifying it buys no training example: only labels nothing else needs
                room = min(room, spare - used)
            held[name] = _probes_held(wanted, members.size, room, name)
            probe_sets.append(_probes(table.ids, members, wanted if wanted and held[name] is None else 0))
    probes = np.concatenate(probe_sets) if probe_sets else np.zeros(0, dtype=np.int64)
    if previous_routes:  # hysteresis on the annotate edge: a newcomer must beat an incumbent clearly,
        # and at most max_step newcomers join the queue per pass
        was_annotate = was == "annotate"  # [N]
        rank_value = value * np.where(was_annotate, 1.0 + RANK_HYSTERESIS, 1.0)
        ranked = candidates[np.argsort(-rank_value[candidates], kind="stable")]
        annotate = _stable_top(ranked, capacity - probes.size, was_annotate[ranked], max_step)
    else:
        annotate = _top_by_value(candidates, value, capacity - probes.size)
    spilled = 0
    if config.three_way and config.spill_over and config.fixed_thresholds is None:
        for band in (pending, self_train, low):
            band[probes] = False
            left = capacity - probes.size - annotate.size
            if left <= 0:
                break
            extra = _top_by_value(np.flatnonzero(band), value, left)
            band[extra] = False
            annotate = np.concatenate([annotate, extra])
            spilled += extra.size
    if probes.size:
        value = value.copy()
        value[probes] = _interleaved_values(value[annotate], probes.size)
        for band in (low, self_train, pending):
            band[probes] = False
        annotate = np.concatenate([annotate, probes])
    route[low] = "low_priority"
    route[self_train] = "self_train"
    route[pending] = "self_train_pending"
    route[annotate] = "annotate"  # two-way: annotate wins over self_train for the picks

    self_train_final = open_ & (route == "self_train")
    low_final = route == "low_priority"
    cert_s, cert_l = certificates.get("self_train"), certificates.get("low_priority")
    thresholds = {
        "target_precision": target,
        "delta": float(config.delta),
        "low_priority_max": _max_or_none(u[low_final]),
        "self_train_max": _max_or_none(u[self_train_final]),
        "annotate_min": _min_or_none(u[annotate]),
        "annotate_min_value": _min_or_none(value[annotate]),
        "annotate_capacity": None if budget_remaining is None else capacity,
        "default_capacity": capacity if budget_remaining is None else None,
        "budget_note": budget_note,
        "spilled_into_annotate": spilled,
        "calibration_probes": int(probes.size),
        "estimated_self_train_precision": _mean_or_none(1.0 - u[self_train_final]),
        "estimated_pending_precision": _mean_or_none(1.0 - u[open_ & (route == "self_train_pending")]),
        "estimated_low_priority_precision": _mean_or_none(1.0 - u[low_final]),
        "n_labels": len(outcomes),
        "self_train_candidates": band_sizes.get("self_train"),
        "low_priority_candidates": band_sizes.get("low_priority"),
        "self_train_certificate": _certificate(cert_s, held.get("self_train")),
        "low_priority_certificate": _certificate(cert_l, held.get("low_priority")),
        "self_train_open": bool(cert_s.open) if cert_s else None,
        "low_priority_verified": bool(cert_l.open and cert_l.certified == cert_l.candidates) if cert_l else None,
        "certified": bool(config.certify and config.three_way and config.fixed_thresholds is None),
        "three_way": config.three_way,
        "fixed_thresholds": list(config.fixed_thresholds) if config.fixed_thresholds else None,
        "pivot_value_weight": config.pivot_value_weight,
    }
    return Routing(list(table.ids), list(table.model_ids), route, u, value, thresholds)


def _probes_held(wanted: int, members: int, room: int, band: str) -> str | None:
    """Why a band's `wanted` probes are not queued, or None (queued, or none wanted): "band_too_small",
    "budget" or "annotate_queue" (low_priority only), as the module docstring explains. `room`: the
    probe capacity left for this band."""
    if not wanted:
        return None
    if members < PROBE_REPAY * wanted:
        return "band_too_small"
    if wanted > room:
        return "annotate_queue" if band == "low_priority" else "budget"
    return None


def probe_plan(certificate: dict, *, goal: str = "open") -> str:
    """What a band's certificate says about probes, in words (the app and `explain` share it).
    `goal`: what the probes would do ("open" the self-train band, "verify" low_priority)."""
    more, held = certificate.get("probes_to_go"), certificate.get("probes_held")
    if held is None and certificate.get("probes_repay") is False:  # recorded by an older version
        held = "band_too_small"
    if more is None:
        return "the labels so far say it would not reach the target"
    if held == "band_too_small":
        return (f"{more} probe labels would {goal} it, too many for its {certificate['candidates']} problems, "
                f"so none are queued" + (" (they wait, or are labelled directly)" if goal == "open" else ""))
    if held == "budget":
        return (f"{more} probe labels would {goal} it, more than the budget left can spare, so none are queued "
                f"(a larger budget would queue them)")
    if held == "annotate_queue":
        return (f"{more} probe labels would {goal} it; they wait until the annotate queue leaves budget "
                f"unused (verifying it adds no training example)")
    return f"{more} probe labels to go"


def _certificate(cert: BandCertificate | None, held: str | None) -> dict | None:
    """The certificate as recorded, with why its probes are not queued (`probes_held`, None when they
    are) and `probes_repay` (False when the band is too small for them to pay, as older versions wrote)."""
    if cert is None:
        return None
    queued = bool(cert.probes_to_go) and held is None
    return {**cert.as_dict(), "probes_held": held,
            "probes_repay": None if not cert.probes_to_go else held != "band_too_small", "probes_queued": queued}


def step_per_label(n: int) -> int:
    """Problems a band or the annotate queue may take in per new label, in a pool of n."""
    return max(int(BAND_STEP_PER_LABEL * n), MIN_STEP_PER_LABEL)


def _previous_route(ids: list, previous_routes: dict | None) -> np.ndarray:
    """[N] the route in force for each id ("" where none)."""
    if not previous_routes:
        return np.full(len(ids), "", dtype=object)
    return np.array([previous_routes.get(pid, "") for pid in ids], dtype=object)


def _estimated_band(u: np.ndarray, mask: np.ndarray, target: float | None,
                    previous_size: int | None, *, max_step: int | None = None,
                    incumbent: np.ndarray | None = None,
                    keep: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """([K] indexes most certain first, K): the members of `mask` sorted by u, cut to the longest
    run with mean(1 - u) >= target (all of them when target is None); with `previous_size`, the
    count stays within HYSTERESIS_SHARE of the estimate but as close to the previous one as that
    allows, and moves by at most `max_step` from it.

    `incumbent` ([N] bool, the problems in the band now) sort as if their u were RANK_HYSTERESIS
    lower: a newcomer takes an incumbent's place only when it is clearly more certain, so the
    posterior's drift does not swap members at the edge. `keep` ([N] bool): incumbents that may stay
    although `mask` no longer admits them; they fill the count left by the step limit, least
    certain leaving first, so a jump of the base rate drains a band at most `max_step` per pass."""
    members = np.flatnonzero(mask)
    if target is None:
        size = members.size
    else:
        by_u = np.sort(u[members], kind="stable")  # [M] most certain first
        precision = np.cumsum(1.0 - by_u) / np.arange(1, by_u.size + 1)  # [M] non-increasing
        size = int(np.count_nonzero(precision >= target))
    if keep is not None:
        members = np.flatnonzero(mask | keep)
    key = u[members] if incumbent is None else u[members] * np.where(incumbent[members], 1.0 - RANK_HYSTERESIS, 1.0)
    ordered = members[np.argsort(key, kind="stable")]  # [M'] most certain first (incumbents favoured)
    if previous_size is not None:  # backlash: follow the estimate only as far as it leaves the dead zone
        slack = int(HYSTERESIS_SHARE * size)
        size = int(np.clip(int(previous_size), size - slack, size + slack))
        if max_step is not None:  # and by at most max_step from where it was
            size = int(np.clip(size, int(previous_size) - max_step, int(previous_size) + max_step))
        size = min(size, ordered.size)
        if incumbent is not None:
            return _stable_top(ordered, size, incumbent[ordered], max_step), size
    return ordered[:size], size


def _stable_top(ordered: np.ndarray, size: int, incumbent: np.ndarray, max_new: int | None) -> np.ndarray:
    """[<= size] of `ordered` (best first; `incumbent` [M] aligned with it): its top `size`, except
    that at most `max_new` newcomers enter per pass. The places they leave go to the best incumbents
    below the top, and only then to more newcomers. The order stays best first."""
    size = max(int(size), 0)
    if max_new is None or size == 0:
        return ordered[:size]
    newcomer_positions = np.flatnonzero(~incumbent[:size])
    if newcomer_positions.size <= max_new:
        return ordered[:size]
    chosen = np.zeros(ordered.size, bool)
    chosen[newcomer_positions[:max_new]] = True
    incumbents = np.flatnonzero(incumbent)[:size - max_new]  # best incumbents, inside the top or below it
    chosen[incumbents] = True
    short = size - int(chosen.sum())
    if short > 0:  # too few incumbents: more newcomers after all
        chosen[np.flatnonzero(~chosen & ~incumbent)[:short]] = True
    return ordered[chosen]


def probe_keys(problem_ids) -> np.ndarray:
    """[N] stable pseudo-random numbers in [0, 1), one per problem id (CRC-32 of its UTF-8 bytes):
    probes are the smallest keys. Stable across processes, unlike hash(); ~10 ms per 100k ids."""
    crc = zlib.crc32
    return np.array([crc(str(pid).encode("utf-8")) for pid in problem_ids], dtype=np.float64) / 2.0 ** 32


def _probes(problem_ids: list, members: np.ndarray, k: int) -> np.ndarray:
    """Indexes of `k` of `members` by smallest probe key: a uniform sample, stable across runs."""
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
