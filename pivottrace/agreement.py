"""Inter-annotator agreement on double-labelled items, and the disagreements a lead reviews.

Input: store.verdicts_by_annotator rows (each annotator's verdict in force per problem) and
store.reviews rows. Output: Krippendorff's alpha (nominal, the `krippendorff` package) and the
raw share of agreeing pairs, overall and per annotator, and the list of disagreements not yet
reviewed. What an annotator asserts is compared, not the button they pressed: "correct" asserts
the answer they were shown, "wrong" the gold answer they typed (canonical forms, so 1/2 = 0.5),
"flawed" that the problem is broken. It reads and writes nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .answers import canonical

FLAWED = "(flawed)"


def asserted(row: dict) -> str:
    """The answer a verdict asserts is right (or FLAWED), in canonical form."""
    if row["verdict"] == "flawed":
        return FLAWED
    answer = row["gold_answer"] if row["verdict"] == "wrong" else row["shown_answer"]
    return canonical(answer) if answer is not None else f"({row['verdict']})"


@dataclass
class AnnotatorAgreement:
    annotator: str
    items: int  # double-labelled items this annotator labelled
    agreeing: int  # of those, where the other label asserts the same
    alpha: float | None  # Krippendorff's alpha over those items (None: undefined)

    @property
    def share(self) -> float | None:
        return self.agreeing / self.items if self.items else None


@dataclass
class Agreement:
    items: int  # problems with verdicts from two or more annotators
    agreeing: int  # of those, where every verdict asserts the same
    alpha: float | None  # Krippendorff's alpha (nominal) over them; None when undefined
    per_annotator: list[AnnotatorAgreement] = field(default_factory=list)
    note: str = ""  # why alpha is None, in words

    @property
    def share(self) -> float | None:
        return self.agreeing / self.items if self.items else None


def _alpha(units: dict[str, dict[str, str]]) -> tuple[float | None, str]:
    """Krippendorff's alpha (nominal) over {problem: {annotator: asserted value}}."""
    if not units:
        return None, "No item has labels from two annotators yet."
    annotators = sorted({a for votes in units.values() for a in votes})
    values = sorted({v for votes in units.values() for v in votes.values()})
    code = {v: float(i) for i, v in enumerate(values)}
    data = np.full((len(annotators), len(units)), np.nan)  # [raters, units], NaN = not labelled
    for j, votes in enumerate(units.values()):
        for a, v in votes.items():
            data[annotators.index(a), j] = code[v]
    if len(values) < 2:  # every label asserts the same thing: no disagreement to expect, alpha is 0/0
        return None, "Every label asserts the same answer, so alpha is undefined (observed agreement is 100 %)."
    import krippendorff

    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")), ""


def agreement(rows: list[dict]) -> Agreement:
    """Agreement over the problems that two or more annotators labelled."""
    units: dict[str, dict[str, str]] = {}
    for row in rows:
        units.setdefault(row["problem_id"], {})[row["annotator"]] = asserted(row)
    units = {pid: votes for pid, votes in units.items() if len(votes) >= 2}
    alpha, note = _alpha(units)
    people = sorted({a for votes in units.values() for a in votes})
    per = []
    for person in people:
        mine = {pid: votes for pid, votes in units.items() if person in votes}
        agreeing = sum(all(v == votes[person] for v in votes.values()) for votes in mine.values())
        per.append(AnnotatorAgreement(person, len(mine), agreeing, _alpha(mine)[0]))
    agreeing = sum(len(set(votes.values())) == 1 for votes in units.values())
    return Agreement(len(units), agreeing, alpha, per, note)


@dataclass
class Disagreement:
    problem_id: str
    labels: list[dict]  # the verdict rows in force, first labeller first


def disagreements(rows: list[dict], reviews: list[dict]) -> list[Disagreement]:
    """Problems whose annotators assert different things and that no lead has reviewed since their
    newest label, oldest first: the lead's review queue."""
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(row)
    reviewed: dict[str, int] = {}
    for review in reviews:
        reviewed[review["problem_id"]] = max(reviewed.get(review["problem_id"], 0), review["label_id"])
    out = []
    for pid, labels in by_problem.items():
        if len(labels) < 2 or len({asserted(r) for r in labels}) == 1:
            continue
        if reviewed.get(pid, 0) > max(r["label_id"] for r in labels):
            continue  # a lead settled it after the newest label
        out.append(Disagreement(pid, labels))
    return out
