"""Budget analytics: burn rate, run-out date, per-day series, per-annotator tallies, agreement.

Input: an open store database (read through named store functions). Output: plain dicts the
Budget view shapes for the page. It runs no SQL itself (store.py does), writes nothing, and
does not render anything (views/budget.py, charts.py).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from . import store
from .agreement import agreement

BURN_WINDOW_DAYS = 7  # burn rate = labels per day over the last week: smooths weekends, still recent
DAY_SECONDS = 86400
PER_DAY_MAX_DAYS = 90  # the daily series the Budget page charts stops this far back


def budget_aggregates(db, *, at: float | None = None,
                      window_days: float = BURN_WINDOW_DAYS) -> dict:
    """Everything the Budget page shows, from a few indexed queries (milliseconds at 100k problems).

    Returns a dict:
        total, cost_per_label, spent, remaining: as budget_status (total/remaining None: no budget)
        cost_spent: spent * cost_per_label
        burn_rate_per_day: labels in force created in the last `window_days` days, per day (the
            window shrinks to the time since the first label when that is shorter, but not below
            one day)
        window_days: the window actually used
        projected_run_out: ISO date (UTC) when `remaining` reaches 0 at that rate; None without a
            budget or a burn rate; today when nothing remains
        per_day: [{day: "YYYY-MM-DD", labels}] from the first label's day to today, zeros
            included (at most PER_DAY_MAX_DAYS days)
        annotators: [{annotator, labels, correct, wrong, flawed, skips, undos, median_seconds,
            accept_rate: share of "correct" among correct/wrong (how often they agree with the
                model's majority answer),
            agreement: share of their double-labelled problems where the other label asserts
                the same answer (agreement.py); None while they have none}], most labels first
        agreement: the same share over every double-labelled problem, or None
        alpha: Krippendorff's alpha over them (agreement.py), or None
        routes: {route: count}; queue_remaining: unlabelled `annotate` items
    `at` is the time to measure against (default now).
    """
    at = store.now() if at is None else float(at)
    budget = store.budget_status(db)
    in_force = store.effective_labels(db)

    def day(stamp: float) -> dt.date:
        return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).date()

    span_days, burn, per_day = float(window_days), 0.0, []
    if in_force:
        first = min(r["created_at"] for r in in_force)
        span_days = min(span_days, max((at - first) / DAY_SECONDS, 1.0))
        burn = sum(1 for r in in_force if r["created_at"] >= at - span_days * DAY_SECONDS) / span_days
        counts: dict = {}
        for r in in_force:
            counts[day(r["created_at"])] = counts.get(day(r["created_at"]), 0) + 1
        last = day(at)
        start = max(min(counts), last - dt.timedelta(days=PER_DAY_MAX_DAYS - 1))
        per_day = [{"day": (start + dt.timedelta(days=k)).isoformat(),
                    "labels": counts.get(start + dt.timedelta(days=k), 0)}
                   for k in range((last - start).days + 1)]
    run_out = None
    if budget["remaining"] is not None and (burn > 0 or budget["remaining"] == 0):
        days_left = budget["remaining"] / burn if burn > 0 else 0.0
        run_out = day(at + days_left * DAY_SECONDS).isoformat()

    # agreement on double-labelled items (agreement.py: what each label asserts, Krippendorff's alpha)
    agree = agreement(store.verdicts_by_annotator(db))
    shares = {p.annotator: p.share for p in agree.per_annotator}

    people: dict = {}
    for r in in_force:
        person = people.setdefault(r["annotator"], {"correct": 0, "wrong": 0, "flawed": 0, "seconds": []})
        person[r["verdict"]] += 1
        if r["seconds"] is not None:
            person["seconds"].append(r["seconds"])
    other: dict = {name: {"skip": 0, "undo": 0} for name in people}
    for annotator, verdict, n in store.skip_undo_counts(db):
        other.setdefault(annotator, {"skip": 0, "undo": 0})[verdict] = n
    for name in shares:  # labelled, though none of their labels is the one in force
        other.setdefault(name, {"skip": 0, "undo": 0})
    annotators = []
    for name, extra in other.items():
        person = people.get(name, {"correct": 0, "wrong": 0, "flawed": 0, "seconds": []})
        judged = person["correct"] + person["wrong"]
        annotators.append({
            "annotator": name, "labels": judged + person["flawed"], "correct": person["correct"],
            "wrong": person["wrong"], "flawed": person["flawed"], "skips": extra["skip"],
            "undos": extra["undo"],
            "median_seconds": float(np.median(person["seconds"])) if person["seconds"] else None,
            "accept_rate": person["correct"] / judged if judged else None,
            "agreement": shares.get(name),
        })
    annotators.sort(key=lambda a: (-a["labels"], a["annotator"]))

    queue = store.queue_remaining(db)
    return {
        **budget, "cost_spent": budget["spent"] * (budget["cost_per_label"] or 0.0),
        "burn_rate_per_day": burn, "window_days": span_days, "projected_run_out": run_out,
        "per_day": per_day, "annotators": annotators,
        "agreement": agree.share, "alpha": agree.alpha,
        "routes": store.route_counts(db), "queue_remaining": queue,
    }
