"""Features -> uncertainty = estimated P(the model's majority answer is wrong).

Two estimators with one interface (`predict(rows) -> [N]`):
- `ColdStartPrior`: no labels needed. A documented, rank-based combination of the signals.
- `CalibratedModel`: scikit-learn logistic regression with isotonic/Platt calibration, fitted on
  labelled problems once both outcomes are present often enough.
Also the metrics we report (ECE, Brier, AUROC). It does not route or touch the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from .features import NUMERIC_FEATURES, feature_matrix

# Cold-start prior: each signal's pool percentile, oriented so that higher = more likely wrong,
# averaged with these weights. Answer agreement dominates (self-consistency is the strongest
# label-free predictor of correctness); confidence next; pivots and attention add the rest.
PRIOR_WEIGHTS = {
    "vote_share": (-1, 0.30),  # low agreement among the K+1 answers
    "vote_entropy": (+1, 0.10),
    "answer_found": (-1, 0.10),  # no parsable final answer
    "greedy_agrees": (-1, 0.10),  # greedy chain disagrees with the majority
    "mean_logprob": (-1, 0.15),  # low token confidence
    "pivot_density": (+1, 0.10),  # many pivots per 100 tokens
    "max_pivot_score": (+1, 0.05),
    "mean_entropy": (+1, 0.05),  # dispersed attention
    "mean_consistency": (-1, 0.05),  # layers disagree
}
MIN_LABELS_PER_CLASS = 8  # fewer right/wrong labels than this: keep the prior (a fit would overfit)


def _percentiles(column: np.ndarray) -> np.ndarray:
    """Average-rank percentile in [0, 1]; ties share a rank, a constant column gives 0.5."""
    if column.size <= 1 or np.all(column == column[0]):
        return np.full(column.shape, 0.5)
    return (rankdata(column, method="average") - 1) / (column.size - 1)


@dataclass
class ColdStartPrior:
    """Rank-based prior. Its output ranks well but is not calibrated: read it as a score in [0,1]."""

    weights: dict = field(default_factory=lambda: dict(PRIOR_WEIGHTS))
    kind: str = "cold_start"

    def predict(self, rows: list[dict]) -> np.ndarray:
        if not rows:
            return np.zeros(0)
        names = list(self.weights)
        matrix = feature_matrix(rows, names)  # [N, F]
        total = sum(w for _, w in self.weights.values())
        score = np.zeros(len(rows))  # [N]
        for j, name in enumerate(names):
            sign, weight = self.weights[name]
            score += weight * _percentiles(sign * matrix[:, j])
        return score / total


@dataclass
class CalibratedModel:
    """Logistic regression on standardised features, calibrated with isotonic (or sigmoid) CV."""

    columns: tuple = NUMERIC_FEATURES
    method: str = "auto"  # "isotonic", "sigmoid", or "auto": isotonic from 200 labels on
    kind: str = "calibrated"
    estimator: object = None
    metrics: dict = field(default_factory=dict)

    def fit(self, rows: list[dict], wrong: np.ndarray) -> "CalibratedModel":
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(wrong, dtype=int)  # [N] 1 = majority answer wrong
        x = feature_matrix(rows, self.columns)  # [N, F]
        folds = int(min(5, np.bincount(y, minlength=2).min()))
        method = self.method if self.method != "auto" else ("isotonic" if len(y) >= 200 else "sigmoid")
        base = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
        self.estimator = CalibratedClassifierCV(base, method=method, cv=max(folds, 2)).fit(x, y)
        self.metrics = cross_validated_metrics(x, y, method=method)
        return self

    def predict(self, rows: list[dict]) -> np.ndarray:
        if not rows:
            return np.zeros(0)
        return self.estimator.predict_proba(feature_matrix(rows, self.columns))[:, 1]


def can_calibrate(wrong: np.ndarray) -> bool:
    counts = np.bincount(np.asarray(wrong, dtype=int), minlength=2)
    return bool(counts.min() >= MIN_LABELS_PER_CLASS)


def cross_validated_metrics(x: np.ndarray, y: np.ndarray, *, method: str = "sigmoid") -> dict:
    """ECE, Brier and AUROC of out-of-fold calibrated predictions."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(5, np.bincount(y, minlength=2).min()))
    if folds < 2:
        return {}
    inner = max(min(3, folds - 1), 2)
    base = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model = CalibratedClassifierCV(base, method=method, cv=inner)
    try:
        probs = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0),
                                  method="predict_proba")[:, 1]
    except ValueError:  # a fold too small for the inner calibration split
        return {}
    return evaluate(probs, y)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of |mean prob - frequency| * bin share."""
    probs, y = np.asarray(probs, float), np.asarray(y, float)
    if probs.size == 0:
        return float("nan")
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)  # [N]
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(probs[mask].mean() - y[mask].mean())
    return float(ece)


def evaluate(probs: np.ndarray, y: np.ndarray) -> dict:
    """{ece, brier, auroc, n}; AUROC is None when only one outcome is present."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    probs, y = np.asarray(probs, float), np.asarray(y, int)
    auroc = float(roc_auc_score(y, probs)) if len(set(y.tolist())) == 2 else None
    return {"ece": expected_calibration_error(probs, y), "brier": float(brier_score_loss(y, probs)),
            "auroc": auroc, "n": int(y.size)}
