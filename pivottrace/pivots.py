"""Per-step statistics -> pivot scores, pivots and pivot density. numpy only.

Input: the per-step arrays of many traces (entropy [L,S], temporal_change [L,S], consistency
[S], pred_entropy_mean [S], cue [S]). Output: for each trace a score per step, which signals
fired, the pivot steps and the pivot density. Scores are robust z-scores against pool-level
statistics (median and MAD over every step of every trace in the pool), so densities compare
across traces. It does not read the database or touch a model.
"""

from __future__ import annotations

import re
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


# ---------------------------------------------------------------------------------------------
# Token-level pivots: surprising numbers, found with a false-discovery-rate rule against the pool
#
# Each completion token carries four statistics (trace.py computes them in the streamed pass):
# how surprised the model is by it, how unsure it was before it (the "forking tokens" of
# Wang et al. 2025, the top-20 % predictive-entropy tokens in RLVR), how far its attention jumps
# from the previous token's, and how much attention later tokens pay it through the trace's
# receiver heads (Thought Anchors). A token's p-value per signal is its upper-tail rank among the
# pool's tokens of the same class (numbers against numbers, other tokens against other tokens:
# a digit is more surprising than a word in any chain); the smallest over the rule's signals
# (RULE_SIGNALS), Bonferroni-corrected, is the token's p-value. The hypotheses tested in a chain are its number
# tokens, the claims a reasoning chain can get wrong checkably (all its tokens when it has none).
# Within each trace the Benjamini-Hochberg procedure at FDR_Q picks the pivot tokens, so a quiet
# trace has no pivot (with probability about 1 - FDR_Q) whatever its length, and a short chain
# still gets one when a number in it is as surprising as a handful in the pool. A step is a token
# pivot when it holds a pivot token (reflection cues stay with the step rule). No weights, no
# constants fitted to a pool. bench/pivot_localisation.py compares these choices.

TOKEN_SIGNALS = {
    "surprisal": lambda a: -np.asarray(a["token_logprob"], dtype=np.float64),  # -log p of the token (nats)
    "forking": lambda a: np.asarray(a["token_entropy"], dtype=np.float64),  # predictive entropy before it
    "attention_shift": lambda a: np.asarray(a["token_shift"], dtype=np.float64),  # JS jump from the previous token
    "received": lambda a: np.asarray(a["token_received"], dtype=np.float64),  # receiver-head vertical attention
}
# Signals the pivot-token rule tests. On 150 injected GSM8K chains (bench/reports/
# pivot_localisation_gsm150.md) surprisal alone localised best on every measure; forking entropy,
# attention shift and receiver-head attention each fired more on clean chains than on the
# injected step, and adding them only diluted the Bonferroni correction. They stay features.
RULE_SIGNALS = ("surprisal",)
FDR_Q = 0.1  # Benjamini-Hochberg false discovery rate of pivot tokens within a trace
FORKING_SHARE = 0.2  # "forking tokens": the pool's top 20 % by predictive entropy (Wang et al. 2025)
NULL_POINTS = 20001  # pool values kept per signal and class (quantiles) as the empirical null
TOKEN_CLASSES = ("other", "number")
_NUMBER_TOKEN = re.compile(r"^\s*[\d.,]*\d[\d.,]*\s*$")  # digits, with separators: "12", " 3", ",000"


def token_signals(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The token signals a trace has, each [Tc] (older traces lack the attention ones)."""
    out = {}
    for name, get in TOKEN_SIGNALS.items():
        try:
            values = get(arrays)
        except KeyError:
            continue
        out[name] = np.nan_to_num(values, nan=0.0)
    return out


def number_tokens(tokens: list[str] | None, n_tokens: int) -> np.ndarray:
    """[Tc] True for tokens that are (part of) a number; all False when the token texts are unknown."""
    if not tokens or len(tokens) != n_tokens:
        return np.zeros(n_tokens, dtype=bool)
    return np.array([bool(_NUMBER_TOKEN.match(t)) for t in tokens], dtype=bool)


@dataclass
class TokenNull:
    """Per token signal and class, the sorted pool values (or evenly spaced quantiles of them)."""

    sorted_values: dict[str, dict[str, np.ndarray]]  # signal -> class -> [n] ascending
    forking_cut: float  # predictive entropy above which a token is a forking token

    def p_values(self, name: str, values: np.ndarray, is_number: np.ndarray) -> np.ndarray:
        """[Tc] upper-tail empirical p-values (1 + #{null >= x}) / (1 + n), each against its class."""
        out = np.ones(len(values))
        for label, mask in (("number", is_number), ("other", ~is_number)):
            null = self.sorted_values[name].get(label, np.zeros(0))
            if mask.any():
                greater_or_equal = null.size - np.searchsorted(null, values[mask], side="left")
                out[mask] = (1.0 + greater_or_equal) / (1.0 + null.size)
        return out

    def only(self, names) -> "TokenNull":
        """The same null restricted to some signals."""
        return TokenNull({k: v for k, v in self.sorted_values.items() if k in names}, self.forking_cut)

    def to_dict(self) -> dict:
        quantiles = np.linspace(0, 1, 101)
        return {"forking_cut": self.forking_cut,
                "percentiles": {f"{k}/{c}": np.quantile(v, quantiles).round(5).tolist()
                                for k, by_class in self.sorted_values.items() for c, v in by_class.items() if v.size}}


def token_null(all_arrays: list[dict[str, np.ndarray]], all_tokens: list | None = None) -> TokenNull:
    """The pool's empirical null of every token signal, per token class (all tokens of all traces).
    `all_tokens`: each trace's token texts (for the number class), parallel to `all_arrays`."""
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    for index, arrays in enumerate(all_arrays):
        signals = token_signals(arrays)
        if not signals:
            continue
        n_tokens = len(next(iter(signals.values())))
        is_number = number_tokens(all_tokens[index] if all_tokens else None, n_tokens)
        for name, values in signals.items():
            by_class = pooled.setdefault(name, {})
            by_class.setdefault("number", []).append(values[is_number])
            by_class.setdefault("other", []).append(values[~is_number])
    sorted_values: dict[str, dict[str, np.ndarray]] = {}
    for name, by_class in pooled.items():
        sorted_values[name] = {}
        for label, parts in by_class.items():
            values = np.sort(np.concatenate(parts))
            if values.size > NULL_POINTS:  # evenly spaced order statistics keep the tail's shape
                values = values[np.linspace(0, values.size - 1, NULL_POINTS).round().astype(int)]
            sorted_values[name][label] = values
    entropy = np.concatenate(list(sorted_values.get("forking", {}).values()) or [np.zeros(0)])
    cut = float(np.quantile(entropy, 1 - FORKING_SHARE)) if entropy.size else float("inf")
    return TokenNull(sorted_values, cut)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values) [n] of p [n]; reject where q <= the target FDR."""
    p = np.asarray(p, dtype=np.float64)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1.0)
    out = np.empty(n)
    out[order] = adjusted
    return out


@dataclass
class TokenPivots:
    """Token-level pivot analysis of one trace. Tc = completion tokens, S = steps."""

    token_q: np.ndarray  # [Tc] BH q-value of each tested token (1 for tokens outside the family)
    token_signal: list[str]  # [Tc] the signal that gave each token its smallest p-value
    pivot_tokens: list[int]  # token indexes with q <= FDR_Q
    step_scores: np.ndarray  # [S] -log10 of the smallest q-value in the step (0 = nothing there)
    pivots: list[int]  # steps holding a pivot token
    step_signals: list[list[str]]  # per step, the signals of its pivot tokens (+ "cue" where a marker matched)
    forking_share: np.ndarray  # [S] share of the step's tokens that are forking tokens
    step_max: dict[str, np.ndarray]  # signal -> [S] largest token value in the step
    density: float  # pivot steps per 100 completion tokens


def token_step_index(steps: list[dict], n_tokens: int) -> np.ndarray:
    """[Tc] step of each completion token, from the steps' tok_start/tok_end (-1 where none)."""
    index = np.full(n_tokens, -1, dtype=np.int64)
    for s, step in enumerate(steps):
        index[int(step["tok_start"]):min(int(step["tok_end"]), n_tokens)] = s
    return index


def score_tokens(arrays: dict[str, np.ndarray], steps: list[dict], null: TokenNull, *,
                 tokens: list[str] | None = None, q: float = FDR_Q,
                 signals: tuple[str, ...] = RULE_SIGNALS, numbers_only: bool = True) -> TokenPivots:
    """Pivot tokens of one trace by BH at `q` over its number tokens (all tokens when it has none,
    when `tokens` is not given, or with numbers_only=False), aggregated to its steps (see the
    section comment). Each token is compared with the pool's tokens of its class either way."""
    values = token_signals(arrays)
    tested = {k: v for k, v in values.items() if k in signals and k in null.sorted_values}
    n_steps = len(steps)
    n_tokens = len(next(iter(values.values()))) if values else 0
    step_of = token_step_index(steps, n_tokens)  # [Tc]
    is_number = number_tokens(tokens, n_tokens)  # [Tc]
    family = is_number if numbers_only and is_number.any() else np.ones(n_tokens, dtype=bool)  # [Tc] the hypotheses
    token_q, token_signal = np.ones(n_tokens), [""] * n_tokens
    if tested and family.any():
        names = list(tested)
        p = np.stack([null.p_values(name, tested[name], is_number) for name in names])  # [K, Tc]
        best = p.argmin(0)  # [Tc]
        token_p = np.minimum(p.min(0) * len(names), 1.0)  # [Tc] Bonferroni over the K signals
        token_q[family] = benjamini_hochberg(token_p[family])
        token_signal = [names[k] for k in best]
    pivot_tokens = [int(t) for t in np.flatnonzero(token_q <= q) if step_of[t] >= 0]
    cues = np.asarray(arrays.get("cue", np.zeros(n_steps)), dtype=np.float64)[:n_steps]  # [S]
    step_scores = np.zeros(n_steps)
    step_signals: list[list[str]] = [[] for _ in range(n_steps)]
    forking = np.zeros(n_steps)
    step_max = {name: np.zeros(n_steps) for name in values}
    entropy = values.get("forking")
    for s in range(n_steps):
        inside = step_of == s
        if not inside.any():
            continue
        step_scores[s] = float(-np.log10(max(token_q[inside].min(), 1e-300)))
        for name, column in values.items():
            step_max[name][s] = float(column[inside].max())
        if entropy is not None:
            forking[s] = float((entropy[inside] > null.forking_cut).mean())
    for t in pivot_tokens:
        if token_signal[t] not in step_signals[step_of[t]]:
            step_signals[step_of[t]].append(token_signal[t])
    pivots = [s for s in range(n_steps) if step_signals[s]]  # cue steps are the step rule's (CUE_BONUS)
    for s in np.flatnonzero(cues > 0):
        step_signals[s].append("cue")
    density = 100.0 * len(pivots) / max(n_tokens, 1)
    return TokenPivots(token_q, token_signal, pivot_tokens, step_scores, pivots, step_signals, forking,
                       step_max, density)


def token_score_on_step_scale(step_scores: np.ndarray, *, q: float = FDR_Q) -> np.ndarray:
    """-log10 q-values mapped onto the step score's scale: q = FDR_Q lands on PIVOT_THRESHOLD."""
    return np.asarray(step_scores, dtype=np.float64) * PIVOT_THRESHOLD / -np.log10(q)


def analyse_trace(arrays: dict[str, np.ndarray], steps: list[dict], stats: PoolStats, null: TokenNull,
                  n_completion_tokens: int, *, tokens: list[str] | None = None,
                  q: float = FDR_Q) -> tuple[PivotResult, TokenPivots]:
    """Both pivot rules on one trace: a step is a pivot when the step-level score crosses
    PIVOT_THRESHOLD or it holds a pivot token (BH at `q`), i.e. exactly when its score below
    exceeds PIVOT_THRESHOLD (the views colour and mark pivots by that). The PivotResult's scores are
    the larger of the step score and the token score on the same scale (token_score_on_step_scale),
    its `fired` lists the signals of both rules, and its density counts the union."""
    step_level = score_trace(arrays, stats, n_completion_tokens)
    token_texts = tokens
    tokens = score_tokens(arrays, steps, null, tokens=token_texts, q=q)
    n_steps = len(step_level.scores)
    if len(tokens.step_scores) != n_steps:  # steps and arrays disagree (a malformed trace): step rule only
        return step_level, tokens
    scores = np.maximum(step_level.scores, token_score_on_step_scale(tokens.step_scores, q=q))  # [S]
    pivots = sorted(set(step_level.pivots) | set(tokens.pivots))
    scores[pivots] = np.maximum(scores[pivots], np.nextafter(PIVOT_THRESHOLD, np.inf))  # q == FDR_Q exactly
    fired = [list(dict.fromkeys(step_level.fired[s] + tokens.step_signals[s])) for s in range(n_steps)]
    density = 100.0 * len(pivots) / max(int(n_completion_tokens), 1)
    result = PivotResult(scores, step_level.zscores, fired, pivots, density, float(scores.max()) if n_steps else 0.0,
                         extra={"step_level_pivots": step_level.pivots, "token_pivots": tokens.pivots})
    return result, tokens
