"""Bayesian update of the cold-start prior: P(majority answer wrong) that learns from the first label.

The cold-start prior (uncertainty.ColdStartPrior) is exactly a logistic model,

    logit P(wrong) = b + a * (logit(p0(vote share)) - c) + sum_j beta_j * (pct_j - 1/2),

with c the pool's mean anchor logit, b = c, a = 1 and beta_j = 2 * ADJUST_LOGITS * w_j / sum(w),
where pct_j is signal j's percentile in the pool (oriented so that higher = more likely wrong) and
w_j its prior weight.
`PosteriorModel` puts a Gaussian prior on (b, a, beta) centred on those cold-start values and
updates it with the labels (Laplace approximation: the MAP from scipy.optimize, the covariance
from the inverse Hessian at the MAP). So with no labels it *is* the cold-start prior; the
intercept (the pool's base rate) moves after a handful of labels; each signal's weight grows or
shrinks as far as the evidence carries it; and every problem gets a credible interval from the
posterior of its logit. The labels' likelihood is weighted by covariate-shift weights
(uncertainty.covariate_shift_weights), since the router labels a biased slice of the pool.

Signals are a plain list of column names (`signal_columns`): a column without a cold-start
weight enters with prior mean 0 (and a positive orientation), so new signals (e.g. learned pivot
features) are added by naming them.

Model choice (`estimator_for`). The all-signal model's prior is hand-set, and on some pools one
signal alone ranks far better than the blend (measured: token confidence, AUROC 0.848 against the
blend's 0.751 on the synthetic pool). So the two classic label-free scores, confidence only and
vote share only, are fitted too, and each model's marginal likelihood of the labels (Laplace
approximation, unweighted: the router picks labels by their features, not their outcomes, so the
likelihood is valid as it stands) is compared. The pool is ranked by an alternative only when its
Bayes factor over the all-signal model exceeds BAYES_FACTOR_TO_SWITCH, Jeffreys' "strong
evidence", and both outcomes are among the labels. It does not route, read gold answers or touch
the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.stats import norm

from .metrics import calibration_metrics
from .records import FeatureTable
from .uncertainty import (PRIOR_CLIP, ColdStartPrior, _expit, _logit, covariate_shift_weights, pool_percentiles,
                          single_threaded)

PRIOR_SD_INTERCEPT = 1.0  # logits: two sd span odds x7 either way (a vote that says 0.3 wrong on a pool
# that is 0.71 wrong, as measured on an unseen pool, is 1.7 sd out), so ten labels move the base rate
# most of the way, while one label moves it by about half a logit
PRIOR_SD_ANCHOR = 0.5  # the vote anchor's slope: 1 +- 0.5 (the vote may be over- or under-confident)
PRIOR_SD_SIGNAL = 0.5  # a signal's weight on its centred percentile (the cold-start weights are
# 0.07-0.55): evidence can double, drop or reverse a weight, yet one label cannot swing twelve of them
BAYES_FACTOR_TO_SWITCH = 10.0  # an alternative model ranks the pool only when the labels favour it this
# strongly (Jeffreys' scale: 10-30 is "strong" evidence); measured, 10 and 30 chose alike on every
# pool, while 3 switched on a real pool where the switch lowered AUROC
CREDIBLE_LEVEL = 0.9  # two-sided level of the per-problem credible interval (matches delta = 0.1)
METRIC_FOLDS = 3  # held-out folds for ECE / Brier / AUROC on the labels


@dataclass
class PosteriorModel:
    """Laplace posterior of a logistic model whose prior is the cold-start estimate.

    Parameters, in order: intercept, anchor slope (when the prior has a vote anchor), one weight
    per signal column. `mean` / `cov` are the posterior's; `prior_mean` / `prior_sd` the prior's.
    """

    prior: ColdStartPrior = field(default_factory=ColdStartPrior)
    signals: tuple = ()  # extra signal columns beyond the prior's weights (prior mean 0)
    reweight: bool = True  # weight labels by 1 / P(labelled | x)
    kind: str = "bayes"
    mean: np.ndarray | None = None  # [P] posterior mode
    cov: np.ndarray | None = None  # [P, P] inverse Hessian at the mode
    prior_mean: np.ndarray | None = None  # [P]
    prior_sd: np.ndarray | None = None  # [P]
    metrics: dict = field(default_factory=dict)
    weights: np.ndarray | None = None  # [M] covariate-shift weights of the labels
    anchor_center: float = 0.0  # the pool's mean anchor logit (set by `fit`); the intercept's prior mean
    name: str = "all signals"  # the model's name in reports (uncertainty.EstimatorConfig.name)
    log_evidence: float | None = None  # log marginal likelihood of the labels (unweighted Laplace), from
    # `fit` when asked (with_evidence / evidence_only)

    # ----------------------------------------------------------------- design

    def signal_columns(self) -> tuple:
        """The signal columns, cold-start ones first: [prior weights..., extra signals...]."""
        own = tuple(self.prior.weights) if self.prior.anchor is not None else ()
        return own + tuple(c for c in self.signals if c not in own and c != self.prior.anchor)

    def needed_columns(self) -> tuple:
        """Every column the design reads (the prior's, the anchor, the signals)."""
        anchor = (self.prior.anchor,) if self.prior.anchor else ()
        return tuple(dict.fromkeys(tuple(self.prior.weights) + anchor + self.signal_columns()))

    def names(self) -> list[str]:
        """[P] parameter names."""
        anchor = ["anchor:" + self.prior.anchor] if self.prior.anchor is not None else ["anchor:prior"]
        return ["intercept"] + anchor + list(self.signal_columns())

    def design(self, rows) -> np.ndarray:
        """[N, P] inputs: 1, the anchor's logit, each signal's centred oriented pool percentile.

        Without a vote anchor (the single-signal baselines) the anchor column is the prior's own
        logit and there are no signal columns beyond `signals`."""
        columns = self.signal_columns()
        table = FeatureTable.from_rows(rows, self.needed_columns())
        signs = tuple(self.prior.weights.get(name, (1, 0.0))[0] for name in columns)
        key = ("posterior-design", columns, self.prior.anchor, signs,
               tuple(sorted(self.prior.weights.items())) if self.prior.anchor is None else None)
        if key not in table.cache:  # the ranks over the pool dominate the cost: once per table (fit, predict, interval)
            table.cache[key] = self._design(table, columns)
        x = table.cache[key].copy()  # [N, P]
        x[:, 1] -= self.anchor_center  # centred, so a change of slope does not move the base rate
        return x

    def _design(self, table: FeatureTable, columns: tuple) -> np.ndarray:
        """[N, P] the design with an uncentred anchor column (anchor_center 0)."""
        n = len(table)
        if self.prior.anchor is not None:
            anchor = ColdStartPrior(weights={}, anchor=self.prior.anchor).predict(table)  # [N] p0
        else:
            anchor = self.prior.predict(table)  # [N]
        z = _logit(np.clip(anchor, PRIOR_CLIP, 1.0 - PRIOR_CLIP))  # [N]
        x = np.empty((n, 2 + len(columns)))  # [N, P]
        x[:, 0] = 1.0
        x[:, 1] = z
        if columns:
            raw = table.matrix(columns)  # [N, F]
            for j, name in enumerate(columns):
                sign = self.prior.weights.get(name, (1, 0.0))[0] if self.prior.anchor is not None else 1
                x[:, 2 + j] = pool_percentiles(sign * raw[:, j]) - 0.5
        return x

    def cold_start_parameters(self) -> tuple[np.ndarray, np.ndarray]:
        """([P] prior mean, [P] prior sd): the cold-start prior's own weights, and their spread."""
        columns = self.signal_columns()
        total = sum(w for _, w in self.prior.weights.values()) or 1.0
        mean = np.zeros(2 + len(columns))
        mean[0], mean[1] = self.anchor_center, 1.0
        for j, name in enumerate(columns):
            if self.prior.anchor is not None and name in self.prior.weights:
                mean[2 + j] = 2.0 * self.prior.adjust_logits * self.prior.weights[name][1] / total
        sd = np.full(mean.shape, PRIOR_SD_SIGNAL)
        sd[0], sd[1] = PRIOR_SD_INTERCEPT, PRIOR_SD_ANCHOR
        return mean, sd

    # ----------------------------------------------------------------- fitting

    def fit(self, rows, wrong: np.ndarray, *, pool=None, with_metrics: bool = True,
            weights: np.ndarray | None = None, with_evidence: bool = False,
            evidence_only: bool = False) -> "PosteriorModel":
        """Update the prior with labelled `rows` (part of `pool`; default the rows themselves).
        `wrong`: [M] 1 = majority answer wrong. Any number of labels, one outcome or both.
        `with_evidence`: also compute `log_evidence` (one more, unweighted fit: only model choice
        needs it); `evidence_only`: that unweighted fit alone, no reweighting and no metrics."""
        y = np.asarray(wrong, dtype=np.float64)  # [M]
        ids = rows.ids if isinstance(rows, FeatureTable) else [r["problem_id"] for r in rows]
        if len(ids) != y.size:
            raise ValueError(f"{len(ids)} feature rows but {y.size} outcomes.")
        pool = FeatureTable.from_rows(rows if pool is None else pool, self.needed_columns())
        where = {pid: i for i, pid in enumerate(pool.ids)}
        missing = [pid for pid in ids if pid not in where]
        if missing:
            raise ValueError(f"{len(missing)} labelled rows are not in the pool, e.g. {missing[0]!r}.")
        labelled = np.array([where[pid] for pid in ids], dtype=np.int64)  # [M]
        self.anchor_center = 0.0
        x_pool = self.design(pool)  # [N, P]
        self.anchor_center = float(x_pool[:, 1].mean()) if len(pool) else 0.0
        x_pool[:, 1] -= self.anchor_center
        self.prior_mean, self.prior_sd = self.cold_start_parameters()
        if weights is not None:
            self.weights = np.asarray(weights, dtype=np.float64)
        elif self.reweight and 0 < labelled.size < len(pool) and not evidence_only:
            inputs = x_pool[:, 1:]
            spread = inputs.std(axis=0)
            standard = (inputs - inputs.mean(axis=0)) / np.where(spread > 1e-12, spread, 1.0)  # [N, P-1]
            with single_threaded():
                self.weights = covariate_shift_weights(standard, labelled)  # [M]
        else:
            self.weights = np.ones(labelled.size)
        x = x_pool[labelled]  # [M, P]
        if evidence_only:  # a rival weighed by its evidence: the unweighted fit, no metrics
            self.log_evidence, self.mean, self.cov = laplace_evidence_fit(x, y, self.prior_mean, self.prior_sd)
            self.metrics = {"n": int(y.size), "n_wrong": int(y.sum()), "model": self.name}
            return self
        self.mean, self.cov = laplace_posterior(x, y, self.weights, self.prior_mean, self.prior_sd)
        if with_evidence:
            self.log_evidence = laplace_log_evidence(x, y, self.prior_mean, self.prior_sd)
        self.metrics = {"n": int(y.size), "n_wrong": int(y.sum()), "reweighted": bool(self.reweight),
                        "weights": self.weight_summary(), "model": self.name}
        if with_metrics:
            self.metrics.update(self._held_out(x, y))
        return self

    def _held_out(self, x: np.ndarray, y: np.ndarray) -> dict:
        """ECE, Brier and AUROC of out-of-fold posterior predictions on the labels ({} if too few)."""
        from sklearn.model_selection import StratifiedKFold

        counts = np.bincount(y.astype(int), minlength=2)
        folds = int(min(METRIC_FOLDS, counts.min()))
        if folds < 2:
            return {}
        oof = np.zeros(y.size)  # [M]
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=0).split(x, y.astype(int)):
            mean, _ = laplace_posterior(x[train], y[train], self.weights[train], self.prior_mean, self.prior_sd)
            oof[test] = _expit(x[test] @ mean)
        return calibration_metrics(oof, y.astype(int), weights=self.weights)

    def weight_summary(self) -> dict:
        """{parameter: {prior, posterior, sd}}, rounded: what the router version records."""
        sd = np.sqrt(np.diag(self.cov)) if self.cov is not None else self.prior_sd
        return {name: {"prior": round(float(p), 4), "posterior": round(float(m), 4), "sd": round(float(s), 4)}
                for name, p, m, s in zip(self.names(), self.prior_mean, self.mean, sd)}

    # ----------------------------------------------------------------- predicting

    def logit_moments(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """([N] posterior mode of each problem's logit, [N] its posterior sd)."""
        x = self.design(rows)  # [N, P]
        mode = x @ self.mean  # [N]
        var = np.einsum("np,pq,nq->n", x, self.cov, x)  # [N]
        return mode, np.sqrt(np.maximum(var, 0.0))

    def predict(self, rows) -> np.ndarray:
        """[N] P(majority wrong): the posterior median, sigma(mode of the logit). With no labels
        this is the cold-start prior exactly."""
        if not len(FeatureTable.from_rows(rows, ())):
            return np.zeros(0)
        return _expit(self.design(rows) @ self.mean)

    def predict_mean(self, rows) -> np.ndarray:
        """[N] the posterior predictive mean (probit approximation to E[sigma(logit)])."""
        mode, sd = self.logit_moments(rows)
        return _expit(mode / np.sqrt(1.0 + np.pi * sd ** 2 / 8.0))

    def predict_interval(self, rows, *, level: float = CREDIBLE_LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """([N] lower, [N] upper) equal-tailed credible interval of each problem's P(wrong)."""
        mode, sd = self.logit_moments(rows)
        z = norm.ppf(0.5 + level / 2.0)
        return _expit(mode - z * sd), _expit(mode + z * sd)


def laplace_posterior(x: np.ndarray, y: np.ndarray, weights: np.ndarray, prior_mean: np.ndarray,
                      prior_sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([P] MAP, [P, P] covariance) of a weighted logistic likelihood times a diagonal Gaussian prior."""
    precision = 1.0 / prior_sd ** 2  # [P]
    if y.size == 0:
        return prior_mean.copy(), np.diag(prior_sd ** 2)

    def objective(theta):
        z = x @ theta  # [M]
        # -log p(y | theta), stable: log(1 + e^z) - y z
        nll = np.sum(weights * (np.logaddexp(0.0, z) - y * z))
        d = theta - prior_mean
        grad = x.T @ (weights * (_expit(z) - y)) + precision * d  # [P]
        return nll + 0.5 * np.sum(precision * d * d), grad

    def hessian(theta):
        p = _expit(x @ theta)  # [M]
        return (x * (weights * p * (1.0 - p))[:, None]).T @ x + np.diag(precision)  # [P, P]

    result = minimize(objective, prior_mean.copy(), jac=True, hess=hessian, method="trust-exact",
                      options={"gtol": 1e-8})
    mode = result.x
    return mode, np.linalg.inv(hessian(mode))


def laplace_log_evidence(x: np.ndarray, y: np.ndarray, prior_mean: np.ndarray, prior_sd: np.ndarray) -> float:
    """Laplace approximation of log p(y | model): the unweighted logistic likelihood at its MAP, times
    the Gaussian prior there, times the posterior volume ((2 pi)^(P/2) |cov|^(1/2))."""
    return laplace_evidence_fit(x, y, prior_mean, prior_sd)[0]


def laplace_evidence_fit(x: np.ndarray, y: np.ndarray, prior_mean: np.ndarray,
                         prior_sd: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(log evidence, [P] MAP, [P, P] covariance) of the unweighted fit (laplace_log_evidence)."""
    mode, cov = laplace_posterior(x, y, np.ones(y.size), prior_mean, prior_sd)
    z = x @ mode  # [M]
    log_likelihood = float(np.sum(y * z - np.logaddexp(0.0, z)))
    log_prior = float(-0.5 * np.sum(((mode - prior_mean) / prior_sd) ** 2) - np.sum(np.log(prior_sd))
                      - 0.5 * prior_sd.size * np.log(2.0 * np.pi))
    log_volume = 0.5 * prior_sd.size * np.log(2.0 * np.pi) + 0.5 * float(np.linalg.slogdet(cov)[1])
    return log_likelihood + log_prior + log_volume, mode, cov


def fit_posterior(rows, outcomes: dict[str, int], *, prior: ColdStartPrior | None = None,
                  signals: tuple = (), reweight: bool = True, with_metrics: bool = True,
                  name: str = "all signals", with_evidence: bool = False, evidence_only: bool = False):
    """The posterior given the labels in `outcomes` ({problem_id: 1 wrong / 0 right}); the
    cold-start prior itself when none of them is in `rows`."""
    prior = prior or ColdStartPrior()
    model = PosteriorModel(prior=prior, signals=tuple(signals), reweight=reweight, name=name)
    table = FeatureTable.from_rows(rows, model.needed_columns())
    labelled = np.array([i for i, pid in enumerate(table.ids) if pid in outcomes], dtype=np.int64)  # [M]
    if labelled.size == 0:
        return prior
    wrong = np.array([outcomes[table.ids[i]] for i in labelled], dtype=int)  # [M]
    return model.fit(table.take(labelled), wrong, pool=table, with_metrics=with_metrics,
                     with_evidence=with_evidence, evidence_only=evidence_only)


def credible_intervals(estimator, rows, *, config=None, level: float = CREDIBLE_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """([N] lower, [N] upper) credible interval of each problem's P(wrong). For the cold-start prior
    (no labels yet) it is the prior's own: the same model with no labels, whose mode is the prior."""
    from .uncertainty import EstimatorConfig

    if not isinstance(estimator, PosteriorModel):
        config = config or EstimatorConfig()
        model = PosteriorModel(prior=config.prior(), signals=tuple(config.columns), reweight=config.reweight)
        table = FeatureTable.from_rows(rows, model.needed_columns())
        estimator = model.fit(table.take(np.zeros(0, dtype=np.int64)), np.zeros(0), pool=table, with_metrics=False)
    return estimator.predict_interval(rows, level=level)


def estimator_for(rows, outcomes: dict[str, int], *, config=None, with_metrics: bool = True):
    """The estimator an uncertainty.EstimatorConfig gives after the labels in `outcomes`: the
    posterior of its model, or of one of its alternatives when the labels favour that one by a
    Bayes factor above BAYES_FACTOR_TO_SWITCH (see the module docstring). The chosen model's
    metrics record every candidate's log evidence and the Bayes factor of the best alternative."""
    from .uncertainty import EstimatorConfig

    config = config or EstimatorConfig()
    main = _fit_config(rows, outcomes, config, with_metrics, with_evidence=bool(config.alternatives))
    if not config.alternatives or not isinstance(main, PosteriorModel) or main.metrics["n_wrong"] in (0, main.metrics["n"]):
        return main  # the cold start (no labels), or one outcome only: nothing to tell the models apart
    rivals = [_fit_config(rows, outcomes, alternative, False, evidence_only=True) for alternative in config.alternatives]
    best = max(rivals, key=lambda model: model.log_evidence)
    log_factor = best.log_evidence - main.log_evidence
    chosen = main
    if log_factor > np.log(BAYES_FACTOR_TO_SWITCH):  # fitted in full (reweighted, metrics) only when chosen
        chosen = _fit_config(rows, outcomes, config.alternatives[rivals.index(best)], with_metrics)
    chosen.metrics.update({
        "model_log_evidence": {model.name: round(float(model.log_evidence), 3) for model in [main, *rivals]},
        "best_alternative": best.name, "bayes_factor": round(float(np.exp(min(log_factor, 700.0))), 3),
        "bayes_factor_to_switch": BAYES_FACTOR_TO_SWITCH,
    })
    return chosen


def _fit_config(rows, outcomes: dict[str, int], config, with_metrics: bool, *, with_evidence: bool = False,
                evidence_only: bool = False):
    return fit_posterior(rows, outcomes, prior=config.prior(), signals=tuple(config.columns),
                         reweight=config.reweight, with_metrics=with_metrics, name=config.name,
                         with_evidence=with_evidence, evidence_only=evidence_only)
