"""Synthetic traces with realistic shapes, for tests, benchmarks and the scale check.

`synthetic_trace(problem, rng)` returns a `ProblemTrace` whose per-step arrays have the shapes a
real trace has (L layers x S steps), and whose answers are wrong more often when the latent
difficulty is high, with more pivots, lower agreement and lower confidence, so calibration and
routing have a real (if simple) relation to learn. It never touches a model.
"""

from __future__ import annotations

import numpy as np

from .answers import canonical
from .records import ProblemTrace, TraceResult

N_LAYERS = 30  # like SmolLM2-135M


def synthetic_trace(problem, rng: np.random.Generator, *, n_layers: int = N_LAYERS,
                    n_samples: int = 4) -> ProblemTrace:
    """A fake trace of `problem` (needs .text and .gold). Difficulty drives errors and signals."""
    difficulty = rng.beta(2, 2)  # latent, in (0, 1)
    n_steps = int(rng.integers(3, 14))
    tokens_per_step = rng.integers(6, 30, size=n_steps)  # [S]
    n_tokens = int(tokens_per_step.sum())
    gold = canonical(problem.gold) or "0"
    wrong_answer = str(int(float(gold)) + int(rng.integers(1, 9))) if gold.lstrip("-").isdigit() else gold + "x"

    def draw_answer() -> str | None:
        if rng.random() < 0.05 + 0.1 * difficulty:
            return None
        return wrong_answer if rng.random() < difficulty ** 1.5 else gold

    greedy = draw_answer()
    samples = [draw_answer() for _ in range(n_samples)]

    entropy = np.clip(rng.normal(0.55 + 0.1 * difficulty, 0.05, (n_layers, n_steps)), 0, 1)  # [L, S]
    temporal = np.clip(rng.gamma(2.0, 0.02 + 0.02 * difficulty, (n_layers, n_steps)), 0, 1)  # [L, S]
    temporal[:, 0] = 0.0
    consistency = np.clip(rng.normal(0.9 - 0.1 * difficulty, 0.03, n_steps), 0, 1)  # [S]
    pred_mean = np.abs(rng.normal(1.0 + difficulty, 0.3, n_steps))  # [S]
    n_planted = rng.poisson(3 * difficulty)
    for step in rng.choice(np.arange(1, n_steps), size=min(n_planted, n_steps - 1), replace=False):
        temporal[:, step] += 0.3
        consistency[step] -= 0.2
    segment = rng.dirichlet(np.ones(n_steps + 1), size=(n_layers, n_steps))  # [L, S, S+1]
    segment *= np.tril(np.ones((n_steps, n_steps + 1)), k=1)[None]  # steps see the past and themselves
    segment /= segment.sum(axis=-1, keepdims=True)
    token_logprob = -np.abs(rng.normal(0.3 + 0.8 * difficulty, 0.4, n_tokens))  # [Tc]

    texts, steps, start_tok, start_char = [], [], 0, 0
    for s, count in enumerate(tokens_per_step):
        text = f"Step {s + 1}: we work on part {s + 1} of the problem.\n"
        if s == n_steps - 1:
            text = f"Answer: {greedy}" if greedy is not None else "I am not sure."
        steps.append({"text": text, "char_start": start_char, "char_end": start_char + len(text),
                      "tok_start": start_tok, "tok_end": start_tok + int(count)})
        texts.append(text)
        start_char += len(text)
        start_tok += int(count)
    arrays = {
        "entropy": entropy, "segment_attention": segment, "temporal_change": temporal,
        "consistency": consistency, "pred_entropy_mean": pred_mean,
        "pred_entropy_max": pred_mean + np.abs(rng.normal(0.5, 0.2, n_steps)),
        "cue": (rng.random(n_steps) < 0.05 * difficulty).astype(float),
        "token_entropy": np.abs(rng.normal(1.0 + difficulty, 0.3, n_tokens)),
        "token_logprob": token_logprob,
        "token_attention_entropy": np.clip(rng.normal(0.5 + 0.1 * difficulty, 0.05, n_tokens), 0, 1),
        "token_shift": np.abs(rng.normal(0.05 + 0.05 * difficulty, 0.02, n_tokens)),
        "token_received": np.abs(rng.normal(0.01, 0.005, n_tokens)),
        "head_kurtosis": rng.normal(3.0, 1.0, (n_layers, 9)),
    }
    result = TraceResult(
        prompt=problem.text, completion="".join(texts), steps=steps,
        tokens=[f"t{i}" for i in range(n_tokens)], n_prompt_tokens=int(40 + len(problem.text) // 4),
        n_completion_tokens=n_tokens, arrays=arrays, mean_logprob=float(token_logprob.mean()),
        min_logprob=float(token_logprob.min()),
        answer_prob=float(np.exp(token_logprob[-2:].sum())) if greedy is not None else None,
        answer=greedy,
    )
    sample_texts = [f"... Answer: {a}" if a is not None else "..." for a in samples]
    return ProblemTrace(result, sample_texts, samples, generated_tokens=n_tokens * (1 + n_samples), seconds=0.0)
