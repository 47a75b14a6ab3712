"""Generate reasoning chains and reduce the model's attention to per-step statistics on the fly.

The only module that imports torch / transformers. Generation (greedy + K samples, batched) and
analysis (one teacher-forced forward over prompt + completion) are kept apart, so completions
sampled elsewhere can be analysed too. In the analysis forward a custom attention function runs the
prompt queries through SDPA and computes the completion queries' attention probabilities one layer
and one query chunk at a time, uses them for the layer's output and reduces them at once to the
DESIGN.md §3 statistics: the layers x heads x seq x seq tensor, or even heads x seq x seq for one
layer, never exists.
It does not score pivots (pivots.py), vote (answers.py) or store anything (store.py).
"""

from __future__ import annotations

import contextvars
import inspect
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .answers import extract_answer
from .models import DEFAULT_SPEC, ModelNotFoundError, ModelSource, resolve_model
from .records import ProblemTrace, TraceResult
from .steps import cue_counts, segment_steps

PROMPT_TEMPLATE = ("{problem}\n\nSolve it step by step. Then give the final answer on its own line "
                   "as 'Answer: <number>'.")
# Worked examples shown as earlier chat turns: one calculation per line, then the answer line.
# With them the embedded model's greedy accuracy on the demo mix rose from 0.08 to 0.28 (96
# problems; README), its chains stay a few lines long instead of looping through numbered lists,
# and nearly every chain ends in a parsable "Answer:" line. The names are not the generator's.
PROMPT_EXAMPLES = (
    ("Lena has 4 shells. She finds 3 more shells. How many shells does Lena have now?",
     "Lena has 4 + 3 = 7 shells.\nAnswer: 7"),
    ("Omar has 9 cards. He gives away 5 cards. Then he buys 6 more cards. How many cards does Omar have now?",
     "After giving away 5, Omar has 9 - 5 = 4 cards.\nAfter buying 6 more, he has 4 + 6 = 10 cards.\nAnswer: 10"),
    ("Sara has 3 stickers. The number of stickers doubles to 2 times as many. Then she uses 4 stickers. "
     "How many stickers does Sara have in the end?",
     "2 times as many is 3 * 2 = 6 stickers.\nAfter using 4, she has 6 - 4 = 2 stickers.\nAnswer: 2"),
    ("Ken has 8 books. Ken loses 3 of the books. How many books does Ken have in the end?",
     "Ken has 8 - 3 = 5 books.\nAnswer: 5"),
)
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES_HELP = "auto | cpu | cuda | cuda:N | mps"
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
ATTN_IMPL = "pivottrace"  # SDPA, plus streamed statistics while a collector is active
ARRAY_KEYS = ("entropy", "segment_attention", "temporal_change", "consistency", "pred_entropy_mean",
              "pred_entropy_max", "cue", "token_entropy", "token_logprob", "token_attention_entropy",
              "token_shift", "token_received", "head_kurtosis")
# Receiver heads (Thought Anchors, Bogdan et al. 2025): heads whose vertical attention (attention a
# key token receives from later queries) is concentrated on a few tokens, i.e. has a high kurtosis.
RECEIVER_HEADS = 16  # heads averaged into token_received: 16 of SmolLM2's 270 (~6 %) ...
RECEIVER_HEAD_SHARE = 0.25  # ... but never more than a quarter of a small model's heads
RECEIVER_MIN_DISTANCE = 4  # queries this close to a key are left out: local attention is not "receiving"
_ANSWER_LINE_RE = re.compile(r"answer\s*(?:is|:|=)[^\n]*\d[^\n]*\n", re.I)  # a finished answer line
_STOP_TAIL_TOKENS = 48  # tokens decoded to look for the answer line when a newline is generated
_NUCLEUS_CANDIDATES = 512  # top-k pre-selection for top-p sampling; exact whenever it holds top_p of the mass


@dataclass
class TraceConfig:
    max_new_tokens: int = 256  # generation budget per completion (tokens)
    n_samples: int = 4  # K sampled completions per problem for the answer vote
    temperature: float = 0.8  # sampling temperature of the K samples
    top_p: float = 0.95  # nucleus sampling mass of the K samples
    query_chunk: int = 128  # completion query rows per attention recomputation chunk
    batch_size: int = 8  # problems decoded together, 1 + K rows each (40 rows: where CPU decoding turns compute-bound)
    seed: int = 0  # torch seed for sampling: same problems + config -> same samples
    prompt_template: str = PROMPT_TEMPLATE  # "{problem}" is replaced by the problem text
    prompt_examples: tuple = PROMPT_EXAMPLES  # (problem, worked solution) pairs shown first; () for none
    stop_at_answer: bool = True  # stop a completion after its "Answer: <number>" line (EOS stops anyway)
    dtype: str = "auto"  # "float32" | "bfloat16" | "float16" | "auto": bfloat16 on a GPU, or where the CPU has native bf16 (~1.4x faster)

    def __post_init__(self):
        checks = {"max_new_tokens": self.max_new_tokens >= 1, "n_samples": self.n_samples >= 0,
                  "temperature": self.temperature > 0, "top_p": 0 < self.top_p <= 1,
                  "query_chunk": self.query_chunk >= 1, "batch_size": self.batch_size >= 1,
                  "prompt_template": "{problem}" in self.prompt_template,
                  "prompt_examples": all(len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)
                                         for pair in self.prompt_examples),
                  "dtype": self.dtype in DTYPES}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid TraceConfig {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")


# ---------------------------------------------------------------------------------------------
# Streamed attention statistics


_COLLECTOR: contextvars.ContextVar["_Collector | None"] = contextvars.ContextVar("pivottrace_collector",
                                                                                 default=None)


@dataclass
class _Collector:
    """Per-step sums, filled layer by layer by the attention function during one analysis forward."""

    q_start: int  # position of the first completion token: queries q_start..T-1 are analysed
    key_segment: torch.Tensor  # [T] segment of each key position (0 prompt, 1+j step j), long
    query_step: torch.Tensor  # [Tc] step of each completion query (long)
    query_chunk: int
    entropy_sum: torch.Tensor  # [L, S] sum of normalised entropies
    mass_sum: torch.Tensor  # [L, S, S+1] sum of segment masses
    token_entropy_sum: torch.Tensor  # [Tc] normalised attention entropy of each query, summed over layers
    token_shift_sum: torch.Tensor  # [Tc] JS shift from the previous query's attention, summed over layers
    received: torch.Tensor  # [L, H, Tc] attention each completion key receives from queries >= key + distance
    layers_seen: set = field(default_factory=set)

    def add_layer(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
        """Reduce one layer's attention of the completion queries, chunk by chunk.

        query [1, H, T, d], key and value [1, KVH, T, d]; attention_mask None (causal) or bool
        [1, 1, T, T]. Returns the attention output of the completion queries [1, Tc, H, d]: the
        probabilities are at hand anyway, so SDPA only has to run for the prompt queries.
        """
        if query.shape[0] != 1 or query.shape[2] != key.shape[2]:
            raise ValueError("the analysis forward takes one unpadded sequence without a cache")
        _, n_heads, seq, head_dim = query.shape
        n_kv = key.shape[1]
        if attention_mask is not None and attention_mask.dtype != torch.bool:
            raise ValueError("the pivottrace attention expects a boolean (sdpa) mask")
        groups = n_heads // n_kv
        q = (query[0].float() * scaling).reshape(n_kv, groups, seq, head_dim)  # [KVH, G, T, d] GQA groups
        k_t = key[0].float().transpose(-1, -2)  # [KVH, d, T]
        v = value[0].float()  # [KVH, T, d]
        out = torch.empty(n_kv, groups, seq - self.q_start, head_dim, device=query.device)  # [KVH, G, Tc, d]
        head_mean = torch.full((n_heads,), 1.0 / n_heads, device=query.device)  # [H]
        future = torch.ones(self.query_chunk, self.query_chunk, dtype=torch.bool,
                            device=query.device).triu_(1)  # [chunk, chunk] keys after the query
        positions = torch.arange(seq, device=query.device)  # [T]
        previous_row = None  # [a] heads-averaged attention of the query before the chunk
        for a in range(self.q_start, seq, self.query_chunk):
            b = min(a + self.query_chunk, seq)  # rows a..b-1 see keys 0..b-1 at most
            c = b - a
            q_chunk = q[:, :, a:b].reshape(n_kv, groups * c, head_dim)  # [KVH, G*c, d]
            scores = torch.bmm(q_chunk, k_t[..., :b]).view(n_kv, groups, c, b)  # [KVH, G, c, b]
            if attention_mask is None:  # causal: only the diagonal block has hidden keys
                scores[..., a:b].masked_fill_(future[:c, :c], float("-inf"))
                n_visible = positions[a:b] + 1  # [c]
            else:
                visible = attention_mask[0, 0, a:b, :b]  # [c, b]
                scores.masked_fill_(~visible, float("-inf"))
                n_visible = visible.sum(-1)  # [c]
            probs = torch.softmax(scores, dim=-1)  # [KVH, G, c, b] each row over its visible keys
            del scores
            out[:, :, a - self.q_start:b - self.q_start] = torch.bmm(
                probs.view(n_kv, groups * c, b), v[:, :b]).view(n_kv, groups, c, head_dim)  # [KVH, G, c, d]
            far = (positions[None, self.q_start:b] <= positions[a:b, None] - RECEIVER_MIN_DISTANCE).float()  # [c, b-P]
            self.received[layer, :, :b - self.q_start] += torch.einsum(
                "hck,ck->hk", probs.view(n_heads, c, b)[..., self.q_start:], far)  # [H, b-P] vertical attention
            mean_probs = (head_mean @ probs.view(n_heads, c * b)).view(c, b)  # [c, b] heads averaged
            del probs
            rows = slice(a - self.q_start, b - self.q_start)
            shift = _row_shift(mean_probs, previous_row)  # [c] bits; 0 for the first completion query
            previous_row = mean_probs[-1]
            self.token_shift_sum[rows] += shift
            entropy = -torch.linalg.vecdot(mean_probs, mean_probs.clamp_min(1e-30).log())  # [c] nats (0 log 0 = 0)
            log_n = n_visible.to(entropy.dtype).log()  # [c]
            norm_entropy = torch.where(n_visible > 1, entropy / log_n.clamp_min(1e-12), 0.0).clamp_(0.0, 1.0)  # [c]
            mass = mean_probs.new_zeros(c, self.mass_sum.shape[-1]).index_add_(
                1, self.key_segment[:b], mean_probs)  # [c, S+1]: O(c*b), where a one-hot matmul was O(c*b*S)
            steps = self.query_step[a - self.q_start:b - self.q_start]  # [c]
            self.entropy_sum[layer].index_add_(0, steps, norm_entropy)
            self.mass_sum[layer].index_add_(0, steps, mass)
            self.token_entropy_sum[rows] += norm_entropy
        self.layers_seen.add(layer)
        return out.reshape(n_heads, seq - self.q_start, head_dim).transpose(0, 1)[None].to(query.dtype)


def _row_shift(rows: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """Jensen-Shannon divergence (bits) of each attention row from the row before it. rows [c, b].

    Row i covers keys 0..b-1 (zeros past what it can see); the row before row 0 is `previous`
    [a <= b] (zero-padded), or, when None, row 0 gets 0: the first completion query has no
    analysed predecessor. JS = H(mid) - (H(p) + H(q)) / 2, in float64 (small differences of entropies).
    """
    p = rows.double()  # [c, b]
    q = torch.zeros_like(p)  # [c, b]
    q[1:] = p[:-1]
    if previous is not None:
        q[0, :previous.shape[0]] = previous.double()
    mid = 0.5 * (p + q)
    neg_h = lambda x: torch.xlogy(x, x).sum(-1)  # noqa: E731  [c] -H in nats
    shift = ((0.5 * (neg_h(p) + neg_h(q)) - neg_h(mid)) / math.log(2)).clamp_(0.0, 1.0)  # [c]
    if previous is None:
        shift[0] = 0.0
    return shift.float()


def _pivottrace_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """SDPA attention; while a collector is active, the completion queries go through the collector.

    query [B, H, T, d], key/value [B, KVH, T, d] -> (output [B, T, H, d], None), as sdpa_attention_forward.
    """
    collector = _COLLECTOR.get()
    if collector is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    start = collector.q_start
    prompt_mask = None if attention_mask is None else attention_mask[..., :start, :start]
    prompt_out, _ = sdpa_attention_forward(module, query[:, :, :start], key[:, :, :start], value[:, :, :start],
                                           prompt_mask, scaling=scaling, **kwargs)  # [1, P, H, d]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    completion_out = collector.add_layer(module.layer_idx, query, key, value, attention_mask, scale)  # [1, Tc, H, d]
    return torch.cat([prompt_out, completion_out], dim=1), None


AttentionInterface.register(ATTN_IMPL, _pivottrace_attention)
AttentionMaskInterface.register(ATTN_IMPL, sdpa_mask)  # bool mask, or None when plain causal


# ---------------------------------------------------------------------------------------------
# Pure statistics (numpy) of the streamed path (tests/reference_stats.py recomputes them the slow way)


def temporal_change(mass: np.ndarray) -> np.ndarray:
    """D [L, S] from m [L, S, S+1].

    D[l, s] = JS(P, Q) with buckets (prompt, step 0, ..., step s-2, recent): P = m[l, s] with
    "recent" pooling steps s-1 and s; Q = m[l, s-1] with "recent" = step s-1. D[l, 0] = 0.
    """
    n_layers, n_steps = mass.shape[:2]
    out = np.zeros((n_layers, n_steps))
    for s in range(1, n_steps):
        p = mass[:, s, :s + 1].astype(np.float64).copy()  # [L, s+1] prompt, steps 0..s-1
        p[:, s] += mass[:, s, s + 1]  # recent = steps s-1 and s
        q = mass[:, s - 1, :s + 1].astype(np.float64)  # [L, s+1] prompt, steps 0..s-2, step s-1
        mid = 0.5 * (p + q)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_p = np.where(p > 0, p * np.log2(p / mid), 0.0).sum(-1)
            kl_q = np.where(q > 0, q * np.log2(q / mid), 0.0).sum(-1)
        out[:, s] = np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0)
    return out


def layer_consistency(mass: np.ndarray) -> np.ndarray:
    """C [S] from m [L, S, S+1]: mean pairwise cosine similarity of m[:, s] over layer pairs (1 if L == 1)."""
    n_layers, n_steps = mass.shape[:2]
    if n_layers == 1:
        return np.ones(n_steps)
    unit = mass / np.maximum(np.linalg.norm(mass, axis=-1, keepdims=True), 1e-12)  # [L, S, S+1]
    gram = np.einsum("isk,jsk->sij", unit, unit)  # [S, L, L]
    off_diagonal = gram.sum((1, 2)) - np.trace(gram, axis1=1, axis2=2)  # [S]
    return off_diagonal / (n_layers * (n_layers - 1))


def vertical_attention(received: np.ndarray, seq: int) -> dict[str, np.ndarray]:
    """Receiver heads and the attention each completion token receives from them.

    received [L, H, Tc]: per head, the attention completion key k got, summed over the queries at
    least RECEIVER_MIN_DISTANCE after it; seq = prompt + completion length. Each sum becomes a
    mean over those queries (the vertical attention v[l, h, k]); a head's kurtosis is the Fisher
    kurtosis of v over the keys that have such queries (needs 4). The RECEIVER_HEADS heads with
    the highest kurtosis are the receiver heads; token_received [Tc] is their mean v (0 for the
    last keys, which no query is far enough from). Returns head_kurtosis [L, H] (0 where
    undefined) and token_received [Tc].
    """
    n_layers, n_heads, n_tokens = received.shape
    key_pos = seq - n_tokens + np.arange(n_tokens)  # [Tc] absolute positions
    n_far = seq - key_pos - RECEIVER_MIN_DISTANCE  # [Tc] queries far enough after each key
    valid = n_far > 0  # [Tc]
    if valid.sum() < 4:
        return {"head_kurtosis": np.zeros((n_layers, n_heads)), "token_received": np.zeros(n_tokens)}
    vertical = received[..., valid] / n_far[valid]  # [L, H, V]
    centred = vertical - vertical.mean(-1, keepdims=True)
    variance = (centred ** 2).mean(-1)  # [L, H]
    kurtosis = np.where(variance > 1e-20, (centred ** 4).mean(-1) / np.maximum(variance, 1e-20) ** 2 - 3.0, 0.0)
    n_pick = max(1, min(RECEIVER_HEADS, int(RECEIVER_HEAD_SHARE * n_layers * n_heads)))
    picked = np.argsort(-kurtosis.ravel(), kind="stable")[:n_pick]  # flat (layer * H + head) indexes
    token_received = np.zeros(n_tokens)
    token_received[valid] = vertical.reshape(n_layers * n_heads, -1)[picked].mean(0)
    return {"head_kurtosis": kurtosis, "token_received": token_received}


@torch.inference_mode()
def analyse_ids(model, prompt_ids: list[int], completion_ids: list[int], token_step: np.ndarray, *,
                n_steps: int, query_chunk: int = 128) -> dict[str, np.ndarray]:
    """One teacher-forced forward over prompt + completion ids; the §3 arrays except "cue".

    token_step [Tc]: step index of each completion token, non-decreasing, every step non-empty.
    The model must use the "pivottrace" attention implementation. Per layer l (heads averaged
    first, each query row a distribution over the keys it can see, causal):
      H_t = -sum_k p_tk log p_tk / log(n_visible_t) for each completion query t (0 if one key);
      E[l, s] = mean of H_t over step s's tokens;
      m[l, s, k] = mean over step s's tokens of the mass on segment k (0 prompt, 1+j step j);
      D and C from m (see temporal_change, layer_consistency).
    Logits are computed in chunks of positions, so [T, vocab] never exists either.
    """
    prompt_len, n_tokens = len(prompt_ids), len(completion_ids)
    token_step = np.asarray(token_step, dtype=np.int64)
    if prompt_len < 1:
        raise ValueError("the prompt needs at least one token")
    if n_tokens == 0:
        return _empty_arrays(model.config.num_hidden_layers)
    if (len(token_step) != n_tokens or np.any(np.diff(token_step) < 0)
            or not np.array_equal(np.unique(token_step), np.arange(n_steps))):
        raise ValueError("token_step must be non-decreasing and give every step 0..n_steps-1 a token")
    device = model.device
    n_layers = model.config.num_hidden_layers
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=device)  # [1, T]
    step_t = torch.from_numpy(token_step).to(device)  # [Tc]
    segment = torch.cat([torch.zeros(prompt_len, dtype=torch.long, device=device), step_t + 1])  # [T]
    collector = _Collector(
        q_start=prompt_len,
        key_segment=segment,  # [T]
        query_step=step_t,
        query_chunk=query_chunk,
        entropy_sum=torch.zeros(n_layers, n_steps, device=device),  # [L, S]
        mass_sum=torch.zeros(n_layers, n_steps, n_steps + 1, device=device),  # [L, S, S+1]
        token_entropy_sum=torch.zeros(n_tokens, device=device),  # [Tc]
        token_shift_sum=torch.zeros(n_tokens, device=device),  # [Tc]
        received=torch.zeros(n_layers, model.config.num_attention_heads, n_tokens, device=device),  # [L, H, Tc]
    )
    token = _COLLECTOR.set(collector)
    try:
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0]  # [T, hidden]
    finally:
        _COLLECTOR.reset(token)
    if len(collector.layers_seen) != n_layers:
        raise RuntimeError(f"the model is not running the '{ATTN_IMPL}' attention implementation")
    token_entropy, token_logprob = _token_stats(model, hidden[prompt_len - 1:-1], ids[0, prompt_len:],
                                                query_chunk=query_chunk)  # [Tc], [Tc]
    counts = torch.bincount(step_t, minlength=n_steps).float()  # [S]
    mass = (collector.mass_sum / counts[None, :, None]).cpu().double().numpy()  # [L, S, S+1]
    ent = token_entropy.cpu().double().numpy()  # [Tc]
    receivers = vertical_attention(collector.received.cpu().double().numpy(), prompt_len + n_tokens)
    return {
        "entropy": (collector.entropy_sum / counts[None, :]).cpu().double().numpy(),  # [L, S]
        "segment_attention": mass,
        "temporal_change": temporal_change(mass),  # [L, S]
        "consistency": layer_consistency(mass),  # [S]
        "pred_entropy_mean": np.bincount(token_step, weights=ent, minlength=n_steps) / counts.cpu().double().numpy(),
        "pred_entropy_max": np.array([ent[token_step == s].max() for s in range(n_steps)]),
        "token_entropy": ent,
        "token_logprob": token_logprob.cpu().double().numpy(),
        "token_attention_entropy": collector.token_entropy_sum.cpu().double().numpy() / n_layers,  # [Tc]
        "token_shift": collector.token_shift_sum.cpu().double().numpy() / n_layers,  # [Tc]
        **receivers,
    }


def _token_stats(model, hidden: torch.Tensor, targets: torch.Tensor, *, query_chunk: int):
    """Predictive entropy (nats) and log p of each target, from hidden [N, hidden] predicting targets [N].

    The logits are formed query_chunk rows at a time: [N, vocab] never exists.
    """
    lm_head = model.get_output_embeddings()
    entropy = torch.empty(len(targets), device=hidden.device)  # [N]
    logprob = torch.empty(len(targets), device=hidden.device)  # [N]
    for a in range(0, len(targets), query_chunk):
        b = min(a + query_chunk, len(targets))
        logits = lm_head(hidden[a:b]).float()  # [c, V]
        log_z = torch.logsumexp(logits, dim=-1)  # [c]
        probs = torch.exp(logits - log_z[:, None])  # [c, V]
        entropy[a:b] = log_z - torch.linalg.vecdot(probs, logits)  # H = log Z - E_p[logit]
        logprob[a:b] = logits.gather(1, targets[a:b, None])[:, 0] - log_z
    return entropy, logprob


def _empty_arrays(n_layers: int) -> dict[str, np.ndarray]:
    return {"entropy": np.zeros((n_layers, 0)), "segment_attention": np.zeros((n_layers, 0, 1)),
            "temporal_change": np.zeros((n_layers, 0)), "consistency": np.zeros(0),
            "pred_entropy_mean": np.zeros(0), "pred_entropy_max": np.zeros(0),
            "token_entropy": np.zeros(0), "token_logprob": np.zeros(0), "token_attention_entropy": np.zeros(0),
            "token_shift": np.zeros(0), "token_received": np.zeros(0), "head_kurtosis": np.zeros((n_layers, 0))}


# ---------------------------------------------------------------------------------------------
# Text -> tokens -> steps


def build_prompt(tokenizer, problem_text: str, template: str = PROMPT_TEMPLATE, examples=()) -> str:
    """The prompt string: each (problem, solution) of `examples` as an earlier exchange, then the
    problem; through the chat template with a generation prompt when the tokenizer has one, else
    as plain text (problem, solution, a blank line; the problem last)."""
    def ask(text: str) -> str:
        return template.replace("{problem}", text.strip())

    pairs = [(ask(question), solution.strip()) for question, solution in examples]
    if getattr(tokenizer, "chat_template", None):
        turns = [turn for question, solution in pairs
                 for turn in ({"role": "user", "content": question}, {"role": "assistant", "content": solution})]
        turns.append({"role": "user", "content": ask(problem_text)})
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return "".join(f"{question}\n{solution}\n\n" for question, solution in pairs) + ask(problem_text) + "\n"


def token_steps(completion: str, offsets: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Map segment_steps' character spans onto tokens.

    A token belongs to the step holding its last character (whitespace joins the step before it,
    so " Then" goes with the sentence it starts). Steps that end up with no token are merged into
    the next step (the last one into the previous). Returns the final character spans and the
    step of each token [Tc].
    """
    spans = segment_steps(completion)
    if not offsets:
        return spans, np.zeros(0, dtype=np.int64)
    starts = np.array([a for a, _ in spans])
    steps, previous = [], 0
    for start, end in offsets:
        step = int(np.searchsorted(starts, end - 1, side="right") - 1) if end > start else previous
        steps.append(max(step, previous))  # keep steps non-decreasing
        previous = steps[-1]
    used = sorted(set(steps))
    merged, remap, pending = [], {}, None
    for index, (start, end) in enumerate(spans):
        if pending is not None:
            start, pending = pending, None
        if index in used:
            remap[index] = len(merged)
            merged.append((start, end))
        else:
            pending = start
    if pending is not None:  # tokenless tail: into the last step
        merged[-1] = (merged[-1][0], spans[-1][1])
    return merged, np.array([remap[s] for s in steps], dtype=np.int64)


def _answer_span(completion: str, answer: str | None) -> tuple[int, int] | None:
    """Character span of the last occurrence of the extracted answer (commas, $ and spaces allowed)."""
    if not answer:
        return None
    pattern = r"[,\s$]*".join(re.escape(ch) for ch in answer)
    matches = list(re.finditer(pattern, completion))
    return (matches[-1].start(), matches[-1].end()) if matches else None


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda" when a CUDA GPU is present, else "mps" on Apple silicon, else "cpu"; an explicit
    device is checked (ValueError with what to do when it is not there)."""
    if not _DEVICE_RE.match(device or ""):
        raise ValueError(f"unknown device {device!r}: use {DEVICES_HELP}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible to torch here (use --device cpu or auto)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps': Apple's Metal backend is not available here (use --device cpu or auto)")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """"float32" / "bfloat16" / "float16", or "auto": bfloat16 on a GPU or on a CPU with native bf16
    kernels, else float32. The streamed attention statistics are computed in float32 whatever the dtype."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}: use {' | '.join(DTYPES)}")
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device != "cpu":
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # avx512_bf16 / AMX
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else torch.float32


def load_model(spec_or_source: str | ModelSource = DEFAULT_SPEC, *, device: str = "cpu",
               dtype: str = TraceConfig.dtype):
    """Load (model, tokenizer) with the pivottrace attention; GGUF models convert once to a cached folder.

    The cache keeps float32 weights; `dtype` (see resolve_dtype) is applied on load.
    Raises ModelNotFoundError when the weights cannot be found or downloaded.
    """
    source = resolve_model(spec_or_source) if isinstance(spec_or_source, str) else spec_or_source
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    try:
        if source.kind in ("default", "gguf"):
            if not source.is_converted:
                _convert_gguf(source)
            folder = str(source.cache_dir)
        else:
            folder = source.path
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=ATTN_IMPL)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except OSError as error:  # transformers and huggingface_hub report missing/unreachable weights so
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"Could not load model '{source.model_id}' ({first_line}): check the name or path, or pass a local "
            "model folder or .gguf file.") from error
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _convert_gguf(source: ModelSource) -> None:
    """Dequantize the GGUF once and save a plain HF folder at source.cache_dir, atomically."""
    target = source.cache_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed conversion
        if time.time() - stale.stat().st_mtime > 3600:
            shutil.rmtree(stale, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    # transformers refuses save_pretrained on a GGUF-quantized model until its marker is cleared;
    # the weights are already dequantized to float32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache folder is an ordinary one
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not source.is_converted:  # not a concurrent conversion that won the rename
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Generation


def _next_tokens(logits: torch.Tensor, greedy: torch.Tensor, *, temperature: float, top_p: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Argmax for rows where `greedy`, else a temperature + nucleus (top-p) sample. logits [b, V] -> [b].

    The nucleus is looked for among the _NUCLEUS_CANDIDATES most likely tokens, and among all
    tokens only when those hold less than top_p of the mass (a full vocabulary sort costs more
    than the model's decode step on a small CPU).
    """
    chosen = logits.argmax(-1)  # [b]
    sampled = (~greedy).nonzero()[:, 0]  # [b'] rows to sample
    if len(sampled) == 0:
        return chosen
    probs = torch.softmax(logits[sampled] / temperature, dim=-1)  # [b', V]
    top_probs, top_ids = probs.topk(min(_NUCLEUS_CANDIDATES, probs.shape[-1]), dim=-1)  # [b', k] descending
    if bool((top_probs.sum(-1) < top_p).any()):
        top_probs, top_ids = probs.sort(dim=-1, descending=True)  # [b', V]
    outside = top_probs.cumsum(-1) - top_probs > top_p  # [b', k] beyond the top-p mass (first token always kept)
    pick = torch.multinomial(top_probs.masked_fill_(outside, 0.0), 1, generator=generator)  # [b', 1]
    chosen[sampled] = top_ids.gather(-1, pick)[:, 0]
    return chosen


def tracer_config(*, samples: int | None = None, max_new_tokens: int | None = None, batch_size: int | None = None,
                  seed: int | None = None, dtype: str | None = None) -> TraceConfig:
    """A TraceConfig from the option names the CLI and the app's jobs use (`samples` is K); an option
    left at None keeps TraceConfig's default."""
    given = {"n_samples": samples, "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed,
             "dtype": dtype}
    return TraceConfig(**{name: value for name, value in given.items() if value is not None})


def make_tracer(spec: str | ModelSource = DEFAULT_SPEC, *, device: str = "auto", **options) -> "Tracer":
    """The one Tracer factory of the CLI and the app's jobs (options: see tracer_config)."""
    return Tracer(spec, config=tracer_config(**options), device=device)


class Tracer:
    """A loaded model plus a TraceConfig: generate, analyse, or both (trace_batch)."""

    def __init__(self, spec: str | ModelSource = DEFAULT_SPEC, *, config: TraceConfig | None = None,
                 device: str = "cpu"):
        self.source = resolve_model(spec) if isinstance(spec, str) else spec
        self.config = config or TraceConfig()
        self.device = resolve_device(device)  # "auto" -> the GPU when there is one
        self.model, self.tokenizer = load_model(self.source, device=self.device, dtype=self.config.dtype)
        self.model_id = self.source.model_id
        self.n_layers = self.model.config.num_hidden_layers
        parameters = inspect.signature(self.model.base_model.forward).parameters
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"  # renamed in transformers 5.2x
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._stop_ids = torch.tensor(sorted({i for i in eos + [self.tokenizer.eos_token_id] if i is not None}),
                                      device=self.device)

    # -- generation ---------------------------------------------------------------------------

    def _prompts(self, problems: list[str]) -> list[str]:
        return [build_prompt(self.tokenizer, p, self.config.prompt_template, self.config.prompt_examples)
                for p in problems]

    def _answered(self, tokens: list[int]) -> bool:
        """True once the completion's latest line is a finished "Answer: <number>" line."""
        tail = self.tokenizer.decode(tokens[-_STOP_TAIL_TOKENS:], skip_special_tokens=True)
        return _ANSWER_LINE_RE.search(tail) is not None

    @torch.inference_mode()
    def _generate(self, prompts: list[str], *, copies: int, n_greedy: int) -> list[list[tuple[str, int]]]:
        """`copies` completions per prompt as (text, generated tokens); the first `n_greedy` are greedy.

        Our own decode loop rather than generate(): each prompt is prefilled once and its KV cache
        repeated for its copies, and rows that finish (EOS, or a finished answer line when
        config.stop_at_answer) leave the batch at once, so no step is spent on finished rows.
        """
        cfg = self.config
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        lm_head = self.model.get_output_embeddings()
        per_call = cfg.batch_size
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
        results: list[list[tuple[str, int]]] = [[] for _ in prompts]
        self.tokenizer.padding_side = "left"
        for start in range(0, len(order), per_call):
            group = order[start:start + per_call]
            enc = self.tokenizer([prompts[i] for i in group], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(self.device)
            mask = enc["attention_mask"]  # [n, P]
            cache = DynamicCache(config=self.model.config)
            hidden = self.model.base_model(input_ids=enc["input_ids"], attention_mask=mask,
                                           position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                                           use_cache=True, **{self._cache_kw: cache}).last_hidden_state  # [n, P, h]
            logits = lm_head(hidden[:, -1]).float().repeat_interleave(copies, 0)  # [B, V]
            cache.batch_repeat_interleave(copies)
            mask = mask.repeat_interleave(copies, 0)  # [B, P]
            rows = torch.arange(len(group) * copies, device=self.device)  # [b] row ids still decoding
            greedy = rows % copies < n_greedy  # [b]
            position = mask.sum(-1)  # [b] position of the next token
            tokens: list[list[int]] = [[] for _ in range(len(rows))]
            for step in range(cfg.max_new_tokens):
                chosen = _next_tokens(logits, greedy, temperature=cfg.temperature, top_p=cfg.top_p,
                                      generator=generator)  # [b]
                done = torch.isin(chosen, self._stop_ids)  # [b]
                for i, (row, token) in enumerate(zip(rows.tolist(), chosen.tolist())):
                    if not done[i]:
                        tokens[row].append(token)
                        if cfg.stop_at_answer and "\n" in self.tokenizer.decode([token]):
                            done[i] = self._answered(tokens[row])
                if step == cfg.max_new_tokens - 1 or bool(done.all()):
                    break
                if bool(done.any()):
                    keep = (~done).nonzero()[:, 0]  # [b']
                    cache.batch_select_indices(keep)
                    rows, greedy, chosen = rows[keep], greedy[keep], chosen[keep]
                    position, mask = position[keep], mask[keep]
                mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)  # [b, P + step + 1]
                hidden = self.model.base_model(input_ids=chosen[:, None], attention_mask=mask,
                                               position_ids=position[:, None], use_cache=True,
                                               **{self._cache_kw: cache}).last_hidden_state  # [b, 1, hidden]
                logits = lm_head(hidden[:, -1]).float()  # [b, V]
                position = position + 1
            for row, row_tokens in enumerate(tokens):
                text = self.tokenizer.decode(row_tokens, skip_special_tokens=True).strip()
                results[group[row // copies]].append((text, len(row_tokens)))
        return results

    def generate_greedy(self, problems: list[str]) -> list[str]:
        """One greedy completion per problem (batched, left padding)."""
        return [rows[0][0] for rows in self._generate(self._prompts(problems), copies=1, n_greedy=1)]

    def sample(self, problems: list[str], k: int) -> list[list[str]]:
        """k sampled completions per problem; reproducible for the same problems, k and config."""
        return [[text for text, _ in r] for r in self._generate(self._prompts(problems), copies=k, n_greedy=0)]

    # -- analysis -----------------------------------------------------------------------------

    def analyse(self, problem_text: str, completion: str, *, prompt: str | list | None = None) -> TraceResult:
        """Teacher-forced analysis of one completion (from generate_greedy, or sampled elsewhere).

        `prompt`: what the model saw when it was sampled elsewhere: the rendered prompt text (used as
        it is), or chat messages (rendered with the model's chat template); None builds ours.
        """
        if isinstance(prompt, list):
            prompt = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        elif prompt is None:
            prompt = build_prompt(self.tokenizer, problem_text, self.config.prompt_template,
                                  self.config.prompt_examples)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        enc = self.tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
        completion_ids, offsets = enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]
        spans, token_step = token_steps(completion, offsets)
        arrays = analyse_ids(self.model, prompt_ids, completion_ids, token_step, n_steps=len(spans),
                             query_chunk=self.config.query_chunk)
        arrays["cue"] = np.array(cue_counts(completion, spans), dtype=np.float64)  # [S]
        bounds = np.searchsorted(token_step, np.arange(len(spans) + 1))  # token index where each step starts
        steps = [{"text": completion[a:b], "char_start": a, "char_end": b,
                  "tok_start": int(bounds[i]), "tok_end": int(bounds[i + 1])} for i, (a, b) in enumerate(spans)]
        logprob = arrays["token_logprob"]
        answer = extract_answer(completion)
        span = _answer_span(completion, answer)
        answer_prob = None
        if span is not None:
            inside = [i for i, (a, b) in enumerate(offsets) if a < span[1] and b > span[0]]
            answer_prob = float(np.exp(logprob[inside].sum())) if inside else None
        return TraceResult(
            prompt=prompt, completion=completion, steps=steps,
            tokens=self.tokenizer.batch_decode([[i] for i in completion_ids]),
            n_prompt_tokens=len(prompt_ids), n_completion_tokens=len(completion_ids), arrays=arrays,
            mean_logprob=float(logprob.mean()) if logprob.size else None,
            min_logprob=float(logprob.min()) if logprob.size else None,
            answer_prob=answer_prob, answer=answer,
        )

    def trace_batch(self, problems: list[str]) -> list[ProblemTrace]:
        """Greedy + K samples per problem (decoded together), then analysis of the greedy completion."""
        started = time.perf_counter()
        rows = self._generate(self._prompts(problems), copies=1 + self.config.n_samples, n_greedy=1)
        generation_seconds = time.perf_counter() - started
        total_tokens = max(1, sum(n for r in rows for _, n in r))
        traces = []
        for problem, r in zip(problems, rows):
            started = time.perf_counter()
            trace = self.analyse(problem, r[0][0])
            samples = [text for text, _ in r[1:]]
            tokens = sum(n for _, n in r)
            traces.append(ProblemTrace(
                trace=trace, samples=samples, sample_answers=[extract_answer(s) for s in samples],
                generated_tokens=tokens,
                seconds=generation_seconds * tokens / total_tokens + time.perf_counter() - started))
        return traces
