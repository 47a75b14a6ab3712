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
from .pivot_weights import PivotWeights, apply_weights, fit_pivot_weights, labelled_chains
from .pivots import PoolStats, TokenNull, analyse_trace, pool_stats, token_null
from .records import NUMERIC_FEATURES, PIVOT_FEATURES, ROUTING_COLUMNS, FeatureTable  # noqa: F401 (re-exported)


def feature_row(trace: dict, answers: list[str | None], stats: PoolStats, null: TokenNull | None = None, *,
                pivot_weights: PivotWeights | None = None) -> dict:
    """One features row from a trace dict (as from store.iter_trace_arrays) and its samples.
    With `pivot_weights` (fitted from step labels), pivots are scored with them instead of the hand-set rule."""
    arrays = trace["arrays"]
    texts = trace.get("tokens")
    null = null if null is not None else token_null([arrays], [texts])
    steps = trace.get("steps") or []
    pivots, tokens = analyse_trace(arrays, steps, stats, null, trace["n_completion_tokens"] or 0, tokens=texts)
    if pivot_weights is not None and pivot_weights.n_steps and len(tokens.step_scores) == len(pivots.scores):
        pivots = apply_weights(pivot_weights, pivots, tokens, trace["n_completion_tokens"] or 0)
    n_tokens = len(tokens.token_q)
    forking = np.asarray(arrays.get("token_entropy", np.zeros(0)), dtype=np.float64)
    token_max = {name: float(values.max()) if values.size else 0.0 for name, values in tokens.step_max.items()}
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
        "max_token_score": float(tokens.step_scores.max()) if tokens.step_scores.size else 0.0,
        "n_pivot_tokens": len(tokens.pivot_tokens),
        "forking_share": float((forking > null.forking_cut).mean()) if forking.size and n_tokens else 0.0,
        "max_surprisal": token_max.get("surprisal", 0.0),
        "max_attention_shift": token_max.get("attention_shift", 0.0),
        "max_received": token_max.get("received", 0.0),
    }


def build_features(traces: list[dict], answers: dict, *,
                   pivot_weights: PivotWeights | None = None) -> tuple[list[dict], PoolStats]:
    """Feature rows for a pool of traces; `answers` maps (problem_id, model_id) -> sample answers.
    `pivot_weights`: fitted from step labels (fit_pool_pivot_weights); None = the hand-set rule."""
    stats = pool_stats([t["arrays"] for t in traces])
    null = token_null([t["arrays"] for t in traces], [t.get("tokens") for t in traces])
    rows = [feature_row(t, answers.get((t["problem_id"], t["model_id"]), []), stats, null,
                        pivot_weights=pivot_weights) for t in traces]
    return rows, stats


def fit_pool_pivot_weights(traces: list[dict], step_labels: list[dict], accepted: set[str]) -> PivotWeights | None:
    """Pivot weights fitted on the pool's labelled traces (pivot_weights.py); None without step labels."""
    if not step_labels:
        return None
    stats = pool_stats([t["arrays"] for t in traces])
    null = token_null([t["arrays"] for t in traces], [t.get("tokens") for t in traces])
    return fit_pivot_weights(labelled_chains(traces, stats, null, step_labels, accepted))
