"""The Evaluation page's view-model: the latest oracle-evaluation report, shaped for a table.

It reads the report files evaluate.py wrote; it runs no evaluation, no SQL and never calls Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import store


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
    from ..evaluate import EvaluationError, load_report
    from ..report import summary_lines

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
