"""Result records shared by tracing, storage, tests and benchmarks (no torch here).

`TraceResult` is what one teacher-forced analysis pass yields; `ProblemTrace` adds the K sampled
completions. trace.py fills them from a model; synthetic.py fills them with realistic fakes.
"""

from __future__ import annotations

from dataclasses import dataclass

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
