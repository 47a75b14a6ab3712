"""Features -> uncertainty = estimated P(the model's majority answer is wrong).

Two estimators with one interface (`predict(rows) -> [N]` probabilities):
- `ColdStartPrior`: no labels needed. The vote anchors it (1 - vote share is a rough probability
  of error by itself); a rank-based combination of the other signals moves it up or down.
- `CalibratedModel`: scikit-learn logistic regression wrapped in `CalibratedClassifierCV`
  (Platt/sigmoid, isotonic from many labels), fitted on labelled problems once both outcomes are
  present often enough, starting from the prior and corrected for the labels' selection bias.
  Its ECE, Brier and AUROC come from cross-validation.
`choose_estimator` picks between them. `rows` may be feature dicts or a `FeatureTable` (built
once, so a pool of 10,000 is converted once per recalibration). The metrics it reports (ECE,
Brier, AUROC, reliability bins) live in metrics.py. It does not route, read gold answers or
touch the database.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from .metrics import calibration_metrics
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
MIN_LABELS_PER_CLASS = 20  # fewer right/wrong labels than this: keep the prior. The smallest fit (the
# prior rescaled) has 2 parameters: 10 events per parameter, the classic rule for logistic models
EVENTS_PER_INPUT = 3  # the all-signals model competes once the rarer outcome has this many labels per
# input (16 inputs -> 48); fewer, with labels from the top of the queue, and it ranked the pool worse
AUROC_TOLERANCE = 0.02  # a fitted candidate whose held-out AUROC on the labels trails the prior's by
# more than this is out, however good its Brier (a base-rate fit can win Brier with a reversed ranking)
ISOTONIC_MIN_LABELS = 1000  # isotonic calibration overfits below ~1000 points (sklearn guide); Platt before
CALIBRATION_FOLDS = 3  # folds inside CalibratedClassifierCV
METRIC_FOLDS = 3  # folds of the cross-validated ECE / Brier / AUROC (5 cost 6 ms more at 1,000 labels)
LOGISTIC_C = 1.0  # inverse L2 strength on standardised features (sklearn sums the loss over labels)
PRIOR_EMPHASIS = 10.0  # the prior's logit column is scaled by this after standardising, so its L2
# penalty is 100x weaker: with few labels the fit leans on the prior, other signals need evidence
PRIOR_CLIP = 1e-3  # prior probabilities are clipped to [this, 1 - this] before the logit
PROPENSITY_UNLABELLED_PER_LABEL = 4  # the labelled-vs-pool fit samples at most this many unlabelled
# rows per label (10,000 rows made it the slowest fit of a recalibration; 4:1 keeps it well posed)
MAX_WEIGHT = 10.0  # cap on a label's covariate-shift weight, relative to the median weight
SOLVER = "newton-cholesky"  # Newton steps: few iterations even with the emphasised prior column;
# sklearn's pick for many rows and few features (lbfgs took ~50 iterations per fit here)
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
    metrics: dict = field(default_factory=dict)  # empty, or why labels did not replace it

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


# --------------------------------------------------------------------------- the calibrated model

def _logistic():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=LOGISTIC_C, solver=SOLVER, max_iter=1000)


def calibration_method(method: str, n_labels: int) -> str:
    if method not in ("auto", "sigmoid", "isotonic"):
        raise ValueError(f"Unknown calibration method {method!r}; use auto, sigmoid or isotonic.")
    if method != "auto":
        return method
    return "isotonic" if n_labels >= ISOTONIC_MIN_LABELS else "sigmoid"


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
    p = _logistic().fit(x_pool[rows], chosen[rows]).predict_proba(x_pool[labelled])[:, 1]  # [M]
    odds = np.clip(p, 1e-9, 1 - 1e-9) / np.clip(1.0 - p, 1e-9, 1.0)  # [M] in the sample
    w = 1.0 + others.size / (keep * odds)  # [M] 1 / P(labelled | x), the sample's odds scaled back
    w = np.clip(w / np.median(w), 1.0 / MAX_WEIGHT, MAX_WEIGHT)
    return w / w.mean()


@dataclass
class CalibratedModel:
    """Logistic regression on standardised features, calibrated with `CalibratedClassifierCV`.

    Inputs are standardised with the pool's mean and spread. With a `prior`, the prior's logit is
    the first input, scaled by PRIOR_EMPHASIS so its L2 penalty is 100x weaker: the fit starts from
    the prior's ranking and rescales it, and the other signals move it only as far as the labels
    support. With `reweight`, labels are weighted by `covariate_shift_weights`. The prior ranks
    against a pool, so `fit` takes the pool (`pool`, holding the labelled rows; default the rows
    themselves) and `predict` reads the rows it is given as the pool.
    """

    columns: tuple = NUMERIC_FEATURES
    method: str = "auto"  # "isotonic", "sigmoid", or "auto": isotonic from ISOTONIC_MIN_LABELS labels on
    prior: ColdStartPrior | None = None
    reweight: bool = True  # weight labels by 1 / P(labelled | x) (see covariate_shift_weights)
    kind: str = "calibrated"
    estimator: object = None
    metrics: dict = field(default_factory=dict)  # {ece, brier, auroc, n, method} from cross-validation
    weights: np.ndarray | None = None  # [M] covariate-shift weights of the labels it was fitted on
    oof: np.ndarray | None = None  # [M] cross-validated probabilities of those labels
    center: np.ndarray | None = None  # [F(+1)] pool mean of the raw inputs
    spread: np.ndarray | None = None  # [F(+1)] pool standard deviation (1 where constant)

    def raw_inputs(self, rows) -> np.ndarray:
        """[N, F(+1)] unstandardised inputs: the prior's logit (ranked within `rows`), then the columns."""
        table = FeatureTable.from_rows(rows)
        x = table.matrix(self.columns)  # [N, F]
        if self.prior is None:
            return x
        z = _logit(np.clip(self.prior.predict(table), PRIOR_CLIP, 1.0 - PRIOR_CLIP))  # [N]
        return np.column_stack([z, x])  # [N, F+1]

    def _standardise(self, raw: np.ndarray) -> np.ndarray:
        x = (raw - self.center) / self.spread  # [N, F(+1)]
        if self.prior is not None:
            x[:, 0] *= PRIOR_EMPHASIS
        return x

    def unfitted(self) -> "CalibratedModel":
        """A fresh model of the same form (columns, prior, method), e.g. for cross-fitting."""
        return CalibratedModel(columns=self.columns, method=self.method, prior=self.prior,
                               reweight=self.reweight, kind=self.kind)

    def fit(self, rows, wrong: np.ndarray, *, pool=None, with_metrics: bool = True,
            weights: np.ndarray | None = None) -> "CalibratedModel":
        """Fit on labelled `rows` (part of `pool`). `weights`: covariate-shift weights already
        computed for these labels (else computed here when `reweight`)."""
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold

        y = np.asarray(wrong, dtype=int)  # [M] 1 = majority answer wrong
        ids = rows.ids if isinstance(rows, FeatureTable) else [r["problem_id"] for r in rows]
        if len(ids) != y.size:
            raise ValueError(f"{len(ids)} feature rows but {y.size} outcomes.")
        if not can_calibrate(y):
            raise ValueError(f"Calibration needs at least {MIN_LABELS_PER_CLASS} right and "
                             f"{MIN_LABELS_PER_CLASS} wrong labels; got {np.bincount(y, minlength=2).tolist()}.")
        pool = FeatureTable.from_rows(rows if pool is None else pool)
        where = {pid: i for i, pid in enumerate(pool.ids)}
        missing = [pid for pid in ids if pid not in where]
        if missing:
            raise ValueError(f"{len(missing)} labelled rows are not in the pool, e.g. {missing[0]!r}.")
        labelled = np.array([where[pid] for pid in ids], dtype=np.int64)  # [M]
        raw = self.raw_inputs(pool)  # [P, F(+1)]
        self.center = raw.mean(axis=0)
        spread = raw.std(axis=0)
        self.spread = np.where(spread > 1e-12, spread, 1.0)
        x_pool = self._standardise(raw)  # [P, F(+1)]
        x = x_pool[labelled]  # [M, F(+1)]
        method = calibration_method(self.method, y.size)
        folds = int(max(min(CALIBRATION_FOLDS, np.bincount(y, minlength=2).min()), 2))
        with single_threaded():
            if weights is not None:
                self.weights = np.asarray(weights, dtype=np.float64)  # [M]
            else:
                self.weights = covariate_shift_weights(x_pool, labelled) if self.reweight else None  # [M]
            self.estimator = CalibratedClassifierCV(
                _logistic(), method=method, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
            ).fit(x, y, sample_weight=self.weights)
            self.oof = cross_fitted_probabilities(x, y, method=method, weights=self.weights) \
                if with_metrics else None
        self.metrics = {}
        if self.oof is not None:
            self.metrics = {**calibration_metrics(self.oof, y, weights=self.weights), "method": method,
                            "reweighted": bool(self.reweight)}
        return self

    def slopes(self) -> np.ndarray:
        """[k] coefficient of the first input (the prior's logit) in each of the k fitted models."""
        return np.array([c.estimator.coef_[0, 0] for c in self.estimator.calibrated_classifiers_])

    def predict(self, rows) -> np.ndarray:
        table = FeatureTable.from_rows(rows)
        if not len(table):
            return np.zeros(0)
        x = self._standardise(self.raw_inputs(table))  # [N, F(+1)]
        with single_threaded():
            return self.estimator.predict_proba(x)[:, 1]


def cross_fitted_probabilities(x: np.ndarray, y: np.ndarray, *, method: str = "sigmoid",
                               weights: np.ndarray | None = None, folds: int = METRIC_FOLDS) -> np.ndarray | None:
    """[M] out-of-fold calibrated probabilities, or None when a class has fewer than 2 labels.

    For each fold: a logistic regression fitted on the other folds scores it (out-of-fold scores
    for every label); then the fold's probabilities come from a calibrator (Platt or isotonic)
    fitted on the other folds' out-of-fold scores. Nested CalibratedClassifierCV would be the
    textbook form; this one fits k regressions instead of k x (k + 1) and differs only in that a
    calibrator sees scores from regressions that saw its fold's labels.
    """
    from sklearn.isotonic import IsotonicRegression
    from sklearn.model_selection import StratifiedKFold

    folds = int(min(folds, np.bincount(y, minlength=2).min()))
    if folds < 2:
        return None
    w = np.ones(y.size) if weights is None else np.asarray(weights, float)  # [M]
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y))
    scores = np.zeros(y.size)  # [M] out-of-fold decision values
    for train, test in splits:
        scores[test] = _logistic().fit(x[train], y[train], sample_weight=w[train]).decision_function(x[test])
    probs = np.zeros(y.size)  # [M]
    for train, test in splits:
        if method == "isotonic":
            calibrator = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            probs[test] = calibrator.fit(scores[train], y[train], sample_weight=w[train]).predict(scores[test])
        else:
            platt = _logistic().set_params(C=1e6, solver="lbfgs").fit(scores[train, None], y[train], sample_weight=w[train])
            probs[test] = platt.predict_proba(scores[test, None])[:, 1]
    return probs


# --------------------------------------------------------------------------- choosing

@dataclass
class EstimatorConfig:
    """Which signals the estimators may read (the full set, or a baseline's / ablation's subset)."""

    columns: tuple = NUMERIC_FEATURES  # features of the calibrated model
    prior_weights: dict = field(default_factory=lambda: dict(PRIOR_WEIGHTS))  # {} = anchor only
    prior_anchor: str | None = "vote_share"  # None: the prior is a pure rank score
    method: str = "auto"  # calibration method, see calibration_method
    prior_feature: bool = True  # the calibrated model starts from the prior (see CalibratedModel)
    reweight: bool = True  # correct the labels' selection bias (see covariate_shift_weights)

    def prior(self) -> ColdStartPrior:
        return ColdStartPrior(weights=dict(self.prior_weights), anchor=self.prior_anchor)

    @classmethod
    def without(cls, names) -> "EstimatorConfig":
        """The full configuration minus some signals (e.g. ATTENTION_FEATURES)."""
        drop = set(names)
        return cls(columns=tuple(c for c in NUMERIC_FEATURES if c not in drop),
                   prior_weights={k: v for k, v in PRIOR_WEIGHTS.items() if k not in drop})


def can_calibrate(wrong: np.ndarray) -> bool:
    counts = np.bincount(np.asarray(wrong, dtype=int), minlength=2)
    return bool(counts.min() >= MIN_LABELS_PER_CLASS)


def choose_estimator(rows, outcomes: dict[str, int], *, config: EstimatorConfig | None = None,
                     gate: bool = True, with_metrics: bool = True):
    """The estimator the labels support best: the prior, the prior rescaled, or all signals.

    `outcomes`: {problem_id: 1 if the majority answer was wrong, 0 if right}. Until labels hold
    MIN_LABELS_PER_CLASS of both outcomes: the prior. Then, with `gate`, up to three candidates
    compete on their cross-validated Brier score on the labels (weighted for the pool), the
    simpler one winning ties:
    - the cold-start prior as it is;
    - the prior rescaled (kind "calibrated_prior": its logit the only input, its slope positive):
      the prior's ranking with the scale the labels show, e.g. when the model is wrong far more
      often than the vote says;
    - the calibrated model on all signals (kind "calibrated"), once the rarer outcome has
      EVENTS_PER_INPUT labels per input. When it already beats the prior, the rescaled prior (which
      it can represent: the prior's logit is one of its inputs) is not fitted, so a recalibration
      of 10,000 problems with 1,000 labels stays cheap.
    A fitted candidate must also rank the labels about as well as the prior does (held-out AUROC
    within AUROC_TOLERANCE): labels from the top of the queue can fit a model that gets the base
    rate right, and so a better Brier, with a ranking worse than the prior's, even reversed.
    The winner's `metrics` hold every candidate's Brier and AUROC. Without `gate` the all-signals
    model is returned; without `gate` and `with_metrics` no cross-validation runs.
    """
    config = config or EstimatorConfig()
    table = FeatureTable.from_rows(rows)
    prior = config.prior()
    labelled = np.array([i for i, pid in enumerate(table.ids) if pid in outcomes], dtype=np.int64)  # [M]
    wrong = np.array([outcomes[table.ids[i]] for i in labelled], dtype=int)  # [M]
    if not (labelled.size and can_calibrate(wrong)):
        return prior
    labels = table.take(labelled)
    full = CalibratedModel(columns=tuple(config.columns), method=config.method,
                           prior=prior if config.prior_feature else None, reweight=config.reweight)
    if not gate:
        return full.fit(labels, wrong, pool=table, with_metrics=with_metrics)
    rescaled = CalibratedModel(columns=(), method=config.method, prior=prior, reweight=config.reweight,
                               kind="calibrated_prior")
    n_inputs = len(full.columns) + (full.prior is not None)
    enough = np.bincount(wrong, minlength=2).min() >= EVENTS_PER_INPUT * n_inputs
    first = (full if enough else rescaled).fit(labels, wrong, pool=table)
    weights = first.weights
    prior_metrics = calibration_metrics(prior.predict(table)[labelled], wrong, weights=weights)
    floor = (prior_metrics["auroc"] or 0.0) - AUROC_TOLERANCE
    scores = {"prior": (prior_metrics["brier"], prior_metrics["auroc"])}
    candidates = {"prior": prior}

    def admit(name: str, model: CalibratedModel) -> None:
        candidates[name] = model
        scores[name] = (model.metrics.get("brier"), model.metrics.get("auroc"))

    if enough:
        admit("all_signals", full)
    # the rescaled prior is fitted unless the all-signals model already ranks and scores better
    # than the prior (the prior's logit is one of its inputs, so it can represent the rescaling)
    settled = enough and scores["all_signals"][0] is not None and scores["all_signals"][0] < scores["prior"][0] \
        and (scores["all_signals"][1] is None or scores["all_signals"][1] >= floor)
    if not settled:
        if rescaled.estimator is None:
            rescaled.fit(labels, wrong, pool=table, weights=weights)
        if rescaled.slopes().min() > 0:  # labels that reverse the prior do not calibrate it
            admit("prior_rescaled", rescaled)
    eligible = [name for name in candidates if scores[name][0] is not None
                and (name == "prior" or scores[name][1] is None or scores[name][1] >= floor)]
    order = ["prior", "prior_rescaled", "all_signals"]
    chosen_name = min(eligible, key=lambda name: (scores[name][0], order.index(name)))
    chosen = candidates[chosen_name]
    if chosen is prior:
        prior.metrics = {**prior_metrics, "kept_prior": True}
    chosen.metrics["candidates"] = {name: {"brier": b, "auroc": a} for name, (b, a) in scores.items()}
    return chosen
