"""Pivot weights that learn from step labels, starting from the hand-set weights as the prior.

Input: per labelled chain, its pivot signals per step (step_features: the step rule's clipped
robust z-scores, the token rule's score on the same scale, the reflection cue) and which step an
annotator marked as the first wrong one. Output: `PivotWeights`, the weights and threshold of
score = sum_i w_i x_i, a step being a pivot when score > threshold, fitted as a logistic model
P(step is the first wrong step) = sigmoid(w.x - threshold) by MAP under a Gaussian prior centred on
today's hand-set rule (pivots.SIGNAL_WEIGHTS, the token score's weight 1, pivots.CUE_BONUS,
PIVOT_THRESHOLD). With no labels the fit is the prior; each label moves it a little, and the
prior's width says how much evidence it takes to move a weight by one unit.
Training steps: before the first wrong step (y = 0), the first wrong step (y = 1); the steps after
it carry no label (PRM800K) and are left out. A chain marked "every step is right" gives y = 0 for
every step. A chain whose final answer an annotator accepted as correct gives y = 0 steps at a
lower weight (a right answer usually, not always, means right steps).
numpy + scipy; no store, no model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

from .pivots import (CUE_BONUS, MAX_CUES, PIVOT_THRESHOLD, SIGNAL_WEIGHTS, Z_CLIP, PivotResult, TokenPivots,
                     token_score_on_step_scale)

FEATURES = tuple(SIGNAL_WEIGHTS) + ("token_score", "cue")
PRIOR_WEIGHTS = {**SIGNAL_WEIGHTS, "token_score": 1.0, "cue": CUE_BONUS}  # the hand-set rule
PRIOR_SD = 1.0  # prior standard deviation of each weight and of the threshold, in score units
VERDICT_STEP_WEIGHT = 0.25  # weight of a step from a chain whose answer was accepted (not step-checked)


def step_features(step_level: PivotResult, tokens: TokenPivots) -> np.ndarray:
    """[S, F] the signals the pivot score adds up, in FEATURES order."""
    n_steps = len(step_level.scores)
    columns = [np.clip(step_level.zscores[name], 0.0, Z_CLIP) for name in SIGNAL_WEIGHTS]
    token = token_score_on_step_scale(tokens.step_scores) if len(tokens.step_scores) == n_steps else np.zeros(n_steps)
    cue = np.array([min(sum(1 for s in fired if s == "cue"), MAX_CUES) for fired in step_level.fired], dtype=float)
    return np.column_stack(columns + [token, cue]).reshape(n_steps, len(FEATURES))


@dataclass
class LabelledChain:
    features: np.ndarray  # [S, F] from step_features
    first_wrong: int | None  # annotator's first wrong step; -1 = every step right; None = answer accepted only


@dataclass
class PivotWeights:
    weights: dict[str, float]
    threshold: float
    n_chains: int  # labelled chains used
    n_steps: int  # training steps
    n_first_wrong: int  # of them marked as the first wrong step

    def score(self, features: np.ndarray) -> np.ndarray:
        """[S] pivot score of each step from its [S, F] features."""
        return features @ np.array([self.weights[name] for name in FEATURES])

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()} | \
            {"weights": {k: round(v, 4) for k, v in self.weights.items()}}


def training_steps(chains: list[LabelledChain]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X [N, F], y [N], sample weight [N] (see the module docstring)."""
    xs, ys, ws = [], [], []
    for chain in chains:
        n_steps = len(chain.features)
        if chain.first_wrong is None:
            keep, y, weight = n_steps, np.zeros(n_steps), VERDICT_STEP_WEIGHT
        elif chain.first_wrong < 0:
            keep, y, weight = n_steps, np.zeros(n_steps), 1.0
        else:
            keep = min(chain.first_wrong + 1, n_steps)
            y = np.zeros(keep)
            y[keep - 1] = float(chain.first_wrong < n_steps)
            weight = 1.0
        xs.append(chain.features[:keep])
        ys.append(y[:keep])
        ws.append(np.full(keep, weight))
    if not xs:
        return np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0)
    return np.vstack(xs), np.concatenate(ys), np.concatenate(ws)


def fit_pivot_weights(chains: list[LabelledChain], *, prior_sd: float = PRIOR_SD) -> PivotWeights:
    """MAP weights and threshold of the logistic pivot model under the Gaussian prior."""
    x, y, w = training_steps(chains)
    prior = np.array([PRIOR_WEIGHTS[name] for name in FEATURES] + [PIVOT_THRESHOLD])  # [F+1]
    design = np.column_stack([x, -np.ones(len(x))])  # [N, F+1]: the last coefficient is the threshold

    def objective(beta: np.ndarray) -> tuple[float, np.ndarray]:
        logits = design @ beta  # [N]
        nll = float(np.sum(w * (np.logaddexp(0.0, logits) - y * logits)))
        grad_nll = design.T @ (w * (1.0 / (1.0 + np.exp(-logits)) - y))
        delta = (beta - prior) / prior_sd ** 2
        return nll + 0.5 * float(delta @ (beta - prior)), grad_nll + delta

    beta = minimize(objective, prior, jac=True, method="L-BFGS-B").x if len(x) else prior
    return PivotWeights({name: float(b) for name, b in zip(FEATURES, beta[:-1])}, float(beta[-1]),
                        n_chains=len(chains), n_steps=len(x), n_first_wrong=int(y.sum()))


def labelled_chains(traces: list[dict], stats, null, step_labels: list[dict], accepted: set[str]) -> list[LabelledChain]:
    """Training chains from trace dicts (store.iter_trace_arrays), step labels in force
    (store.effective_step_labels: the newest per problem is used) and the ids of problems whose
    answer an annotator accepted as correct. A step label given on another model's trace, or on a
    trace with another number of steps, is left out."""
    from .pivots import analyse_trace

    marked = {label["problem_id"]: label for label in step_labels}
    chains = []
    for trace in traces:
        label = marked.get(trace["problem_id"])
        if label is not None and (label["model_id"] != trace["model_id"] or label["n_steps"] != len(trace["steps"])):
            label = None
        if label is None and trace["problem_id"] not in accepted:
            continue
        step_level, tokens = analyse_trace(trace["arrays"], trace["steps"], stats, null,
                                           trace["n_completion_tokens"] or 0, tokens=trace.get("tokens"))
        if len(step_level.scores) != len(trace["steps"]) or not len(step_level.scores):
            continue
        chains.append(LabelledChain(step_features(step_level, tokens),
                                    None if label is None else int(label["first_wrong_step"])))
    return chains


def apply_weights(fitted: PivotWeights, result: PivotResult, tokens: TokenPivots, n_completion_tokens: int) -> PivotResult:
    """`result` (pivots.analyse_trace) re-scored with fitted weights: scores, pivots, density.
    Scores are shifted so the fitted threshold sits at PIVOT_THRESHOLD (what the views compare to)."""
    scores = fitted.score(step_features(result, tokens)) - fitted.threshold + PIVOT_THRESHOLD  # [S]
    pivots = [int(s) for s in np.flatnonzero(scores > PIVOT_THRESHOLD)]
    return PivotResult(scores, result.zscores, result.fired, pivots, 100.0 * len(pivots) / max(n_completion_tokens, 1),
                       float(scores.max()) if len(scores) else 0.0, extra={**result.extra, "fitted": True})
