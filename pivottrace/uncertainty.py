"""Features -> the cold-start estimate of P(the model's majority answer is wrong), and its helpers.

- `ColdStartPrior`: no labels needed. The vote anchors it (1 - vote share is a rough probability
  of error by itself); a rank-based combination of the other signals moves it up or down.
- `EstimatorConfig`: which signals an estimator may read (the full set, or a baseline's or an
  ablation's subset), whether labels are reweighted, and the simpler models (confidence only,
  vote share only) the labels may prefer on strong evidence.
- `covariate_shift_weights`: 1 / P(labelled | x), so labels picked by the router stand for the pool.
The estimate that learns from labels is posterior.py's Bayesian update of this prior. `rows` may be
feature dicts or a `FeatureTable` (built once, so a pool of 10,000 is converted once per
recalibration). It does not fit on labels, route, read gold answers or touch the database.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.stats import rankdata

from .records import NUMERIC_FEATURES, FeatureTable

# Signals read from the attention statistics and the pivots; "no attention" ablations drop them.
ATTENTION_FEATURES = ("pivot_density", "max_pivot_score", "mean_entropy", "mean_temporal",
                      "mean_consistency")

# Cold-start prior. The anchor is the vote: p0 = VOTE_FLOOR + (1 - 2 VOTE_FLOOR) * (1 - vote_share).
# With K + 1 = 5 votes: unanimous 0.05, 4 of 5 0.23, 3 of 5 0.41, no answer at all 0.95.
VOTE_FLOOR = 0.05  # a unanimous vote still leaves this much doubt: samples of one model share its blind spots
# The other signals, each as a pool percentile oriented so that higher = more likely wrong, are
# averaged with these weights into a in [0, 1] (0.5 = typical of the pool); the prior is then
# logit(p) = logit(p0) + ADJUST_LOGITS * (2a - 1). Confidence comes first (the best label-free
# predictor after agreement), verification signals next, attention and pivots add the rest.
PRIOR_WEIGHTS = {
    "mean_logprob": (-1, 0.20),  # low token confidence
    "min_logprob": (-1, 0.05),  # one very unlikely token
    "answer_prob": (-1, 0.10),  # the final answer's own tokens were unlikely
    "answer_found": (-1, 0.10),  # the greedy chain gave no parsable final answer
    "greedy_agrees": (-1, 0.10),  # the greedy chain disagrees with the majority
    "length": (+1, 0.10),  # a chain that runs long without settling (on the 300 real demo traces,
    # length was the strongest single signal, AUROC 0.66, and the attention signals mostly track it)
    "vote_entropy": (+1, 0.05),  # the minority votes are split, not one rival answer
    "pivot_density": (+1, 0.15),  # many pivots per 100 tokens
    "max_pivot_score": (+1, 0.05),
    "mean_entropy": (+1, 0.05),  # dispersed attention
    "mean_temporal": (+1, 0.05),  # attention keeps jumping between segments
    "mean_consistency": (-1, 0.10),  # layers disagree
}
ADJUST_LOGITS = 1.5  # the other signals move the anchor by at most this many logits (odds x4.5) either way
PRIOR_CLIP = 1e-3  # prior probabilities are clipped to [this, 1 - this] before the logit
PROPENSITY_UNLABELLED_PER_LABEL = 4  # the labelled-vs-pool fit samples at most this many unlabelled
# rows per label (10,000 rows made it the slowest fit of a recalibration; 4:1 keeps it well posed)
MAX_WEIGHT = 10.0  # cap on a label's covariate-shift weight, relative to the median weight
PROPENSITY_C = 1.0  # inverse L2 strength of the labelled-vs-pool fit, on standardised inputs
PROPENSITY_SOLVER = "newton-cholesky"  # sklearn's pick for many rows and few features: a few Newton
# steps (lbfgs took ~50 iterations per fit here)
FIT_THREADS = 1  # BLAS threads for fits: on problems this small, threads cost more than they save
# (measured here: lbfgs on 100 x 14 took 60 ms with the default threads under load, 1.5 ms with one)


# --------------------------------------------------------------------------- inputs

def pool_percentiles(column: np.ndarray) -> np.ndarray:
    """Average-rank percentile in [0, 1]; ties share a rank, a constant column gives 0.5."""
    if column.size <= 1 or np.all(column == column[0]):
        return np.full(column.shape, 0.5)
    return (rankdata(column, method="average") - 1) / (column.size - 1)


@contextmanager
def single_threaded():
    """Limit BLAS/OpenMP threads to FIT_THREADS while small models are fitted or applied.

    Also silences one sklearn notice: on a tiny, nearly separable fold the Newton solver's line
    search can stall, and sklearn then finishes that fit with lbfgs (the result is fine).
    """
    import warnings

    with _thread_controller().limit(limits=FIT_THREADS), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Line search of Newton solver")
        yield


@functools.cache
def _thread_controller():
    """One threadpoolctl controller per process: building it scans the loaded libraries (~2 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --------------------------------------------------------------------------- the prior

@dataclass
class ColdStartPrior:
    """Label-free P(majority wrong): the vote as anchor, the other signals' ranks as adjustment.

    `anchor`: the vote_share column name, or None for a pure rank score (the weighted mean
    percentile itself, used by the single-signal baselines). `weights`: {column: (sign, weight)};
    empty means the anchor alone. Ranks are taken within the rows given (the pool).
    """

    weights: dict = field(default_factory=lambda: dict(PRIOR_WEIGHTS))
    anchor: str | None = "vote_share"
    adjust_logits: float = ADJUST_LOGITS
    kind: str = "cold_start"
    metrics: dict = field(default_factory=dict)  # always empty: it fits nothing (the posterior holds fitted metrics)

    def adjustment(self, rows) -> np.ndarray:
        """[N] weighted mean percentile of the non-anchor signals, 0.5 when there are none."""
        table = FeatureTable.from_rows(rows, tuple(self.weights))
        if not self.weights:
            return np.full(len(table), 0.5)
        names = list(self.weights)
        matrix = table.matrix(names)  # [N, F]
        total = sum(w for _, w in self.weights.values())
        score = np.zeros(len(table))  # [N]
        for j, name in enumerate(names):
            sign, weight = self.weights[name]
            score += weight * pool_percentiles(sign * matrix[:, j])
        return score / total

    def predict(self, rows) -> np.ndarray:
        table = FeatureTable.from_rows(rows, tuple(self.weights) + ((self.anchor,) if self.anchor else ()))
        if not len(table):
            return np.zeros(0)
        key = ("prior", tuple(sorted(self.weights.items())), self.anchor, self.adjust_logits)
        if key not in table.cache:
            a = self.adjustment(table)  # [N] in [0, 1]
            if self.anchor is None:
                table.cache[key] = a
            else:
                share = np.clip(table.matrix((self.anchor,))[:, 0], 0.0, 1.0)  # [N]
                p0 = VOTE_FLOOR + (1.0 - 2.0 * VOTE_FLOOR) * (1.0 - share)  # [N] in [floor, 1 - floor]
                table.cache[key] = _expit(_logit(p0) + self.adjust_logits * (2.0 * a - 1.0))
        return table.cache[key].copy()


# --------------------------------------------------------------------------- selection bias

def _propensity_model():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=PROPENSITY_C, solver=PROPENSITY_SOLVER, max_iter=1000)


def covariate_shift_weights(x_pool: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """[M] weights that make the labelled rows stand for the whole pool: 1 / P(labelled | x).

    The router picks the most uncertain problems, so the labels cover a biased slice of the pool,
    and a model fitted on them as they are learns that slice's quirks (e.g. "unanimous means
    wrong", because only the doubtful unanimous problems were labelled). P(labelled | x) comes from
    a logistic regression of labelled-vs-pool on the same inputs (on a random sample of the
    unlabelled rows when they are many, its odds scaled back); weights are clipped to
    [1 / MAX_WEIGHT, MAX_WEIGHT] times their median, so a few rare labels cannot take over the
    fit, then normalised to mean 1.
    """
    chosen = np.zeros(x_pool.shape[0], dtype=int)  # [P]
    chosen[labelled] = 1
    others = np.flatnonzero(chosen == 0)  # [U]
    if others.size == 0:
        return np.ones(labelled.size)
    keep = min(others.size, PROPENSITY_UNLABELLED_PER_LABEL * labelled.size)
    # a stable sample: each pool row has a fixed random key, the smallest keys are taken, so one more
    # label changes the sample by a row or two instead of redrawing it (and the weights with it)
    if keep < others.size:
        keys = np.random.default_rng(0).random(x_pool.shape[0])  # [P]
        sample = others[np.argsort(keys[others], kind="stable")[:keep]]
    else:
        sample = others
    rows = np.concatenate([labelled, sample])
    p = _propensity_model().fit(x_pool[rows], chosen[rows]).predict_proba(x_pool[labelled])[:, 1]  # [M]
    odds = np.clip(p, 1e-9, 1 - 1e-9) / np.clip(1.0 - p, 1e-9, 1.0)  # [M] in the sample
    w = 1.0 + others.size / (keep * odds)  # [M] 1 / P(labelled | x), the sample's odds scaled back
    w = np.clip(w / np.median(w), 1.0 / MAX_WEIGHT, MAX_WEIGHT)
    return w / w.mean()


# --------------------------------------------------------------------------- configuration

@dataclass
class EstimatorConfig:
    """Which signals the estimators may read (the full set, or a baseline's / ablation's subset),
    and which simpler models the labels may prefer (posterior.estimator_for)."""

    columns: tuple = NUMERIC_FEATURES  # signal columns of the posterior (posterior.PosteriorModel)
    prior_weights: dict = field(default_factory=lambda: dict(PRIOR_WEIGHTS))  # {} = anchor only
    prior_anchor: str | None = "vote_share"  # None: the prior is a pure rank score
    reweight: bool = True  # correct the labels' selection bias (see covariate_shift_weights)
    name: str = "all signals"  # how reports and router versions name this model
    # models the labels may choose instead, on strong evidence (posterior.BAYES_FACTOR_TO_SWITCH):
    # by default the two classic label-free uncertainty scores, self-consistency and token confidence
    alternatives: tuple = field(default_factory=lambda: (EstimatorConfig.confidence_only(),
                                                         EstimatorConfig.vote_share_only()))

    def prior(self) -> ColdStartPrior:
        return ColdStartPrior(weights=dict(self.prior_weights), anchor=self.prior_anchor)

    @classmethod
    def without(cls, names) -> "EstimatorConfig":
        """The full configuration minus some signals (e.g. ATTENTION_FEATURES)."""
        drop = set(names)
        return cls(columns=tuple(c for c in NUMERIC_FEATURES if c not in drop),
                   prior_weights={k: v for k, v in PRIOR_WEIGHTS.items() if k not in drop},
                   name="all signals without " + ", ".join(sorted(drop)))

    @classmethod
    def confidence_only(cls) -> "EstimatorConfig":
        """Mean token log-prob alone: its pool rank as the prior, then intercept and slope learned."""
        return cls(columns=("mean_logprob",), prior_weights={"mean_logprob": (-1, 1.0)}, prior_anchor=None,
                   name="confidence only", alternatives=())

    @classmethod
    def vote_share_only(cls) -> "EstimatorConfig":
        """Vote share alone: 1 - share as the prior, then intercept and slope learned."""
        return cls(columns=("vote_share",), prior_weights={}, name="vote share only", alternatives=())

    def single(self) -> "EstimatorConfig":
        """This configuration with no alternatives (the labels only update it)."""
        return replace(self, alternatives=())
