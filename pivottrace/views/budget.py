"""The Budget page's view-models and lead actions: spending, burn rate, annotators, route mix over
router versions, router history, budget and precision-target changes, the routes and the budget
explained, agreement between annotators, the overlap share and the lead's review queue.

Numbers come from analytics.py and the store; leads are checked by the store. It never calls
Streamlit, never builds figures (charts.py) and runs no SQL (store.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .. import analytics, pipeline, store
from ..route import MIN_TARGET_PRECISION, RouterConfig, probe_plan
from ..vocab import ROUTE_MEANINGS, ROUTES, route_name
from .common import InvalidInput, md, problem_html


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
    agreement: float | None = None  # share of double-labelled items whose labels agree (agreement.py)


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
        counts = {route: 0 for route in ROUTES}
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
            "ranked by": m.get("model"), "Bayes factor": num(m.get("bayes_factor"), 2),
            "labels": v["n_labels"], "budget left": v["budget_remaining"],
            "target precision": num(t.get("target_precision"), 2), "delta": num(t.get("delta"), 3),
            "self-train": band_state(t.get("self_train_certificate")),
            "self-train max u": num(t.get("self_train_max")), "low-priority max u": num(t.get("low_priority_max")),
            "est. pseudo-label precision": num(t.get("estimated_self_train_precision")),
            "ECE": num(m.get("ece")), "Brier": num(m.get("brier")), "AUROC": num(m.get("auroc")),
            "note": v["note"] or "",
        })
    return rows


def band_state(certificate: dict | None, *, goal: str = "open") -> str:
    """A band's certification in words: "open (120 of 400)", "closed, 23 probe labels to go"."""
    if not certificate:
        return "not certified (ablation or older router)"
    if certificate["candidates"] == 0:
        return "empty"
    if certificate["open"]:
        words = f"open ({certificate['certified']} of {certificate['candidates']} candidates)"
        more = certificate.get("probes_to_go")
        return words + (f", {more} probe labels to open more" if more else "")
    plan = probe_plan(certificate, goal=goal)
    return plan if goal == "verify" else "closed, " + plan  # low_priority keeps its route either way


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
    return pipeline.route(db, rescore=False, config=pipeline.current_router_config(db),
                          note=f"budget set to {int(total)} by {user}")


def set_target_precision(db, *, user: str, target: float, delta: float | None = None):
    """A lead changes the self-train precision target (and optionally the risk delta of its
    certificate) and re-routes. Others are refused. Both are stored on the router version; the
    target change goes to the audit trail."""
    store.require_role(db, user, "lead")
    refusal = f"The precision target must be at least {MIN_TARGET_PRECISION:g} and below 1."
    if float(target) < MIN_TARGET_PRECISION:  # the lead's floor; RouterConfig keeps the (0, 1) range
        raise InvalidInput(refusal)
    if delta is not None and not 0.001 <= float(delta) <= 0.5:
        raise InvalidInput("The risk delta must be between 0.001 and 0.5.")
    delta = pipeline.current_router_config(db).delta if delta is None else float(delta)
    try:
        config = RouterConfig(target_precision=float(target), delta=delta)
    except ValueError:
        raise InvalidInput(refusal) from None
    if store.latest_model_id(db) is None:
        raise InvalidInput("Nothing is traced yet, so there is nothing to route.")
    store.record_target_precision(db, user=user, before=current_target_precision(db), after=float(target))
    return pipeline.route(db, rescore=False, config=config,
                          note=f"target precision set to {float(target):.2f} (delta {delta:g}) by {user}")


def current_delta(db) -> float:
    return pipeline.current_router_config(db).delta


def band_rows(db) -> list[dict]:
    """One row per band of the latest router version: its size, estimated precision, measured
    precision with its confidence interval, the labels behind it, the target and its state."""
    last = store.latest_router_version(db)
    if last is None:
        return []
    t = last["thresholds"]
    counts = last["counts"] or store.route_counts(db)

    def num(value, digits=3):
        return None if value is None else round(float(value), digits)

    rows = []
    for name, route, estimated in (("self-train", "self_train", "estimated_self_train_precision"),
                                   ("low priority", "low_priority", "estimated_low_priority_precision")):
        cert = t.get(f"{route}_certificate")
        if route == "self_train":
            state = band_state(cert)
        elif cert:
            state = "verified" if t.get("low_priority_verified") else "unverified: " + band_state(cert, goal="verify")
        else:
            state = "not certified"
        rows.append({
            "band": name, "problems": counts.get(route, 0),
            "waiting": counts.get("self_train_pending", 0) if route == "self_train" else None,
            "estimated precision": num(t.get(estimated) if route == "low_priority" or counts.get(route)
                                       else t.get("estimated_pending_precision")),
            "measured precision": num(cert.get("precision")) if cert else None,
            "interval": (f"{cert['lower_bound']:.3f} – {cert['upper_bound']:.3f}" if cert and cert["labels"] else None),
            "labels behind it": cert["labels"] if cert else 0,
            "target": num(t.get("target_precision"), 2), "delta": num(t.get("delta"), 3), "state": state,
        })
    return rows



# --------------------------------------------------------------------------- routes and budget, explained

def route_rows(db) -> list[dict]:
    """Every route the router has (zeros included), with its count and what it means."""
    counts = store.route_counts(db)
    return [{"route": route_name(route), "problems": counts.get(route, 0),
             "meaning": ROUTE_MEANINGS.get(route, "")} for route in counts]


def budget_explanation(db) -> str:
    """Where the budget comes from and how labels spend it (Markdown)."""
    budget = store.budget_status(db)
    if budget["total"] is None:
        return "No budget is set: every problem the router finds worth a label goes to annotators. A lead sets one here."
    set_by = store.budget_set_by(db)
    if set_by == pipeline.DEMO_SOURCE:
        pool = store.problem_count(db)
        text = (f"The demo set a budget of **{budget['total']} labels**, about "
                f"{pipeline.DEMO_BUDGET_SHARE:.0%} of its {pool} problems: fewer labels than uncertain "
                "problems, so the router sends the most valuable to annotators and *defers* the rest "
                "until the budget grows. A lead can change it here.")
    else:
        text = f"**{budget['total']} labels**, set by {md(set_by)}."
    share = store.overlap_share(db)
    if share > 0:
        text += (f" {share:.0%} of the items are labelled by two annotators for agreement; each of those "
                 "counts **twice** against the budget.")
    return text


# --------------------------------------------------------------------------- agreement and review

@dataclass
class AgreementView:
    items: int  # double-labelled problems
    share: float | None  # share of them where the labels assert the same
    alpha: float | None  # Krippendorff's alpha (nominal)
    note: str  # why alpha is missing
    overlap_share: float  # the share of items labelled twice, as a lead set it
    second_labels: int  # labels that are a second opinion (each spends budget)
    per_annotator: dict = field(default_factory=dict)  # {annotator: (share, alpha, items)}


def agreement_view(db) -> AgreementView:
    from ..agreement import agreement

    result = agreement(store.verdicts_by_annotator(db))
    per = {p.annotator: (p.share, p.alpha, p.items) for p in result.per_annotator}
    return AgreementView(result.items, result.share, result.alpha, result.note, store.overlap_share(db),
                         store.second_labels_spent(db), per)


def annotator_rows(db, view: BudgetView | None = None) -> list[dict]:
    """The Budget page's annotator table, with Krippendorff's alpha and the double-labelled count."""
    view = view or budget_view(db)
    per = agreement_view(db).per_annotator
    rows = []
    for row in view.annotators:
        _, alpha, items = per.get(row["annotator"], (None, None, 0))
        rows.append({**row, "alpha": alpha, "double-labelled": items})
    return rows


def set_overlap_share(db, *, user: str, percent: float) -> None:
    """A lead sets the share of annotate picks labelled by two different annotators (in %)."""
    try:
        share = float(percent) / 100.0
    except (TypeError, ValueError):
        raise InvalidInput("The overlap share is a percentage, e.g. 10.") from None
    store.set_overlap_share(db, user=user, share=share)


@dataclass
class ReviewItem:
    problem_id: str
    text: str
    labels: list[dict]  # [{label_id, annotator, verdict, answer}] the verdicts that disagree

    @property
    def problem_html(self) -> str:
        return problem_html(self.text)


def review_queue(db) -> list[ReviewItem]:
    """Disagreements between annotators that no lead has settled, oldest first."""
    from ..agreement import asserted, disagreements

    out = []
    for item in disagreements(store.verdicts_by_annotator(db), store.reviews(db)):
        problem = store.get_problem(db, item.problem_id)
        out.append(ReviewItem(item.problem_id, problem["text"] if problem else "", [
            {"label_id": r["label_id"], "annotator": r["annotator"], "verdict": r["verdict"], "answer": asserted(r)}
            for r in item.labels]))
    return out


def resolve_review(db, *, lead: str, problem_id: str, label_id: int):
    """A lead keeps one annotator's label on a disagreement; the router recalibrates on it."""
    chosen = next((r for r in store.verdicts_by_annotator(db)
                   if r["problem_id"] == problem_id and r["label_id"] == int(label_id)), None)
    if chosen is None:
        raise InvalidInput("That label is no longer in force; reload the page.")
    store.resolve_review(db, lead=lead, problem_id=problem_id, verdict=chosen["verdict"],
                         gold_answer=chosen["gold_answer"], shown_answer=chosen["shown_answer"])
    if store.latest_model_id(db) is None:
        return None
    # the label in force changed (their number did not): recalibrate on it
    return pipeline.route(db, rescore=False, config=pipeline.current_router_config(db),
                          note=f"disagreement settled by {lead}")
