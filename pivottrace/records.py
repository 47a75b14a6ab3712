"""Result records shared by tracing, storage, tests and benchmarks (no torch here).

`TraceResult` is what one teacher-forced analysis pass yields; `ProblemTrace` adds the K sampled
completions. trace.py fills them from a model; synthetic.py fills them with realistic fakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TraceResult:
    """One analysed reasoning chain. L = layers, S = steps, Tc = completion tokens.

    arrays:
        entropy            [L, S]     mean normalised attention entropy of the step's tokens
        segment_attention  [L, S, S+1] attention mass on segment k (0 = prompt, 1+j = step j)
        temporal_change    [L, S]     JS divergence from the previous step (0 for step 0)
        consistency        [S]        mean pairwise cosine of segment attention across layers
        pred_entropy_mean  [S]        mean next-token entropy (nats) over the step
        pred_entropy_max   [S]        max next-token entropy (nats) over the step
        cue                [S]        reflection markers in the step
        token_entropy      [Tc]       next-token entropy that produced each completion token
        token_logprob      [Tc]       log-probability of each completion token
    """

    prompt: str
    completion: str
    steps: list[dict]  # {text, char_start, char_end, tok_start, tok_end}; token ids within completion
    tokens: list[str]  # completion tokens as text
    n_prompt_tokens: int
    n_completion_tokens: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    mean_logprob: float = 0.0
    min_logprob: float = 0.0
    answer_prob: float | None = None  # P(answer tokens) when an answer was found
    answer: str | None = None


@dataclass
class ProblemTrace:
    """A problem's greedy trace plus its K sampled completions."""

    trace: TraceResult
    samples: list[str]
    sample_answers: list[str | None]
    generated_tokens: int = 0
    seconds: float = 0.0
