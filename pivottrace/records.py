"""Plain data shared by the stages and the store: trace result records, FeatureTable, feature column names.

`TraceResult` is what one teacher-forced analysis pass yields; `ProblemTrace` adds the K sampled
completions. trace.py fills them from a model; synthetic.py fills them with realistic fakes.
`FeatureTable` and the feature column names live here too, so the store can build the table
without importing a pipeline stage (features.py computes the rows). No torch, no computation
beyond converting rows to columns, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np


@dataclass
class TraceResult:
    """One analysed completion. L = layers, S = steps, Tc = completion tokens.

    arrays:
        entropy [L, S]: E, mean normalised attention entropy of the step's tokens, in [0, 1].
        segment_attention [L, S, S+1]: m, mean attention mass of the step's tokens on segment k
            (k=0 prompt, k=1+j step j); zero for k > s+1; each [l, s] row sums to 1.
        temporal_change [L, S]: D, Jensen-Shannon divergence (bits, [0, 1]) of m[l,s] vs m[l,s-1]
            on the common support; D[:, 0] = 0.
        consistency [S]: C, mean pairwise cosine similarity of m[:, s] across layers.
        pred_entropy_mean [S], pred_entropy_max [S]: P, entropy (nats) of the next-token
            distributions that predicted the step's tokens, mean and max.
        cue [S]: Q, reflection markers in the step's text.
        token_entropy [Tc]: predictive entropy (nats) of each completion token.
        token_logprob [Tc]: log p of each completion token under the model.
        token_attention_entropy [Tc]: normalised attention entropy of each completion query
            (heads averaged), mean over layers.
        token_shift [Tc]: Jensen-Shannon divergence (bits) of each query's attention over key
            positions from the previous query's, mean over layers; 0 for the first token.
        token_received [Tc]: vertical attention each completion token receives from queries at
            least RECEIVER_MIN_DISTANCE later, averaged over the trace's receiver heads.
        head_kurtosis [L, H]: kurtosis of each head's vertical attention over completion tokens
            (receiver heads are the highest).
    """

    prompt: str
    completion: str
    steps: list[dict]  # {text, char_start, char_end, tok_start, tok_end}; token indexes in the completion
    tokens: list[str]  # completion tokens as text
    n_prompt_tokens: int
    n_completion_tokens: int
    arrays: dict[str, np.ndarray]
    mean_logprob: float | None  # mean log p over completion tokens (None for an empty completion)
    min_logprob: float | None
    answer_prob: float | None  # exp(sum log p) over the final answer's tokens; None when not found
    answer: str | None  # answers.extract_answer(completion)


@dataclass
class ProblemTrace:
    trace: TraceResult  # analysis of the greedy completion
    samples: list[str]  # K sampled completions
    sample_answers: list[str | None]
    generated_tokens: int  # tokens generated for this problem, greedy + samples
    seconds: float  # its share of the batch's generation time (by tokens) plus its own analysis


# Feature columns the uncertainty model reads, all numeric. Names match the `features` table.
NUMERIC_FEATURES = (
    "mean_logprob", "min_logprob", "answer_prob",
    "vote_share", "n_distinct", "vote_entropy",
    "answer_found", "greedy_agrees", "length",
    "pivot_density", "max_pivot_score", "mean_entropy", "mean_temporal", "mean_consistency",
)


# Token-level pivot columns (pivots.score_tokens), per problem: strongest pivot-token evidence
# (-log10 q), share of forking tokens, and each token signal's largest value. Kept out of
# NUMERIC_FEATURES so the cold-start prior is unchanged; the estimators can add them by name.
PIVOT_FEATURES = ("max_token_score", "n_pivot_tokens", "forking_share", "max_surprisal", "max_attention_shift",
                  "max_received")
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
