"""What the app's pages show, computed: view-models, escaped HTML snippets and guarded actions.

Input: an open store database (and, for one action, a Tracer). Output: dataclasses, row dicts
for tables, and HTML strings in which every piece of problem text, model output and annotator
input has gone through `html.escape`. Actions that change things (label, undo, budget, router
target) validate their input here and refuse non-leads here, so a page cannot skip the check.
It never calls Streamlit and never builds figures (see charts.py); background jobs are jobs.py.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from pathlib import Path
from dataclasses import dataclass, field

import numpy as np

from . import analytics, pipeline, store
from .answers import canonical, majority_vote, parse_gold_input
from .datasets import PoolFormatError, read_pool_bytes
from .pivots import PIVOT_THRESHOLD, pool_stats, score_trace
from .route import RouterConfig

# Plain-words names of the pivot signals, for tooltips and expanders.
SIGNAL_NAMES = {
    "temporal_change": "attention jumped elsewhere (temporal change)",
    "layer_disagreement": "layers disagree on where to look",
    "attention_entropy": "attention spread out (high entropy)",
    "predictive_entropy": "next-token choice uncertain (predictive entropy)",
    "cue": "reflection word (wait, actually, let me check...)",
}
# Label actions an annotator can take -> the verdict stored.
ACTIONS = {"accept": "correct", "wrong": "wrong", "flawed": "flawed", "skip": "skip"}
SCORE_COLOUR_SPAN = 2 * PIVOT_THRESHOLD  # a step at twice the pivot threshold gets the full colour
TOKEN_ENTROPY_SPAN = 4.0  # nats; at ~4 nats the model is spread over dozens of tokens: full colour
PREVIEW_CHARS = 140  # characters of problem text shown in tables


class InvalidInput(ValueError):
    """What the user entered cannot be used; the message says why and what to do."""


def esc(text) -> str:
    """HTML-escape anything shown to the user (None -> empty)."""
    return html.escape("" if text is None else str(text), quote=True)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:&])")


def md(text) -> str:
    """Backslash-escape Markdown (and Streamlit's :directive: syntax) in text shown via st.markdown,
    st.caption, alerts or widget labels, so user and model text is never read as formatting,
    links or images. Every ASCII punctuation mark may be backslash-escaped in CommonMark."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", "" if text is None else str(text))


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def db_path(db) -> str:
    """The file behind an open database ("" for an in-memory one)."""
    return store.db_file(db)


# --------------------------------------------------------------------------- steps and pivots

@dataclass
class StepView:
    index: int  # 0-based step number
    text: str  # raw step text (escape before HTML)
    score: float  # pivot score
    is_pivot: bool
    fired: list[str] = field(default_factory=list)  # signal names that fired on this step
    tok_start: int = 0  # completion token range [tok_start, tok_end)
    tok_end: int = 0

    @property
    def why(self) -> str:
        if not self.fired:
            return "no single signal stood out; the weighted sum crossed the threshold" if self.is_pivot else ""
        return "; ".join(SIGNAL_NAMES.get(name, name) for name in self.fired)


def build_steps(trace: dict | None, features: dict | None) -> list[StepView]:
    """Steps of a stored trace with the pivot scores and fired signals from its features row."""
    if not trace:
        return []
    scores = json.loads((features or {}).get("pivot_scores") or "[]")
    fired = json.loads((features or {}).get("pivot_signals") or "[]")
    steps = []
    for i, step in enumerate(trace["steps"]):
        score = float(scores[i]) if i < len(scores) else 0.0
        steps.append(StepView(i, step.get("text", ""), score, score > PIVOT_THRESHOLD,
                              list(fired[i]) if i < len(fired) else [],
                              int(step.get("tok_start", 0)), int(step.get("tok_end", 0))))
    return steps


def score_colour(score: float) -> str:
    """Amber whose strength follows the pivot score: clear at 0, full at SCORE_COLOUR_SPAN."""
    alpha = float(np.clip(score / SCORE_COLOUR_SPAN, 0.0, 1.0)) * 0.55
    return f"rgba(245, 158, 11, {alpha:.2f})"


def steps_html(steps: list[StepView], *, selected: int | None = None) -> str:
    """The reasoning, one block per step, pivots coloured by score; hover or expand for the why."""
    if not steps:
        return '<div class="pt-empty">No reasoning steps were recorded for this trace.</div>'
    parts = ['<div class="pt-steps" style="font-size:0.95rem;line-height:1.5">']
    for step in steps:
        border = "#d97706" if step.is_pivot else "#e5e7eb"
        outline = "box-shadow:0 0 0 2px #2563eb;" if selected == step.index else ""
        title = f"Pivot score {step.score:.2f}" + (f": {step.why}" if step.why else "")
        badge = (f'<span style="float:right;font-size:0.75rem;font-weight:600;color:#92400e">'
                 f'pivot · {step.score:.1f}</span>' if step.is_pivot else "")
        why = ""
        if step.is_pivot:
            items = "".join(f"<li>{esc(SIGNAL_NAMES.get(n, n))}</li>" for n in step.fired) or \
                f"<li>{esc(step.why)}</li>"
            why = (f'<details style="margin-top:2px"><summary style="cursor:pointer;font-size:0.8rem;'
                   f'color:#92400e">why a pivot</summary><ul style="margin:2px 0 0 1rem;'
                   f'font-size:0.8rem">{items}</ul></details>')
        parts.append(
            f'<div class="pt-step{" pt-pivot" if step.is_pivot else ""}" title="{esc(title)}" '
            f'style="background:{score_colour(step.score)};border-left:4px solid {border};'
            f'padding:4px 8px;margin:3px 0;border-radius:4px;{outline}">{badge}'
            f'<span style="color:#6b7280;font-size:0.75rem;margin-right:6px">{step.index + 1}</span>'
            f'<span style="white-space:pre-wrap">{esc(step.text.strip())}</span>{why}</div>')
    parts.append("</div>")
    return "".join(parts)


def problem_html(text: str) -> str:
    """The problem statement as a quoted block; the text is escaped, never interpreted."""
    return (f'<div class="pt-problem" style="font-size:1.1rem;line-height:1.55;padding:12px 16px;'
            f'border-left:4px solid #2563eb;background:#f8fafc;border-radius:4px;white-space:pre-wrap">'
            f'{esc(text)}</div>')


# --------------------------------------------------------------------------- annotate

@dataclass
class Candidate:
    answer: str  # canonical answer, or "(no answer)"
    votes: int
    share: float
    is_majority: bool


@dataclass
class QueueItemView:
    problem_id: str
    text: str
    source: str
    model_id: str | None
    uncertainty: float | None
    value: float | None
    router_version: int | None
    steps: list[StepView]
    candidates: list[Candidate]
    majority: str | None  # the answer an "accept" confirms
    vote_share: float
    n_pivots: int
    pivot_density: float

    @property
    def steps_html(self) -> str:
        return steps_html(self.steps)

    @property
    def problem_html(self) -> str:
        return problem_html(self.text)


def candidates_from(answers: list[str | None]) -> tuple[list[Candidate], str | None, float]:
    """Vote counts of the greedy answer plus the K samples, largest first."""
    vote = majority_vote(answers)
    total = max(sum(vote.counts.values()), 1)
    rows = [Candidate("(no answer)" if key in (None, "None") else key, count, count / total,
                      key == vote.majority)
            for key, count in vote.counts.items()]
    rows.sort(key=lambda c: (-c.votes, c.answer == "(no answer)"))
    return rows, vote.majority, vote.share


def item_view(db, problem_id: str) -> QueueItemView:
    """Everything the Annotate page shows for one problem (never its hidden gold answer)."""
    item = store.queue_item(db, problem_id)
    model_id = item["model_id"]
    trace = store.load_trace(db, problem_id, model_id) if model_id else None
    features = item["features"]
    answers = ([trace["answer"]] if trace else []) + list(item["sample_answers"])
    candidates, majority, share = candidates_from(answers)
    return QueueItemView(
        problem_id=problem_id, text=item["text"], source=item["source"], model_id=model_id,
        uncertainty=item["uncertainty"], value=item["value"], router_version=item["router_version"],
        steps=build_steps(trace, features), candidates=candidates, majority=majority,
        vote_share=share, n_pivots=int((features or {}).get("n_pivots") or 0),
        pivot_density=float((features or {}).get("pivot_density") or 0.0))


def next_item(db, annotator: str) -> QueueItemView | None:
    """Lease (or keep) this annotator's next queue item; None when the queue is empty."""
    if not (annotator or "").strip():
        raise InvalidInput("Pick your name in the sidebar first.")
    item = store.next_item(db, annotator)
    return item_view(db, item["problem_id"]) if item else None


@dataclass
class LabelOutcome:
    message: str
    router_version: int | None = None  # the recalibration this label triggered, if any


def submit_label(db, *, annotator: str, problem_id: str, action: str, gold_text: str | None = None,
                 shown_answer: str | None = None, seconds: float | None = None) -> LabelOutcome:
    """Validate and save one action (accept, wrong + gold, flawed, skip), then recalibrate.

    A gold answer that cannot be parsed raises InvalidInput and nothing is saved.
    """
    if action not in ACTIONS:
        raise InvalidInput(f"Unknown action {action!r}.")
    gold = None
    if action == "wrong":
        try:
            gold = parse_gold_input(gold_text or "")
        except ValueError as err:
            raise InvalidInput(f"{md(err)} Type the correct final answer, e.g. 42, 3/4 or \\\\frac{{1}}{{2}}.") from None
        if shown_answer is not None and canonical(gold) == canonical(shown_answer):
            raise InvalidInput(f"The gold answer {md(gold)} is the model's own answer: press Accept instead.")
    report = pipeline.label(db, problem_id=problem_id, annotator=annotator, verdict=ACTIONS[action],
                            gold_answer=gold, shown_answer=shown_answer,
                            seconds=None if seconds is None else round(float(seconds), 2))
    words = {"accept": "Accepted the majority answer", "wrong": f"Saved gold answer {md(gold)}",
             "flawed": "Flagged the problem as flawed", "skip": "Skipped"}[action]
    if report is not None:
        words += f" · router v{report.router_version} ({report.kind}) re-ranked the queue"
    return LabelOutcome(words, report.router_version if report else None)


def undo_last(db, annotator: str) -> LabelOutcome:
    """Undo this annotator's last label (a new row), re-queue its item to them, re-route."""
    undone = store.undo_last_label(db, annotator)
    report = None if undone["verdict"] == "skip" else pipeline.recalibrate_if_due(db)
    return LabelOutcome(f"Undid '{undone['verdict']}' on problem {undone['problem_id']}",
                        report.router_version if report else None)


@dataclass
class Progress:
    labelled: int  # labels in force, all annotators
    mine: int  # labels in force by this annotator
    mine_today: int
    remaining: int  # unlabelled items in the annotate queue
    budget_total: int | None
    budget_remaining: int | None


def progress(db, annotator: str | None = None, *, now: float | None = None) -> Progress:
    now = store.now() if now is None else now
    start_of_day = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    mine = [row for row in store.effective_labels(db) if row["annotator"] == annotator]
    budget = store.budget_status(db)
    return Progress(budget["spent"], len(mine), sum(r["created_at"] >= start_of_day for r in mine),
                    store.queue_remaining(db), budget["total"], budget["remaining"])


def seconds_since(started: float | None, *, now: float | None = None) -> float | None:
    if started is None:
        return None
    return max((time.time() if now is None else now) - started, 0.0)


# --------------------------------------------------------------------------- inspect

ROUTE_LABELS = {"annotate": "annotate", "self_train": "self-train", "low_priority": "low priority",
                "deferred": "deferred", None: "not routed"}


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
        "uncertainty": r["uncertainty"], "pivot_density": r["pivot_density"], "pivots": r["n_pivots"],
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
    return _trace_view(
        problem_id=problem_id, model_id=model_id, problem_text=problem["text"] if problem else trace["prompt"],
        completion=trace["completion"], answer=trace["answer"], steps=build_steps(trace, features),
        tokens=trace["tokens"], arrays=trace["arrays"],
        answers=[trace["answer"]] + store.sample_answers(db, problem_id, model_id),
        pivot_density=float((features or {}).get("pivot_density") or 0.0), scored=features is not None)


def trace_live(tracer, problem_id: str, problem_text: str) -> TraceView:
    """Trace one problem now with `tracer`, in memory only, for a side-by-side comparison.

    Nothing is stored: a stored trace of another model would become the newest checkpoint the
    router follows. With no pool to compare against, its pivot scores use the trace's own steps
    as the baseline (pool statistics of one trace), so read them within the trace, not across.
    """
    result = tracer.trace_batch([problem_text])[0]
    trace = result.trace
    pivots = score_trace(trace.arrays, pool_stats([trace.arrays]), trace.n_completion_tokens)
    steps = [StepView(i, step.get("text", ""), float(pivots.scores[i]), i in pivots.pivots, list(pivots.fired[i]),
                      int(step.get("tok_start", 0)), int(step.get("tok_end", 0)))
             for i, step in enumerate(trace.steps)]
    return _trace_view(problem_id=problem_id, model_id=f"{tracer.model_id} (live)", problem_text=problem_text,
                       completion=trace.completion, answer=trace.answer, steps=steps, tokens=list(trace.tokens),
                       arrays=trace.arrays, answers=[trace.answer] + list(result.sample_answers),
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


# --------------------------------------------------------------------------- budget (leads)

@dataclass
class BudgetView:
    total: int | None
    cost_per_label: float
    spent: int
    remaining: int | None
    spent_cost: float
    remaining_cost: float | None
    burn_per_day: float  # labels per day over the recent window (analytics.budget_aggregates)
    run_out: dt.date | None  # projected date the budget is spent at that rate
    deferred: int  # problems the router wanted to annotate but the budget could not cover
    queue: int  # unlabelled problems in the annotate queue
    per_day: list[dict] = field(default_factory=list)  # [{day, labels, spent}] spent = cumulative
    annotators: list[dict] = field(default_factory=list)  # one row per annotator, for a table
    agreement: float | None = None  # pairwise agreement over everyone


def budget_view(db, *, now: float | None = None) -> BudgetView:
    """The Budget page's numbers, from analytics.budget_aggregates, shaped for metrics, charts and tables."""
    agg = analytics.budget_aggregates(db, at=now)
    cost = float(agg["cost_per_label"] or 0.0)
    spent, per_day = 0, []
    for row in agg["per_day"]:
        spent += row["labels"]
        per_day.append({"day": dt.date.fromisoformat(row["day"]), "labels": row["labels"], "spent": spent})
    people = [{
        "annotator": a["annotator"], "labels": a["labels"], "correct": a["correct"], "wrong": a["wrong"],
        "flawed": a["flawed"], "skips": a["skips"], "undos": a["undos"],
        "median seconds": None if a["median_seconds"] is None else round(a["median_seconds"], 1),
        "labels per hour": round(3600 / a["median_seconds"], 1) if a["median_seconds"] else None,
        "accept rate": a["accept_rate"], "agreement": a["agreement"],
    } for a in agg["annotators"]]
    run_out = dt.date.fromisoformat(agg["projected_run_out"]) if agg["projected_run_out"] else None
    return BudgetView(agg["total"], cost, agg["spent"], agg["remaining"], agg["cost_spent"],
                      None if agg["remaining"] is None else agg["remaining"] * cost, agg["burn_rate_per_day"],
                      run_out, agg["routes"]["deferred"], agg["queue_remaining"], per_day, people, agg["agreement"])


def route_mix_series(db) -> list[dict]:
    """Route counts after each router version: [{router_version, time, route, count}] (long form).

    Each version stores the mix it left. Versions from before that (older databases) are
    replayed from the route log, which holds only changes; a version that changed nothing
    repeats the previous mix.
    """
    versions = store.router_versions(db)
    log = store.route_history(db) if any(v["counts"] is None for v in versions) else []
    state: dict[str, str] = {}
    rows, i = [], 0
    for version in versions:
        while i < len(log) and log[i]["router_version"] <= version["id"]:
            state[log[i]["problem_id"]] = log[i]["route"]
            i += 1
        counts = {route: 0 for route in store.ROUTES}
        if version["counts"] is not None:
            counts.update(version["counts"])
        else:
            for route in state.values():
                counts[route] += 1
        stamp = dt.datetime.fromtimestamp(version["created_at"])
        rows.extend({"router_version": version["id"], "time": stamp, "route": route, "count": n}
                    for route, n in counts.items())
    return rows


def router_history(db) -> list[dict]:
    """One row per router version: when, why, estimator, labels, thresholds and calibration metrics."""
    def num(value, digits=3):
        return None if value is None else round(float(value), digits)

    rows = []
    for v in store.router_versions(db):
        t, m = v["thresholds"], v["metrics"]
        rows.append({
            "version": v["id"], "time": dt.datetime.fromtimestamp(v["created_at"]), "estimator": v["kind"],
            "labels": v["n_labels"], "budget left": v["budget_remaining"],
            "target precision": num(t.get("target_precision"), 2),
            "self-train max u": num(t.get("self_train_max")), "low-priority max u": num(t.get("low_priority_max")),
            "est. pseudo-label precision": num(t.get("estimated_self_train_precision")),
            "ECE": num(m.get("ece")), "Brier": num(m.get("brier")), "AUROC": num(m.get("auroc")),
            "note": v["note"] or "",
        })
    return rows


def filled_columns(rows: list[dict]) -> list[str]:
    """Columns with at least one value, in order (e.g. calibration metrics before any fit are left out)."""
    return [c for c in (rows[0] if rows else {}) if any(r.get(c) not in (None, "") for r in rows)]


def current_target_precision(db) -> float:
    return pipeline.current_router_config(db).target_precision


def set_budget(db, *, user: str, total: int, cost_per_label: float = 0.0):
    """A lead sets the label budget; the pool is re-routed to the new capacity. Others are refused."""
    store.set_budget(db, user=user, total=total, cost_per_label=cost_per_label)
    if store.latest_model_id(db) is None:
        return None
    return pipeline.route(db, rescore=False, config=RouterConfig(target_precision=current_target_precision(db)),
                          note=f"budget set to {int(total)} by {user}")


def set_target_precision(db, *, user: str, target: float):
    """A lead changes the self-train precision target and re-routes. Others are refused."""
    store.require_role(db, user, "lead")
    if not 0.5 <= float(target) < 1.0:
        raise InvalidInput("The precision target must be at least 0.5 and below 1.")
    if store.latest_model_id(db) is None:
        raise InvalidInput("Nothing is traced yet, so there is nothing to route.")
    return pipeline.route(db, rescore=False, config=RouterConfig(target_precision=float(target)),
                          note=f"target precision set to {float(target):.2f} by {user}")


# --------------------------------------------------------------------------- pool

def is_empty(db) -> bool:
    return store.problem_count(db) == 0


def ingest_upload(db, data: bytes, filename: str, *, question_field: str | None = None,
                  answer_field: str | None = None) -> pipeline.IngestReport:
    """Ingest an uploaded pool file. Rejected rows come back with line numbers; good rows still load."""
    try:
        loaded = read_pool_bytes(data, filename, question_field=question_field or None,
                                 answer_field=answer_field or None)
    except PoolFormatError as err:
        raise InvalidInput(str(err)) from None
    return pipeline.ingest_loaded(db, loaded)


def rejected_rows(report: pipeline.IngestReport) -> list[dict]:
    return [{"line": r.line, "reason": r.reason} for r in report.rejected]


def pool_summary(db) -> dict:
    info = store.status(db)
    return {**info, "sources": store.source_counts(db)}


def user_rows(db) -> list[dict]:
    return store.users(db)


def load_tracer(spec: str = "default", *, samples: int = 4, max_new_tokens: int = 256):
    """A Tracer for `spec` (imports torch); the app keeps one per spec in st.cache_resource."""
    from .trace import TraceConfig, Tracer

    return Tracer(spec or "default", config=TraceConfig(n_samples=samples, max_new_tokens=max_new_tokens,
                                                        batch_size=1 + samples))


# --------------------------------------------------------------------------- evaluation

def evaluation_folder(db_file: str | None = None) -> Path:
    """Where the app keeps its evaluation report: out/eval beside the database (as the CLI's default)."""
    return Path(db_file or store.default_db_path()).resolve().parent / "out" / "eval"


@dataclass
class EvaluationView:
    report: object | None  # evaluate.EvalReport, or None when there is none yet
    message: str  # what to do next when there is no report
    table: list[dict] = field(default_factory=list)  # one row per (budget, strategy), display-ready
    summary: list[str] = field(default_factory=list)


def evaluation_view(folder: str | Path) -> EvaluationView:
    """The latest evaluation report in `folder`, ready to show; a hint when there is none."""
    from .evaluate import EvaluationError, load_report
    from .report import summary_lines

    try:
        report = load_report(folder)
    except EvaluationError as err:
        return EvaluationView(None, str(err))
    table = [{"budget": f"{row['budget_share']:.0%}" if row.get("budget") else "cold start",
              **{key: row.get(key) for key in ("strategy", "labels", "auroc", "ece", "self_train_precision",
                                                "human_share", "train_size", "train_precision", "caught",
                                                "leaked")}}
             for row in report.results]
    return EvaluationView(report, "", table, summary_lines(report.results))
