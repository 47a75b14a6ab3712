"""Traces + sampled answers -> one feature row per problem (pivots, consistency, confidence).

Input: stored traces (arrays decoded) and their K sampled answers. Output: rows for the
`features` table, and `FeatureTable`, the columnar form the estimators and the router read. Pool
statistics for the pivot z-scores are computed over all traces passed in.
It does not estimate uncertainty or route (see uncertainty.py, route.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

from .answers import canonical, majority_vote
from .pivots import PoolStats, pool_stats, score_trace

# Feature columns the uncertainty model reads, all numeric. Names match the `features` table.
NUMERIC_FEATURES = (
    "mean_logprob", "min_logprob", "answer_prob",
    "vote_share", "n_distinct", "vote_entropy",
    "answer_found", "greedy_agrees", "length",
    "pivot_density", "max_pivot_score", "mean_entropy", "mean_temporal", "mean_consistency",
)


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


# Columns besides NUMERIC_FEATURES that routing reads from every row.
ROUTING_COLUMNS = ("pivot_density", "vote_share")


@dataclass
class FeatureTable:
    """A pool's feature rows as columns: numbers as float arrays (NaN = missing), converted once.

    Built from feature dicts (`from_rows`) or straight from the store (store.load_feature_table,
    without a dict per row). `model_ids` and `majority_answers` are kept when the rows have them;
    routing needs both. `cache` holds the prior's outputs, keyed by the prior.
    """

    ids: list[str]  # [N] problem ids
    columns: dict[str, np.ndarray]  # name -> [N] float64
    model_ids: list | None = None  # [N]
    majority_answers: list | None = None  # [N] canonical majority answer, None where there is none
    cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, rows, names=NUMERIC_FEATURES) -> "FeatureTable":
        if isinstance(rows, FeatureTable):
            return rows
        names = tuple(names)
        try:  # one pass over the rows; a row without some column falls back to .get
            values = [itemgetter(*names)(r) for r in rows] if len(names) > 1 else None
        except KeyError:
            values = None
        if values is not None:
            matrix = np.array(values, dtype=np.float64).reshape(len(rows), len(names))  # [N, F], None -> NaN
            columns = {name: matrix[:, j].copy() for j, name in enumerate(names)}
        else:
            columns = {name: np.array([r.get(name) for r in rows], dtype=np.float64).reshape(len(rows))
                       for name in names}  # None -> NaN
        return cls([r["problem_id"] for r in rows], columns,
                   model_ids=[r.get("model_id") for r in rows],
                   majority_answers=[r.get("majority_answer") for r in rows])

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, name: str) -> np.ndarray:
        """[N] one column as stored (NaN where missing)."""
        if name not in self.columns:
            raise KeyError(f"Feature table has no column {name!r}.")
        return self.columns[name]

    def matrix(self, names) -> np.ndarray:
        """[N, F] with each column's missing values replaced by its median (0 if all missing)."""
        out = np.empty((len(self), len(names)), dtype=np.float64)  # [N, F]
        for j, name in enumerate(names):
            column = self.column(name)
            nan = np.isnan(column)
            out[:, j] = column
            if nan.any():
                out[nan, j] = 0.0 if nan.all() else float(np.median(column[~nan]))
        return out

    def take(self, indexes: np.ndarray) -> "FeatureTable":
        def pick(values):
            return None if values is None else [values[i] for i in indexes]

        return FeatureTable(pick(self.ids), {k: v[indexes] for k, v in self.columns.items()},
                            model_ids=pick(self.model_ids), majority_answers=pick(self.majority_answers))
