"""Per-step statistics -> pivot scores, pivots and pivot density. numpy only.

Input: the per-step arrays of many traces (entropy [L,S], temporal_change [L,S], consistency
[S], pred_entropy_mean [S], cue [S]). Output: for each trace a score per step, which signals
fired, the pivot steps and the pivot density. Scores are robust z-scores against pool-level
statistics (median and MAD over every step of every trace in the pool), so densities compare
across traces. It does not read the database or touch a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Which way is "surprising" for each signal, and its weight in the pivot score. Temporal change
# (the model suddenly looks elsewhere) and layer disagreement are the attention signatures of a
# pivot; dispersed attention and a flat next-token distribution support them. Weights sum to 1.
SIGNAL_WEIGHTS = {
    "temporal_change": 0.35,  # D: mean over layers of the JS shift from the previous step
    "layer_disagreement": 0.25,  # 1 - C: layers attend to different segments
    "attention_entropy": 0.20,  # E: mean over layers, dispersed attention
    "predictive_entropy": 0.20,  # P: mean next-token entropy over the step
}
CUE_BONUS = 1.0  # added per reflection marker ("wait", "actually", ...), at most MAX_CUES
MAX_CUES = 2
Z_CLIP = 8.0  # a single extreme signal cannot dominate the score without bound
FIRE_Z = 2.0  # a signal "fired" on a step when its robust z-score exceeds this
PIVOT_THRESHOLD = 1.5  # a step is a pivot when its score exceeds this
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution * this = its standard deviation
MIN_SCALE = 1e-3  # floor on the robust scale, so a constant signal does not divide by zero


def step_signals(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The four raw per-step signals of one trace, each [S]."""
    entropy = np.asarray(arrays["entropy"], dtype=np.float64)  # [L, S]
    temporal = np.asarray(arrays["temporal_change"], dtype=np.float64)  # [L, S]
    return {
        "temporal_change": temporal.mean(axis=0),  # [S]
        "layer_disagreement": 1.0 - np.asarray(arrays["consistency"], dtype=np.float64),  # [S]
        "attention_entropy": entropy.mean(axis=0),  # [S]
        "predictive_entropy": np.asarray(arrays["pred_entropy_mean"], dtype=np.float64),  # [S]
    }


@dataclass
class PoolStats:
    """Median and robust scale (MAD * 1.4826) of each signal over all steps in the pool."""

    median: dict[str, float]
    scale: dict[str, float]

    def to_dict(self) -> dict:
        return {"median": self.median, "scale": self.scale}


def pool_stats(all_arrays: list[dict[str, np.ndarray]]) -> PoolStats:
    """Robust location/scale per signal. Step 0's temporal change (0 by definition) is left out."""
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in SIGNAL_WEIGHTS}
    for arrays in all_arrays:
        signals = step_signals(arrays)
        for name, values in signals.items():
            pooled[name].append(values[1:] if name == "temporal_change" else values)
    median, scale = {}, {}
    for name, parts in pooled.items():
        values = np.concatenate(parts) if parts else np.zeros(0)
        if values.size == 0:
            median[name], scale[name] = 0.0, 1.0
            continue
        med = float(np.median(values))
        mad = float(np.median(np.abs(values - med)))
        median[name] = med
        scale[name] = max(MAD_TO_SIGMA * mad, MIN_SCALE)
    return PoolStats(median, scale)


@dataclass
class PivotResult:
    """Pivot analysis of one trace. Arrays are [S] (S = number of steps)."""

    scores: np.ndarray  # [S] pivot score per step
    zscores: dict[str, np.ndarray]  # signal -> [S] robust z-score
    fired: list[list[str]]  # per step, the signals with z > FIRE_Z (and "cue" when a marker matched)
    pivots: list[int]  # step indexes with score > PIVOT_THRESHOLD
    density: float  # pivots per 100 completion tokens
    max_score: float = 0.0
    extra: dict = field(default_factory=dict)


def score_trace(arrays: dict[str, np.ndarray], stats: PoolStats, n_completion_tokens: int, *,
                threshold: float = PIVOT_THRESHOLD) -> PivotResult:
    """Pivot score of each step = sum_i w_i * clip(z_i, 0, Z_CLIP) + CUE_BONUS * min(cues, MAX_CUES)."""
    signals = step_signals(arrays)
    n_steps = len(signals["attention_entropy"])
    cues = np.asarray(arrays.get("cue", np.zeros(n_steps)), dtype=np.float64)  # [S]
    zscores = {name: (values - stats.median[name]) / stats.scale[name]
               for name, values in signals.items()}  # each [S]
    if n_steps:
        zscores["temporal_change"][0] = 0.0  # the first step has no previous step to shift from
    scores = np.zeros(n_steps)  # [S]
    for name, weight in SIGNAL_WEIGHTS.items():
        scores += weight * np.clip(zscores[name], 0.0, Z_CLIP)
    scores += CUE_BONUS * np.minimum(cues, MAX_CUES)
    fired = [[name for name in SIGNAL_WEIGHTS if zscores[name][s] > FIRE_Z] + (["cue"] if cues[s] > 0 else [])
             for s in range(n_steps)]
    pivots = [int(s) for s in np.flatnonzero(scores > threshold)]
    density = 100.0 * len(pivots) / max(int(n_completion_tokens), 1)
    return PivotResult(scores, zscores, fired, pivots, density, float(scores.max()) if n_steps else 0.0)
