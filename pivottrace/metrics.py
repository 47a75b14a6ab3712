"""Calibration and ranking metrics of probabilities against 0/1 outcomes: ECE, Brier, AUROC, reliability
bins; and a paired test of two selections of the same pool (which of two strategies caught more).

Pure functions of arrays (optionally weighted). It fits nothing, chooses no estimator
(uncertainty.py) and renders nothing (report.py).
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 10  # equal-width bins of 0.1: the usual reliability-diagram resolution


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS, *,
                               weights: np.ndarray | None = None) -> float:
    """ECE with equal-width bins: sum over bins of |mean prob - frequency| * bin share (weighted)."""
    probs, y = np.asarray(probs, float), np.asarray(y, float)
    if probs.size == 0:
        return float("nan")
    w = np.ones(probs.size) if weights is None else np.asarray(weights, float)  # [N]
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)  # [N]
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            share = w[mask].sum() / w.sum()
            ece += share * abs(np.average(probs[mask], weights=w[mask]) - np.average(y[mask], weights=w[mask]))
    return float(ece)


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per non-empty equal-width bin: {lo, hi, mean_prob, frequency, n} (a reliability diagram)."""
    probs, y = np.asarray(probs, float), np.asarray(y, float)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)  # [N]
    out = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            out.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "mean_prob": float(probs[mask].mean()),
                        "frequency": float(y[mask].mean()), "n": int(mask.sum())})
    return out


def calibration_metrics(probs: np.ndarray, y: np.ndarray, *, weights: np.ndarray | None = None) -> dict:
    """{ece, brier, auroc, n}; AUROC is None when only one outcome is present."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    probs, y = np.asarray(probs, float), np.asarray(y, int)
    if y.size == 0:
        return {"ece": None, "brier": None, "auroc": None, "n": 0}
    auroc = float(roc_auc_score(y, probs, sample_weight=weights)) if len(set(y.tolist())) == 2 else None
    return {"ece": expected_calibration_error(probs, y, weights=weights),
            "brier": float(brier_score_loss(y, probs, sample_weight=weights, labels=[0, 1])),
            "auroc": auroc, "n": int(y.size)}


def paired_catch_test(caught_a, caught_b) -> dict:
    """McNemar's exact test of two strategies on the same pool: did A and B catch different numbers
    of the same wrong majorities by more than chance?

    `caught_a` / `caught_b`: the problem ids each one caught. Only the discordant problems (caught
    by one and not the other) carry information; under "equally good" each is A's or B's with
    probability 1/2, so the two-sided p-value is a binomial test on them. Returns {only_a, only_b,
    p_value} (p 1.0 when there is no discordant problem). The picks of a budget are not independent
    of one another, so read p as a guide (Dietterich 1998 recommends this test for two classifiers
    on one test set), not a guarantee.
    """
    from scipy.stats import binomtest

    a, b = set(caught_a), set(caught_b)
    only_a, only_b = len(a - b), len(b - a)
    n = only_a + only_b
    p = float(binomtest(only_a, n, 0.5).pvalue) if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": p}
