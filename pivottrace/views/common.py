"""Shared by the view modules and the app's sidebar: escaping, previews, steps HTML, errors, and
the store and job calls the pages make, re-exported so pages import only views. No model is
loaded in the app process: models run in jobs.py workers.

`esc` (HTML) and `md` (Markdown) escape every piece of problem text, model output and user
input. It never calls Streamlit, never builds figures (charts.py) and runs no SQL (store.py).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field

import numpy as np

from .. import jobs, store
from ..pivots import PIVOT_THRESHOLD
from ..safe_text import visible_bidi

# Plain-words names of the pivot signals, for tooltips and expanders.
SIGNAL_NAMES = {
    "temporal_change": "attention jumped elsewhere (temporal change)",
    "layer_disagreement": "layers disagree on where to look",
    "attention_entropy": "attention spread out (high entropy)",
    "predictive_entropy": "next-token choice uncertain (predictive entropy)",
    "cue": "reflection word (wait, actually, let me check...)",
}
SCORE_COLOUR_SPAN = 2 * PIVOT_THRESHOLD  # a step at twice the pivot threshold gets the full colour
PREVIEW_CHARS = 140  # characters of problem text shown in tables


class InvalidInput(ValueError):
    """What the user entered cannot be used; the message says why and what to do."""


def esc(text) -> str:
    """HTML-escape anything shown to the user (None -> empty)."""
    return html.escape(visible_bidi("" if text is None else str(text)), quote=True)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:&])")


def md(text) -> str:
    """Backslash-escape Markdown (and Streamlit's :directive: syntax) in text shown via st.markdown,
    st.caption, alerts or widget labels, so user and model text is never read as formatting,
    links or images. Every ASCII punctuation mark may be backslash-escaped in CommonMark."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", visible_bidi("" if text is None else str(text)))


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join(visible_bidi(text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def interval_text(low: float | None, high: float | None) -> str:
    """"0.41–0.79": a stored credible interval of the uncertainty ("" where the route has none)."""
    return "" if low is None or high is None else f"{low:.2f}–{high:.2f}"


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


# --------------------------------------------------------------------------- the app's sidebar and welcome

open_db = store.open_db  # the database at $PIVOTTRACE_DB (or the path given)
StoreError = store.StoreError  # what the store refuses (permissions, leases, bad values): show its message
ROLES = store.ROLES
user_role = store.user_role


def user_rows(db) -> list[dict]:
    return store.users(db)


def is_empty(db) -> bool:
    return store.problem_count(db) == 0


# --------------------------------------------------------------------------- background jobs (jobs.py)

JobError = jobs.JobError
JOB_ACTIVE = jobs.ACTIVE  # statuses of a job still queued or running
active_jobs = jobs.active
refresh_jobs = jobs.refresh
cancel_job = jobs.cancel
start_demo_job = jobs.start_demo
start_trace_job = jobs.start_trace
TRACE_DEVICES = jobs.DEVICES  # the Pool page's device choice ("auto": the GPU when the worker has one)
TRACE_DTYPES = jobs.DTYPES
start_route_job = jobs.start_route
start_eval_job = jobs.start_eval


JOB_TITLES = {"demo": "Tracing the demo pool", "trace": "Tracing", "route": "Routing", "eval": "Evaluation"}


@dataclass
class JobProgress:
    """One background job as a progress bar shows it (every page shows the running ones)."""
    job_id: int
    kind: str
    status: str  # queued, running, done, failed, cancelled
    done: int
    total: int
    message: str

    @property
    def active(self) -> bool:
        return self.status in jobs.ACTIVE

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0

    @property
    def title(self) -> str:
        return JOB_TITLES.get(self.kind, self.kind)

    @property
    def text(self) -> str:
        """One line for a progress bar or an alert (Markdown-escaped)."""
        count = f" · {self.done} of {self.total}" if self.total > 1 else ""
        return f"{self.title} #{self.job_id} · {self.status}{count} · {md(self.message or 'starting')}"


def _job_progress(row: dict) -> JobProgress:
    return JobProgress(row["id"], row["kind"], row["status"], int(row["done"] or 0), int(row["total"] or 0),
                       row["message"] or "")


def running_jobs(db) -> list[JobProgress]:
    """Jobs still running (workers that died are marked failed first), newest first."""
    return [_job_progress(row) for row in jobs.active(db)]


def latest_job(db, kind: str) -> JobProgress | None:
    """The newest job of a kind, whatever its state (a page shows its progress, result or error)."""
    rows = [row for row in jobs.refresh(db) if row["kind"] == kind]
    return _job_progress(rows[0]) if rows else None


def demo_description() -> str:
    """What "Run the demo" does, in words, from the demo's own settings."""
    from ..pipeline import DEMO_FIRST, DEMO_PROBLEMS, demo_budget

    return (f"Generates {DEMO_PROBLEMS} arithmetic word problems of one to four steps, sets a budget of "
            f"{demo_budget(DEMO_PROBLEMS)} labels, traces {DEMO_FIRST} problems with the embedded SmolLM2-135M "
            f"model and routes them (about a minute), then traces the other {DEMO_PROBLEMS - DEMO_FIRST} in the "
            "background while you look around (a few minutes on a laptop CPU; the progress shows in the "
            "sidebar on every page).")
