"""Traces + sampled answers -> one feature row per problem (pivots, consistency, confidence).

Input: stored traces (arrays decoded) and their K sampled answers. Output: rows for the
`features` table; `FeatureTable`, the columnar form the estimators and the router read, is
defined in records.py (re-exported here). Pool statistics for the pivot z-scores are computed
over all traces passed in.
It does not estimate uncertainty or route (see uncertainty.py, route.py).
"""

from __future__ import annotations

import json

import numpy as np

from .answers import canonical, majority_vote
from .pivots import PoolStats, pool_stats, score_trace
from .records import NUMERIC_FEATURES, ROUTING_COLUMNS, FeatureTable  # noqa: F401 (re-exported)


def feature_row(trace: dict, answers: list[str | None], stats: PoolStats) -> dict:
    """One features row from a trace dict (as from store.iter_trace_arrays) and its samples."""
    arrays = trace["arrays"]
    pivots = score_trace(arrays, stats, trace["n_completion_tokens"] or 0)
    greedy = canonical(trace["answer"])
    vote = majority_vote([trace["answer"]] + list(answers))  # the greedy chain votes too
    majority = vote.majority
    entropy = np.asarray(arrays.get("entropy", np.zeros((1, 0))))  # [L, S]
    temporal = np.asarray(arrays.get("temporal_change", np.zeros((1, 0))))  # [L, S]
    consistency = np.asarray(arrays.get("consistency", np.zeros(0)))  # [S]
    cues = np.asarray(arrays.get("cue", np.zeros(0)))  # [S]
    return {
        "problem_id": trace["problem_id"], "model_id": trace["model_id"],
        "answer_found": int(greedy is not None), "greedy_answer": greedy,
        "majority_answer": majority, "greedy_agrees": int(greedy is not None and greedy == majority),
        "vote_share": vote.share, "n_distinct": vote.n_distinct, "vote_entropy": vote.entropy,
        "mean_logprob": trace["mean_logprob"], "min_logprob": trace["min_logprob"],
        "answer_prob": trace["answer_prob"], "length": int(trace["n_completion_tokens"] or 0),
        "n_steps": len(pivots.scores), "n_pivots": len(pivots.pivots),
        "pivot_density": pivots.density, "max_pivot_score": pivots.max_score,
        "mean_entropy": float(entropy.mean()) if entropy.size else 0.0,
        "mean_temporal": float(temporal[:, 1:].mean()) if temporal.shape[-1] > 1 else 0.0,
        "mean_consistency": float(consistency.mean()) if consistency.size else 1.0,
        "n_cues": int(cues.sum()) if cues.size else 0,
        "pivot_scores": json.dumps([round(float(x), 4) for x in pivots.scores]),
        "pivot_signals": json.dumps(pivots.fired),
    }


def build_features(traces: list[dict], answers: dict) -> tuple[list[dict], PoolStats]:
    """Feature rows for a pool of traces; `answers` maps (problem_id, model_id) -> sample answers."""
    stats = pool_stats([t["arrays"] for t in traces])
    rows = [feature_row(t, answers.get((t["problem_id"], t["model_id"]), []), stats) for t in traces]
    return rows, stats
