"""Process-reward training rows from human step labels, as TRL's PRMTrainer reads them.

Input: step labels in force (store.effective_step_labels) and the stored traces they were given on.
Output: one row per labelled problem: `prompt` (the problem text), `completions` (the chain's
steps, as the annotator saw them) and `labels` (one bool per step: True = the step is right).
PRM800K's first-wrong-step convention: the steps before the first wrong step are right, the first
wrong step is wrong, and the steps after it carry no label, so they are left out. "Every step is
right" (-1) gives all True. Where an annotator rated every step +1 / 0 / -1, those ratings are
used instead, cut after the first -1 (0, "neutral", counts as right, as in PRM800K's
binarisation). Only human step labels go in: pivots and the router never write one. Newest label
per problem when several annotators labelled it; a step label given after a verdict that was
later undone is left out. It does not write files (export.py does).
"""

from __future__ import annotations

import pyarrow as pa

from . import store

PRM_SCHEMA = pa.schema([
    ("prompt", pa.string()),
    ("completions", pa.list_(pa.string())),
    ("labels", pa.list_(pa.bool_())),
    ("problem_id", pa.string()),
    ("annotator", pa.string()),
    ("model_id", pa.string()),
])


def step_bools(first_wrong_step: int, n_steps: int, ratings: list | None = None) -> list[bool]:
    """Per-step labels, cut after the first wrong step (see the module docstring)."""
    if ratings is not None and len(ratings) == n_steps and all(r is not None for r in ratings):
        labels = [r >= 0 for r in ratings]
        return labels[:labels.index(False) + 1] if False in labels else labels
    if first_wrong_step < 0:
        return [True] * n_steps
    return [True] * first_wrong_step + [False]


def prm_rows(db) -> tuple[list[dict], dict[str, int]]:
    """Rows ordered by problem id, and {reason: count} of step labels left out."""
    newest: dict[str, dict] = {}
    rows, skipped = [], {}
    verdicts_in_force = {row["id"] for row in store.effective_labels(db)}
    for label in store.effective_step_labels(db):  # ordered by id: later ones win
        if label["label_id"] is not None and label["label_id"] not in verdicts_in_force:
            skipped["its verdict was undone"] = skipped.get("its verdict was undone", 0) + 1
            continue
        newest[label["problem_id"]] = label
    for problem_id in sorted(newest):
        label = newest[problem_id]
        trace = store.load_trace(db, problem_id, label["model_id"])
        problem = store.get_problem(db, problem_id)
        if trace is None or problem is None:
            skipped["trace no longer stored"] = skipped.get("trace no longer stored", 0) + 1
            continue
        steps = [step["text"] for step in trace["steps"]]
        if len(steps) != label["n_steps"]:
            skipped["trace re-segmented since the label"] = skipped.get("trace re-segmented since the label", 0) + 1
            continue
        labels = step_bools(label["first_wrong_step"], len(steps), label["ratings"])
        rows.append({"prompt": problem["text"], "completions": [s.strip() for s in steps[:len(labels)]],
                     "labels": labels, "problem_id": problem_id, "annotator": label["annotator"],
                     "model_id": label["model_id"]})
    return rows, skipped
