"""The Evaluation page's view-model: the latest oracle-evaluation report, shaped for a table.

It reads the report files evaluate.py wrote, and says why an evaluation cannot run yet; it runs no
evaluation, no SQL and never calls Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import pipeline, store


def evaluation_folder(db_file: str | None = None) -> Path:
    """Where the app keeps its evaluation report: out/eval beside the database (as the CLI's default)."""
    return Path(db_file or store.default_db_path()).resolve().parent / "out" / "eval"


@dataclass
class EvaluationView:
    report: object | None  # evaluate.EvalReport, or None when there is none yet
    message: str  # what to do next when there is no report
    table: list[dict] = field(default_factory=list)  # one row per (budget, strategy), display-ready
    summary: list[str] = field(default_factory=list)


def step_localisation_rows(db) -> list[dict]:
    """Pivots against annotators' first wrong steps (pipeline.step_label_localisation), as table rows;
    [] when no step label is stored yet."""
    report = pipeline.step_label_localisation(db)
    if report is None:
        return []

    def pct(x):
        return "-" if x != x else f"{x:.0%}"  # NaN (no pivots / no clean chains) -> "-"

    return [
        {"measure": "first wrong step is a pivot", "pivots": pct(report.recall),
         "random steps, as many": pct(report.random_same_size), "longest step": pct(report.longest_step),
         "one random step": pct(report.random_step)},
        {"measure": "... or within ±1 step of one", "pivots": pct(report.recall_near),
         "random steps, as many": pct(report.random_same_size_near), "longest step": pct(report.longest_step_near),
         "one random step": pct(report.random_step_near)},
        {"measure": "top-scoring step is the first wrong step", "pivots": pct(report.top_step),
         "random steps, as many": "", "longest step": pct(report.longest_step),
         "one random step": pct(report.random_step)},
        {"measure": f"precision of 'pivot' ({report.n_chains} chains marked wrong, {report.n_clean} all right)",
         "pivots": pct(report.precision), "random steps, as many": "", "longest step": "", "one random step": ""},
    ]


def evaluation_view(folder: str | Path) -> EvaluationView:
    """The latest evaluation report in `folder`, ready to show; a hint when there is none."""
    from ..evaluate import EvaluationError, load_report
    from ..report import headroom_summary, summary_lines

    try:
        report = load_report(folder)
    except EvaluationError as err:
        return EvaluationView(None, str(err))
    table = [{"budget": f"{row['budget_share']:.0%}" if row.get("budget") else "cold start",
              **{key: row.get(key) for key in ("strategy", "labels", "auroc", "ece", "self_train_precision",
                                                "human_share", "train_size", "train_precision", "caught",
                                                "leaked")}}
             for row in report.results]
    summary = summary_lines(report.results) + headroom_summary(report.pool.get("headroom"))
    return EvaluationView(report, "", table, summary)


def evaluation_blocker(db) -> str | None:
    """Why the evaluation cannot run yet, in words (None: it can)."""
    from ..evaluate import MIN_POOL
    from .common import running_jobs

    if store.latest_model_id(db) is None:
        return "Nothing is traced yet: run the demo or trace a pool first."
    have = store.traced_with_gold(db)
    if have >= MIN_POOL:
        return None
    tracing = any(job.kind in ("demo", "trace") for job in running_jobs(db))
    return (f"The evaluation needs at least {MIN_POOL} traced problems with a gold answer; {have} so far."
            + (" Tracing is under way: the button turns on when there are enough." if tracing
               else " Trace more problems that have a gold answer on the Pool page."))
