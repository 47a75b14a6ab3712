"""The trace statistics the slow, obvious way, from full attention maps: the tests' reference.

`reference_stats` recomputes what trace.analyse_ids streams (entropy, segment attention, temporal
change, consistency, predictive entropy, and the per-token attention entropy, attention shift and
receiver-head attention) with plain loops over materialised [T, T] maps, so the
tests can check the fast path against it. Test-only: nothing in the package imports it.
"""

from __future__ import annotations

import math

import numpy as np

from pivottrace.trace import RECEIVER_MIN_DISTANCE, vertical_attention


def normalised_entropy(p: np.ndarray) -> float:
    """Entropy of distribution `p` (over its visible keys) divided by log(len(p)); 0 when len(p) == 1."""
    p = np.asarray(p, dtype=np.float64)
    if p.size <= 1:
        return 0.0
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (in [0, 1]) of two distributions on the same support."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    mid = 0.5 * (p + q)

    def kl(a):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / mid[nz])).sum())

    return max(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def reference_stats(attentions, *, q_start: int, token_step: np.ndarray, n_steps: int,
                    logits: np.ndarray | None = None, token_ids: np.ndarray | None = None) -> dict:
    """The §3 statistics the slow, obvious way, from full attention maps (tests and benchmark only).

    attentions: per layer [H, T, T] (or [1, H, T, T]) probabilities, e.g. eager + output_attentions.
    token_step [Tc]: step of each completion token. logits [T, V] and token_ids [T], when given,
    add the predictive-entropy arrays. Returns the arrays of TraceResult except "cue".
    The token arrays too; receiver heads are picked from the full maps by trace.vertical_attention,
    as in the streamed path.
    """
    token_step = np.asarray(token_step)
    n_layers, seq = len(attentions), np.shape(attentions[0])[-1]
    segment = np.concatenate([np.zeros(q_start, dtype=int), 1 + token_step])  # [T] key -> segment
    entropy = np.zeros((n_layers, n_steps))
    mass = np.zeros((n_layers, n_steps, n_steps + 1))
    counts = np.bincount(token_step, minlength=n_steps)
    for layer, attention in enumerate(attentions):
        mean = np.asarray(attention, dtype=np.float64).reshape(-1, seq, seq).mean(0)  # [T, T] heads averaged
        for t in range(q_start, seq):
            s = token_step[t - q_start]
            p = mean[t, :t + 1]  # [t+1] the keys query t can see
            entropy[layer, s] += normalised_entropy(p) / counts[s]
            mass[layer, s] += np.bincount(segment[:t + 1], weights=p, minlength=n_steps + 1) / counts[s]
    change = np.zeros((n_layers, n_steps))
    for layer in range(n_layers):
        for s in range(1, n_steps):
            p = list(mass[layer, s, :s]) + [mass[layer, s, s] + mass[layer, s, s + 1]]
            q = list(mass[layer, s - 1, :s + 1])
            change[layer, s] = js_divergence(p, q)
    consistency = np.ones(n_steps)
    if n_layers > 1:
        for s in range(n_steps):
            sims = [float(mass[i, s] @ mass[j, s] / (np.linalg.norm(mass[i, s]) * np.linalg.norm(mass[j, s])))
                    for i in range(n_layers) for j in range(i + 1, n_layers)]
            consistency[s] = np.mean(sims)
    out = {"entropy": entropy, "segment_attention": mass, "temporal_change": change, "consistency": consistency}
    n_tokens = seq - q_start
    token_entropy_attn, token_shift = np.zeros(n_tokens), np.zeros(n_tokens)
    received = np.zeros((n_layers, np.shape(attentions[0])[-3], n_tokens))  # [L, H, Tc]
    for layer, attention in enumerate(attentions):
        heads = np.asarray(attention, dtype=np.float64).reshape(-1, seq, seq)  # [H, T, T]
        mean = heads.mean(0)  # [T, T]
        for t in range(q_start, seq):
            token_entropy_attn[t - q_start] += normalised_entropy(mean[t, :t + 1]) / n_layers
            if t > q_start:
                token_shift[t - q_start] += js_divergence(mean[t, :t + 1], np.append(mean[t - 1, :t], 0.0)) / n_layers
        for k in range(q_start, seq):
            received[layer, :, k - q_start] = heads[:, k + RECEIVER_MIN_DISTANCE:, k].sum(-1)
    out.update(token_attention_entropy=token_entropy_attn, token_shift=token_shift,
               **vertical_attention(received, seq))
    if logits is not None:
        logits = np.asarray(logits, dtype=np.float64)
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))  # [T, V]
        rows = np.arange(q_start - 1, seq - 1)  # positions predicting the completion tokens
        token_entropy = -(np.exp(logp[rows]) * logp[rows]).sum(-1)  # [Tc]
        out["token_entropy"] = token_entropy
        out["token_logprob"] = logp[rows, np.asarray(token_ids)[q_start:]]
        out["pred_entropy_mean"] = np.array([token_entropy[token_step == s].mean() for s in range(n_steps)])
        out["pred_entropy_max"] = np.array([token_entropy[token_step == s].max() for s in range(n_steps)])
    return out
