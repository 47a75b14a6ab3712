"""The Annotate page's view-model and actions: the next queue item, label/undo, progress.

Actions validate what the annotator typed (InvalidInput) before anything is saved; the store
keeps the invariants. It never calls Streamlit and runs no SQL (store.py).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from .. import pipeline, store
from ..answers import canonical, majority_vote, parse_gold_input
from .common import InvalidInput, StepView, build_steps, interval_text, md, preview, problem_html, steps_html

# Label actions an annotator can take -> the verdict stored.
ACTIONS = {"accept": "correct", "wrong": "wrong", "flawed": "flawed", "skip": "skip"}
GOLD_HINT = "Type the correct final answer, e.g. 42, 3/4 or \\\\frac{1}{2}."  # markdown: the backslash escaped


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
    second_label: bool = False  # an overlap item another annotator labelled: a second, blind opinion
    uncertainty_interval: tuple | None = None  # (low, high) 90 % credible interval of the uncertainty

    @property
    def uncertainty_text(self) -> str:
        """"0.62 (0.41–0.79)": P(majority wrong) and its credible interval, "-" before any routing."""
        if self.uncertainty is None:
            return "-"
        if self.uncertainty_interval is None:
            return f"{self.uncertainty:.2f}"
        return f"{self.uncertainty:.2f} ({interval_text(*self.uncertainty_interval)})"

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
        uncertainty_interval=item.get("uncertainty_interval"),
        steps=build_steps(trace, features), candidates=candidates, majority=majority,
        vote_share=share, n_pivots=int((features or {}).get("n_pivots") or 0),
        pivot_density=float((features or {}).get("pivot_density") or 0.0))


def next_item(db, annotator: str) -> QueueItemView | None:
    """Lease (or keep) this annotator's next queue item; None when the queue is empty."""
    if not (annotator or "").strip():
        raise InvalidInput("Pick your name in the sidebar first.")
    item = store.next_item_with_overlap(db, annotator)
    if item is None:
        return None
    view = item_view(db, item["problem_id"])
    view.second_label = item["second_label"]
    return view


@dataclass
class LabelOutcome:
    message: str
    router_version: int | None = None  # the recalibration this label triggered, if any


def submit_label(db, *, annotator: str, problem_id: str, action: str, gold_text: str | None = None,
                 shown_answer: str | None = None, seconds: float | None = None,
                 second_label: bool = False) -> LabelOutcome:
    """Translate one action (accept, wrong + gold, flawed, skip) into a verdict and save it; the
    recalibration runs on a background thread right behind it (pipeline.label(wait=False)).
    `second_label`: the item is an overlap item's second opinion (QueueItemView.second_label).

    The store keeps the label invariants (a known verdict; `wrong` needs the gold answer); here its
    refusal, an unknown action or a gold answer that cannot be parsed raises InvalidInput, and
    nothing is saved.
    """
    if action not in ACTIONS:
        raise InvalidInput(f"Unknown action {action!r}.")
    gold = None
    if action == "wrong" and gold_text:
        try:
            gold = parse_gold_input(gold_text)
        except ValueError as err:
            raise InvalidInput(f"{md(err)} {GOLD_HINT}") from None
        if shown_answer is not None and canonical(gold) == canonical(shown_answer):
            raise InvalidInput(f"The gold answer {md(gold)} is the model's own answer: press Accept instead.")
    try:
        pipeline.label(db, problem_id=problem_id, annotator=annotator, verdict=ACTIONS[action],
                       gold_answer=gold, shown_answer=shown_answer,
                       seconds=None if seconds is None else round(float(seconds), 2), wait=False,
                       second_label=second_label)
    except store.InvalidLabel as err:
        raise InvalidInput(f"{md(err)} {GOLD_HINT}" if action == "wrong" else md(err)) from None
    words = {"accept": "Accepted the majority answer", "wrong": f"Saved gold answer {md(gold)}",
             "flawed": "Flagged the problem as flawed", "skip": "Skipped"}[action]
    if action != "skip":
        words += " · the router recalibrates in the background"
    return LabelOutcome(words, None)


def undo_last(db, annotator: str) -> LabelOutcome:
    """Undo this annotator's last label (a new row), re-queue its item to them, re-route."""
    undone = store.undo_last_label(db, annotator)
    report = None if undone["verdict"] == "skip" else pipeline.recalibrate_if_due(db)
    return LabelOutcome(f"Undid '{undone['verdict']}' on problem {undone['problem_id']}",
                        report.router_version if report else None)


# Step labels after a "wrong" verdict (PRM800K's first wrong step), optional and after the fact.

STEP_KEYS = 9  # steps 1-9 get a number key; longer chains' later steps are marked by clicking


@dataclass
class StepMarkView:
    """The annotator's last problem, answered "wrong", offered for an optional first-wrong-step mark."""

    problem_id: str
    steps: list[str]  # step texts as shown (previews)
    marked: int | None  # 0-based first wrong step in force from this annotator; None = not marked

    @property
    def keyed(self) -> int:
        return min(len(self.steps), STEP_KEYS)


def step_mark_target(db, annotator: str) -> StepMarkView | None:
    """The annotator's latest label in force when it is a "wrong" verdict on a traced problem."""
    last = store.latest_label_in_force(db, annotator)
    if last is None or last["verdict"] != "wrong":
        return None
    problem_id = last["problem_id"]
    trace = store.load_trace(db, problem_id)
    if not trace or not trace["steps"]:
        return None
    marks = [row for row in store.effective_step_labels(db, problem_id=problem_id) if row["annotator"] == annotator]
    return StepMarkView(problem_id, [preview(step.get("text", ""), 80) for step in trace["steps"]],
                        marks[-1]["first_wrong_step"] if marks else None)


def mark_first_wrong_step(db, *, annotator: str, problem_id: str, step: int) -> LabelOutcome:
    """Save the annotator's first wrong step (0-based) on the problem's trace; the verdict is untouched."""
    store.save_step_label(db, problem_id=problem_id, annotator=annotator, first_wrong_step=int(step))
    return LabelOutcome(f"Marked step {int(step) + 1} as the first wrong step of problem {problem_id}")


def undo_step_mark(db, *, annotator: str, problem_id: str) -> LabelOutcome:
    """Take back the annotator's step mark on the problem (a new row)."""
    undone = store.undo_last_step_label(db, annotator, problem_id=problem_id)
    return LabelOutcome(f"Took back the step mark on problem {undone['problem_id']}")


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
