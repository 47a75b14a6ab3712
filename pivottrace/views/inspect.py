"""The Inspect page's view-models: problem search, one stored (or live) trace ready to draw, the
step's tokens and attention, and two traces side by side.

It never calls Streamlit, never builds figures (charts.py), runs no SQL (store.py) and loads no
model: a live trace runs in a worker job (jobs.py), as tracing does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .. import jobs, store
from ..answers import majority_vote
from ..models import DEFAULT_SPEC
from ..pivots import pool_stats, score_trace
from ..vocab import ROUTE_NAMES, ROUTES
from .common import StepView, build_steps, esc, interval_text, preview

TOKEN_ENTROPY_SPAN = 4.0  # nats; at ~4 nats the model is spread over dozens of tokens: full colour
ROUTE_CHOICES = ROUTES  # the Route filter's options, in the store's order
SORT_CHOICES = tuple(store.PROBLEM_SORTS)  # the orders find_problems accepts


def trace_models(db, problem_id: str) -> list[str]:
    """Models that traced this problem (for the side-by-side picker)."""
    return store.trace_models(db, problem_id)


ROUTE_LABELS = {**ROUTE_NAMES, None: "not routed"}  # the Route column: screen names


INSPECT_LIMIT = 500  # matches the Inspect page lists (the count covers all of them)


@dataclass
class ProblemMatches:
    rows: list[dict]  # the first matches, in the order asked for
    total: int  # every match, listed or not


def find_problems(db, *, routes: list[str] | None = None, min_density: float | None = None,
                  uncertainty: tuple[float, float] | None = None, search: str = "",
                  traced_only: bool = True, sort: str = "value", limit: int | None = None) -> ProblemMatches:
    """Problems matching every filter given (store.search_problems). `search` matches words of
    the text or the id prefix.

    sort: "value" (router's value, highest first), "uncertainty", "pivot_density" (highest first)
    or "recent" (ingest order).
    """
    rows, total = store.search_problems(
        db, routes=routes, min_density=min_density, uncertainty=uncertainty,
        words=(search or "").split(), traced_only=traced_only, sort=sort, limit=limit)
    return ProblemMatches([{
        "problem_id": r["problem_id"], "problem": preview(r["text"]), "route": ROUTE_LABELS.get(r["route"], r["route"]),
        "uncertainty": r["uncertainty"], "90% interval": interval_text(r["u_low"], r["u_high"]),
        "pivot_density": r["pivot_density"], "pivots": r["n_pivots"],
        "steps": r["n_steps"], "vote_share": r["vote_share"], "verdict": r["verdict"] or "",
        "traces": r["n_traces"], "source": r["source"]} for r in rows], total)


@dataclass
class TraceView:
    """One stored trace, ready to draw. L layers, S steps, Tc completion tokens."""

    problem_id: str
    model_id: str
    problem_text: str
    completion: str
    answer: str | None
    steps: list[StepView]
    tokens: list[str]
    entropy: np.ndarray  # [L, S] attention entropy
    temporal: np.ndarray  # [S] temporal change, mean over layers
    consistency: np.ndarray  # [S] inter-layer consistency
    pred_entropy: np.ndarray  # [S] mean predictive entropy (nats)
    scores: np.ndarray  # [S] pivot score
    token_entropy: np.ndarray  # [Tc] predictive entropy per completion token (nats)
    segment_attention: np.ndarray  # [L, S, S+1]
    majority: str | None
    vote_share: float
    n_samples: int
    pivot_density: float
    scored: bool  # False when the trace has no features row yet (pivot scores then read 0)
    human_marks: list = field(default_factory=list)  # [(annotator, first wrong step)] step labels on this trace

    @property
    def pivots(self) -> list[int]:
        return [s.index for s in self.steps if s.is_pivot]

    @property
    def n_layers(self) -> int:
        return int(self.entropy.shape[0])


def _trace_view(*, problem_id: str, model_id: str, problem_text: str, completion: str, answer: str | None,
                steps: list[StepView], tokens: list[str], arrays: dict, answers: list, pivot_density: float,
                scored: bool) -> TraceView:
    n_steps = len(steps)
    temporal = np.asarray(arrays.get("temporal_change", np.zeros((1, n_steps))), float)  # [L, S]
    vote = majority_vote(answers)
    return TraceView(
        problem_id=problem_id, model_id=model_id, problem_text=problem_text, completion=completion,
        answer=answer, steps=steps, tokens=tokens,
        entropy=np.asarray(arrays.get("entropy", np.zeros((0, n_steps))), float),  # [L, S]
        temporal=temporal.mean(axis=0) if temporal.size else np.zeros(n_steps),  # [S]
        consistency=np.asarray(arrays.get("consistency", np.ones(n_steps)), float),  # [S]
        pred_entropy=np.asarray(arrays.get("pred_entropy_mean", np.zeros(n_steps)), float),  # [S]
        scores=np.array([s.score for s in steps], dtype=float),  # [S]
        token_entropy=np.asarray(arrays.get("token_entropy", np.zeros(len(tokens))), float),  # [Tc]
        segment_attention=np.asarray(arrays.get("segment_attention", np.zeros((0, n_steps, n_steps + 1))), float),
        majority=vote.majority, vote_share=vote.share, n_samples=len(answers), pivot_density=pivot_density,
        scored=scored)


def trace_view(db, problem_id: str, model_id: str | None = None) -> TraceView | None:
    """The stored trace of a problem under a model (the newest one when no model is named)."""
    trace = store.load_trace(db, problem_id, model_id)
    if trace is None:
        return None
    model_id = trace["model_id"]
    problem = store.get_problem(db, problem_id)
    features = store.get_features(db, problem_id, model_id)
    view = _trace_view(
        problem_id=problem_id, model_id=model_id, problem_text=problem["text"] if problem else trace["prompt"],
        completion=trace["completion"], answer=trace["answer"], steps=build_steps(trace, features),
        tokens=trace["tokens"], arrays=trace["arrays"],
        answers=[trace["answer"]] + store.sample_answers(db, problem_id, model_id),
        pivot_density=float((features or {}).get("pivot_density") or 0.0), scored=features is not None)
    view.human_marks = [(row["annotator"], int(row["first_wrong_step"]))
                        for row in store.effective_step_labels(db, problem_id=problem_id)
                        if row["model_id"] == model_id and row["n_steps"] == len(view.steps)]
    return view


LIVE_POLL_SECONDS = 0.5  # how often the waiting page reads the live job's row
LIVE_TIMEOUT_SECONDS = 900  # a first download of a hub model plus one trace; past it the job is cancelled


def trace_live(db, spec: str, problem_id: str, problem_text: str) -> TraceView:
    """Trace one problem now with the model `spec`, for a side-by-side comparison, and wait for it.

    The trace runs in a worker job (jobs.start_live), so the app process never imports torch; the
    model is loaded for each live trace. Nothing is stored: a stored trace of another model would
    become the newest checkpoint the router follows. With no pool to compare against, its pivot
    scores use the trace's own steps as the baseline (pool statistics of one trace), so read them
    within the trace, not across. Raises JobError when the job fails.
    """
    job_id = jobs.start_live(db, model=spec or DEFAULT_SPEC, problem_id=problem_id)
    deadline = time.monotonic() + LIVE_TIMEOUT_SECONDS
    job = None
    try:
        while time.monotonic() < deadline:
            job = next((j for j in jobs.refresh(db) if j["id"] == job_id), None) or store.get_job(db, job_id)
            if job["status"] not in jobs.ACTIVE:
                break
            time.sleep(LIVE_POLL_SECONDS)
    finally:
        if job is None or job["status"] in jobs.ACTIVE:  # timed out or interrupted: stop the worker
            jobs.cancel(db, job_id)
    if job["status"] != "done":
        raise jobs.JobError(f"The live trace {job['status']}: {job['message'] or 'timed out'}")
    path = jobs.live_result_path(db, job_id)
    meta, arrays = jobs.read_live_result(path)
    path.unlink(missing_ok=True)
    pivots = score_trace(arrays, pool_stats([arrays]), meta["n_completion_tokens"])
    steps = [StepView(i, step.get("text", ""), float(pivots.scores[i]), i in pivots.pivots, list(pivots.fired[i]),
                      int(step.get("tok_start", 0)), int(step.get("tok_end", 0)))
             for i, step in enumerate(meta["steps"])]
    return _trace_view(problem_id=problem_id, model_id=f"{meta['model_id']} (live)", problem_text=problem_text,
                       completion=meta["completion"], answer=meta["answer"], steps=steps, tokens=meta["tokens"],
                       arrays=arrays, answers=[meta["answer"]] + meta["sample_answers"],
                       pivot_density=pivots.density, scored=True)


def token_colour(entropy: float) -> str:
    alpha = float(np.clip(entropy / TOKEN_ENTROPY_SPAN, 0.0, 1.0)) * 0.7
    return f"rgba(220, 38, 38, {alpha:.2f})"


def step_tokens_html(view: TraceView, step: int) -> str:
    """The step's tokens, each tinted red by the predictive entropy that produced it."""
    if not (0 <= step < len(view.steps)):
        return ""
    s = view.steps[step]
    parts = ['<div class="pt-tokens" style="font-family:ui-monospace,monospace;font-size:0.9rem;'
             'line-height:1.9;white-space:pre-wrap;overflow-wrap:anywhere">']
    for t in range(s.tok_start, min(s.tok_end, len(view.tokens))):
        value = float(view.token_entropy[t]) if t < view.token_entropy.size else 0.0
        parts.append(f'<span title="{value:.2f} nats" style="background:{token_colour(value)};'
                     f'border-radius:3px;padding:1px 0;margin-right:1px">{esc(view.tokens[t])}</span>')
    parts.append("</div>")
    return "".join(parts)


def attention_targets(view: TraceView, step: int) -> list[dict]:
    """Where the step's attention went, averaged over layers: the prompt, each earlier step, itself."""
    if view.segment_attention.size == 0 or not (0 <= step < len(view.steps)):
        return []
    mass = view.segment_attention[:, step, : step + 2].mean(axis=0)  # [s+2]: prompt, steps 0..s
    total = float(mass.sum()) or 1.0
    rows = []
    for k, share in enumerate(mass):
        if k == 0:
            label = "prompt"
        elif k - 1 == step:
            label = f"step {step + 1} (itself)"
        else:
            label = f"step {k}"
        rows.append({"segment": k, "label": label, "share": float(share) / total})
    return rows


def compare_rows(a: TraceView, b: TraceView) -> list[dict]:
    """The headline numbers of two traces, one row per measure."""
    def summary(v: TraceView) -> dict:
        return {"model": v.model_id, "answer": v.answer or "(none)", "majority answer": v.majority or "(none)",
                "vote share": f"{v.vote_share:.0%}", "steps": len(v.steps), "pivots": len(v.pivots),
                "pivot density (/100 tok)": f"{v.pivot_density:.2f}",
                "mean attention entropy": f"{v.entropy.mean():.3f}" if v.entropy.size else "-",
                "mean predictive entropy": f"{v.pred_entropy.mean():.2f}" if v.pred_entropy.size else "-",
                "tokens": len(v.tokens)}
    left, right = summary(a), summary(b)
    return [{"measure": key, "A": str(left[key]), "B": str(right[key])} for key in left]
