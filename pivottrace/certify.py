"""Verified precision of a routing band: one-sided Clopper-Pearson bounds with a search correction.

Input: a band's candidate problems ordered most certain first, the labels that fall among them
(1 = the majority answer was right), a precision target and a risk delta. Output: how much of the
band is certified, i.e. the largest of a few nested prefixes whose labelled precision has a
one-sided lower confidence bound >= target, and how many more random probe labels would open it.

The guarantee. For one fixed band, if its labels are a uniform random sample of it, the
Clopper-Pearson bound (scipy.stats.beta) is below the band's true precision with probability at
least 1 - delta. The router searches CANDIDATE_EDGES nested prefixes, so each is tested at
delta / CANDIDATE_EDGES (Bonferroni): with probability >= 1 - delta no certified prefix has a
precision below target. Random calibration probes are the uniform sample; labels that fell in the
band because their value ranked them high are its *least* certain members, which if anything
pulls the bound down. The prefixes are ordered by the current posterior, which has seen the same
labels: a mild dependence the bound does not account for (stated in the report).
It does not pick problems, fit anything or touch the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

DEFAULT_DELTA = 0.1  # risk of certifying a band whose precision is below target (a lead may change it)
CANDIDATE_EDGES = 4  # nested prefixes tried: 1/4, 1/2, 3/4 and all of the band (Bonferroni over 4).
# More edges fit the band closer but cost each test delta / edges: with all probes right, 4 edges
# need 23 labels at target 0.85, 10 edges 29
MAX_PROBES_TO_GO = 10_000  # "never" beyond this: the observed precision is too close to the target


def clopper_pearson_lower(right: int, n: int, delta: float) -> float:
    """One-sided lower (1 - delta) confidence bound on a binomial proportion; 0 with no labels."""
    if n <= 0 or right <= 0:
        return 0.0
    return float(beta.ppf(delta, right, n - right + 1))


def clopper_pearson_upper(right: int, n: int, delta: float) -> float:
    """One-sided upper (1 - delta) confidence bound; 1 with no labels."""
    if n <= 0 or right >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, right + 1, n - right))


def probes_to_open(right: int, n: int, *, target: float, delta: float, assumed: float | None = None) -> int | None:
    """More labels needed before the bound reaches `target`, if the precision seen so far holds
    (`right / n`; `assumed` when there are no labels yet). None when it never would (<= target)."""
    precision = right / n if n else assumed
    if precision is None or precision <= target:
        return None
    if clopper_pearson_lower(right, n, delta) >= target:
        return 0
    # all-right labels give the bound delta^(1/m): a lower limit on the total m, then step up
    m = max(n + 1, math.ceil(math.log(delta) / math.log(target)))
    while m - n <= MAX_PROBES_TO_GO:
        if clopper_pearson_lower(int(math.floor(precision * m + 1e-9)), m, delta) >= target:
            return m - n
        m += max(1, m // 20)
    return None


@dataclass
class BandCertificate:
    """What the labels say about one band (a prefix of its candidates, most certain first)."""

    candidates: int  # problems in the band as estimated (labelled ones included)
    certified: int  # leading candidates certified (0 = closed)
    labels: int  # labels among the certified prefix (or among all candidates when closed)
    right: int  # of which the majority answer was right
    precision: float | None  # measured: right / labels
    lower_bound: float  # Clopper-Pearson lower bound at delta / CANDIDATE_EDGES (0 with no labels)
    upper_bound: float  # the matching upper bound
    probes_to_go: int | None  # more random labels that would open a larger prefix; None = none would at
    # the precision seen so far; 0 = all of it is open
    target: float
    delta: float

    @property
    def open(self) -> bool:
        return self.certified > 0

    def as_dict(self) -> dict:
        return {"candidates": self.candidates, "certified": self.certified, "labels": self.labels,
                "right": self.right, "precision": self.precision, "lower_bound": round(self.lower_bound, 4),
                "upper_bound": round(self.upper_bound, 4), "probes_to_go": self.probes_to_go,
                "target": self.target, "delta": self.delta, "open": self.open}


def certify_band(labelled_right: np.ndarray, *, target: float, delta: float = DEFAULT_DELTA,
                 estimated: np.ndarray | None = None, edges: int = CANDIDATE_EDGES) -> BandCertificate:
    """Certify the largest nested prefix of a band.

    `labelled_right`: [C] per candidate, most certain first: 1 labelled and right, 0 labelled and
    wrong, -1 unlabelled. Prefixes of ceil(C * i / edges) candidates, i = 1..edges, are each tested
    at delta / edges. probes_to_go is the fewest more labels, drawn uniformly over the whole band (so
    a prefix holding a share f of it receives f of them), that would open one more prefix if the
    precision seen so far in it holds (a prefix no label has reached yet: if they all come back
    right, the least that could open it). `estimated` ([C] 1 - u) is accepted for the record only.
    """
    status = np.asarray(labelled_right, dtype=np.int64)  # [C]
    c = int(status.size)
    level = delta / edges
    sizes = sorted({max(1, math.ceil(c * i / edges)) for i in range(1, edges + 1)}) if c else []
    is_label = status >= 0  # [C]
    labels_upto = np.cumsum(is_label)  # [C]
    right_upto = np.cumsum(status == 1)  # [C]
    certified = 0
    to_go = None
    for size in sizes:
        n, k = int(labels_upto[size - 1]), int(right_upto[size - 1])
        if n and clopper_pearson_lower(k, n, level) >= target:
            certified = size
            continue
        # before any label reaches a prefix, plan for the fewest labels that could open it (all
        # right): its estimated precision is what cannot be trusted, and the first labels correct the plan
        more = probes_to_open(k, n, target=target, delta=level, assumed=1.0)
        if more is not None:
            band_wide = math.ceil(more * c / size)  # uniform over the band: this prefix gets size / c of them
            to_go = band_wide if to_go is None else min(to_go, band_wide)
    if certified == c and c:
        to_go = 0
    reported = certified or c
    n = int(labels_upto[reported - 1]) if reported else 0
    k = int(right_upto[reported - 1]) if reported else 0
    return BandCertificate(candidates=c, certified=certified, labels=n, right=k,
                           precision=(k / n) if n else None, lower_bound=clopper_pearson_lower(k, n, level),
                           upper_bound=clopper_pearson_upper(k, n, level), probes_to_go=to_go,
                           target=float(target), delta=float(delta))
