"""Runs the stages in order against the store: ingest -> trace -> features -> uncertainty -> route.

This is the glue the CLI, the app's background jobs and the evaluation share. It holds no maths
of its own (see pivots.py, uncertainty.py, route.py) and no torch: a `Tracer` is passed in.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

from . import store
from .answers import answers_match, canonical, extract_answer
from .datasets import LoadResult, RejectedRow, demo_problems, read_pool, spread_by_steps, with_every_step_count
from .features import FeatureTable, build_features, fit_pool_pivot_weights
from .route import RouterConfig, probe_plan, route_pool
from .posterior import credible_intervals, estimator_for
from .uncertainty import EstimatorConfig

RECALIBRATE_EVERY = 1  # labels between two recalibrations in the app (1 = after every label)


@dataclass
class IngestReport:
    added: int
    existing: int
    rejected: list[RejectedRow] = field(default_factory=list)
    rows: int = 0  # rows read from the file: loaded + rejected + blank
    loaded: int = 0  # rows that became a problem (repeats within the file included)
    blank: int = 0

    def totals(self) -> str:
        """One line that accounts for every row of the file."""
        return (f"Read {self.rows} rows: {self.loaded} loaded, {len(self.rejected)} rejected, "
                f"{self.blank} blank.")


def ingest(db, path: str | Path, **options) -> IngestReport:
    """Read a pool file into the store. Rejected rows are reported, the good ones still load."""
    return ingest_loaded(db, read_pool(path, **options))


def ingest_loaded(db, loaded: LoadResult) -> IngestReport:
    added, existing = store.insert_problems(db, loaded.problems)
    return IngestReport(added, existing, loaded.rejected, rows=loaded.rows, loaded=loaded.loaded,
                        blank=loaded.blank)


@dataclass
class TraceRun:
    traced: int = 0
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def trace_pool(db, tracer, *, limit: int | None = None, source: str | None = None,
               show_progress: bool = True, on_progress=None) -> TraceRun:
    """Trace every problem without a trace for `tracer.model_id`, batch by batch.

    Each batch is claimed first (store.claim_problems), so two runs at once never trace the
    same problem; the claims are released when the run ends, however it ends, and a crashed
    run's claims lapse. Each problem is written in its own transaction as soon as its batch is
    done, so an interrupted run loses at most the batch in flight, and a re-run skips what is
    done. `on_progress(done, total, run)` is called after each batch.
    """
    from tqdm import tqdm

    store.upsert_model(db, tracer.model_id, spec=str(tracer.source.path), n_layers=tracer.n_layers)
    total = len(store.pending_problems(db, tracer.model_id, limit=limit, source=source))
    run = TraceRun()
    run_id = uuid.uuid4().hex
    batch_size = max(int(tracer.config.batch_size), 1)
    bar = tqdm(total=total, unit="problem", disable=not show_progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        while limit is None or run.traced < limit:
            wanted = batch_size if limit is None else min(batch_size, limit - run.traced)
            batch = store.claim_problems(db, tracer.model_id, run_id, n=wanted, source=source)
            if not batch:
                break
            results = tracer.trace_batch([p["text"] for p in batch])
            for problem, result in zip(batch, results):
                store.save_trace(db, problem["id"], tracer.model_id, result)
                run.traced += 1
                run.tokens += result.generated_tokens
            run.seconds = time.perf_counter() - start
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{run.tokens_per_second:.1f}")
            if on_progress:
                on_progress(run.traced, max(total, run.traced), run)
    finally:
        bar.close()
        store.release_claims(db, run_id)
    return run


@dataclass
class RolloutImport:
    """What import-rollouts did: per model id the groups stored, and how their prompts were matched."""

    rows: int = 0  # sample rows read
    added: int = 0  # rollout rows stored (re-imported ones are kept once)
    groups: int = 0
    matched: dict = field(default_factory=dict)  # "id" | "text" | "contained" -> groups
    new_problems: list = field(default_factory=list)  # (problem_id, question) of unmatched prompts, stored as new
    model_ids: list = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


def import_rollouts(db, path: str | Path, *, fmt: str, checkpoint: str, step: int | None = None,
                    columns=None, source: str | None = None) -> RolloutImport:
    """Read a rollout file (rollouts.read_rollouts) and store it: K completions per (problem, checkpoint step).

    Prompts are matched to stored problems by id or normalised text; unmatched ones become new problems
    (reported). The model id is `checkpoint@step<N>` (rollouts.model_id_for), `step` overriding the file's;
    the checkpoint becomes the model's spec, so `analyse` loads it. Bad rows are reported, good ones load.
    """
    from .datasets import Problem
    from .rollouts import match_groups, model_id_for, new_problem_id, read_rollouts

    path = Path(path)
    loaded = read_rollouts(path, fmt=fmt, columns=columns)
    report = RolloutImport(rows=loaded.rows, groups=len(loaded.groups), rejected=loaded.rejected)
    match_groups(loaded.groups, store.problem_index(db))
    new = {}
    for group in loaded.groups:
        if group.problem_id is None:
            group.problem_id = new_problem_id(group)
            new.setdefault(group.problem_id, Problem(group.problem_id, group.question, source or f"rollouts:{path.stem}"))
        else:
            report.matched[group.matched_by] = report.matched.get(group.matched_by, 0) + 1
    store.insert_problems(db, list(new.values()))
    report.new_problems = [(p.id, p.text) for p in new.values()]
    rows, seen = [], {}
    for group in loaded.groups:
        model_id = model_id_for(checkpoint, group.step if step is None else step)
        if model_id not in seen:
            seen[model_id] = store.problems_with_rollouts(db, model_id)
            if store.model_spec(db, model_id) is None:
                store.upsert_model(db, model_id, spec=checkpoint, n_layers=None)
        if group.problem_id in seen[model_id]:  # this checkpoint's rollouts of it are in already
            continue
        messages = isinstance(group.prompt, list)
        for idx, (completion, score, line) in enumerate(zip(group.completions, group.scores, group.lines)):
            rows.append({"problem_id": group.problem_id, "model_id": model_id, "idx": idx,
                         "prompt": json.dumps(group.prompt) if messages else group.prompt,
                         "prompt_is_messages": int(messages), "completion": completion, "score": score,
                         "step": group.step if step is None else step, "source": path.name, "line": line})
        seen[model_id].add(group.problem_id)
    report.added = store.save_rollouts(db, rows)
    report.model_ids = list(seen)
    return report


def analyse_group(tracer, group: dict):
    """One problem's imported rollouts -> ProblemTrace: the first completion (file order) is analysed
    teacher-forced with the prompt the model saw (a verl prompt's special tokens restored when the
    model's chat template proves them, rollouts.restore_chat_prompt); the other K-1 are its samples
    (the analysed chain votes too, as the greedy chain does in trace_batch)."""
    from .answers import extract_answer
    from .records import ProblemTrace

    from .rollouts import restore_chat_prompt

    started = time.perf_counter()
    first, *others = group["completions"]
    prompt = group["prompt"]
    if isinstance(prompt, str):  # a verl dump's prompt lost its special tokens: restore them when provable
        prompt = restore_chat_prompt(prompt, tracer.tokenizer) or prompt
    result = tracer.analyse(group["text"], first, prompt=prompt)
    return ProblemTrace(trace=result, samples=others, sample_answers=[extract_answer(c) for c in others],
                        generated_tokens=0, seconds=time.perf_counter() - started)


def analyse_pool(db, tracer, *, model_id: str, limit: int | None = None, write_every: int = 8,
                 show_progress: bool = True, on_progress=None) -> TraceRun:
    """The teacher-forced analysis pass over imported rollouts of `model_id` with `tracer`'s model.

    Problems go shortest chain first (similar lengths side by side), and results are written every
    `write_every` problems in one transaction, so a killed run loses at most those and a re-run skips
    what is done. `run.tokens` counts analysed completion tokens.
    """
    from tqdm import tqdm

    store.upsert_model(db, model_id, spec=store.model_spec(db, model_id) or str(tracer.source.path),
                       n_layers=tracer.n_layers)
    pending = sorted(store.pending_rollouts(db, model_id, limit=limit), key=lambda g: len(g["completions"][0]))
    run = TraceRun()
    bar = tqdm(total=len(pending), unit="problem", disable=not show_progress, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for offset in range(0, len(pending), max(int(write_every), 1)):
            batch = [(g["problem_id"], analyse_group(tracer, g)) for g in pending[offset:offset + write_every]]
            store.save_traces(db, model_id, batch)
            run.traced += len(batch)
            run.tokens += sum(r.trace.n_completion_tokens for _, r in batch)
            run.seconds = time.perf_counter() - start
            bar.update(len(batch))
            if on_progress:
                on_progress(run.traced, len(pending), run)
    finally:
        bar.close()
    return run


def score_pool(db, model_id: str | None = None) -> list[dict]:
    """Recompute pivots and features for every trace of the model (pool statistics included).

    The answers are first re-read from the stored completions, so a pool traced before a fix to
    `answers.extract_answer` votes with the fixed reading."""
    return score_pool_with_weights(db, model_id)[0]


def score_pool_with_weights(db, model_id: str | None = None):
    """score_pool, plus the pivot weights fitted from the step labels (None without any)."""
    model_id = model_id or store.latest_model_id(db)
    if model_id is None:
        return [], None
    store.reextract_answers(db, extract_answer, model_id)  # answers read by an older extraction
    traces = list(store.iter_trace_arrays(db, model_id))
    accepted = {r["problem_id"] for r in store.effective_labels(db) if r["verdict"] == "correct"}
    fitted = fit_pool_pivot_weights(traces, store.effective_step_labels(db), accepted)
    rows, _ = build_features(traces, store.all_sample_answers(db, model_id), pivot_weights=fitted)
    store.save_features(db, rows)
    return rows, fitted


def step_label_localisation(db, model_id: str | None = None):
    """localisation.LocalisationReport of the stored pivots against annotators' first wrong steps
    (newest step label per problem, on this model's traces with the same steps); None without any.
    A stored pivot is a step whose pivot score exceeds PIVOT_THRESHOLD (features.pivot_scores)."""
    from .localisation import LocalisationCase, localisation_report
    from .pivots import PIVOT_THRESHOLD

    model_id = model_id or store.latest_model_id(db)
    marks = {row["problem_id"]: row for row in store.effective_step_labels(db) if row["model_id"] == model_id}
    cases = []
    for problem_id, mark in sorted(marks.items()):
        trace, features = store.load_trace(db, problem_id, model_id), store.get_features(db, problem_id, model_id)
        if not trace or not features or len(trace["steps"]) != mark["n_steps"]:
            continue
        scores = json.loads(features["pivot_scores"] or "[]")
        if len(scores) != len(trace["steps"]):
            continue
        cases.append(LocalisationCase([s for s, x in enumerate(scores) if x > PIVOT_THRESHOLD], scores,
                                      [s["tok_end"] - s["tok_start"] for s in trace["steps"]],
                                      int(mark["first_wrong_step"])))
    return localisation_report(cases) if cases else None


def label_outcomes(db, rows=None, *, labels: list[dict] | None = None) -> dict[str, int]:
    """{problem_id: 1 if the majority answer was wrong, 0 if right}, from labels in force.

    A `flawed` verdict says nothing about the model, so it is left out. With `rows` (feature rows
    of the model being routed, dicts or a FeatureTable), a label whose shown answer differs from
    that row's majority answer (traces of a new checkpoint) is re-read against the label's gold:
    the gold answer of a `wrong` verdict, the shown answer of a `correct` one. `labels`:
    store.effective_labels(db), if at hand.
    """
    table = FeatureTable.from_rows(rows or [], ())
    majority = dict(zip(table.ids, table.majority_answers or [None] * len(table)))
    outcomes = {}
    for row in store.effective_labels(db) if labels is None else labels:
        if row["verdict"] not in ("correct", "wrong"):
            continue
        wrong = int(row["verdict"] == "wrong")
        pid = row["problem_id"]
        gold = row["gold_answer"] if wrong else row["shown_answer"]
        shown = row["shown_answer"]
        if pid in majority and gold and shown is not None and majority[pid] != shown \
                and canonical(majority[pid]) != canonical(shown):
            wrong = int(not answers_match(majority[pid], gold))
        outcomes[pid] = wrong
    return outcomes


@dataclass
class RouteReport:
    router_version: int
    kind: str
    counts: dict
    changed: int
    thresholds: dict
    metrics: dict
    seconds: float


def route(db, *, model_id: str | None = None, config: RouterConfig = RouterConfig(),
          rescore: bool = True, note: str = "", estimator_config: EstimatorConfig | None = None) -> RouteReport:
    """Score (optionally), estimate uncertainty, route the pool, and record a router version.

    With `rescore=False` this is the recalibration: stored features, labels in force, a fresh
    estimator, new thresholds, a new router version and updated routes.
    """
    start = time.perf_counter()
    model_id = model_id or store.latest_model_id(db)
    # columns, converted once for the fit, the prediction and the routing
    pivot_weights = None
    if rescore:
        rows, pivot_weights = score_pool_with_weights(db, model_id)
        table = FeatureTable.from_rows(rows)
    else:
        table = store.load_feature_table(db, model_id)
    labels = store.effective_labels(db)
    outcomes = label_outcomes(db, table, labels=labels)
    estimator = estimator_for(table, outcomes, config=estimator_config)
    uncertainty = estimator.predict(table)
    interval = credible_intervals(estimator, table, config=estimator_config)  # ([N], [N])
    labelled = {r["problem_id"] for r in labels}
    budget = store.budget_status(db)
    last = store.latest_router_version(db, model_id=model_id)
    routing = route_pool(table, uncertainty, budget_remaining=budget["remaining"], config=config,
                         exclude=labelled, outcomes=outcomes, previous=last["thresholds"] if last else None,
                         previous_routes=store.current_routes(db) if last else None)
    metrics = dict(getattr(estimator, "metrics", {}) or {})
    thresholds = dict(routing.thresholds)
    if pivot_weights is not None:  # fitted from step labels when the pool was rescored
        thresholds["pivot_weights"] = pivot_weights.to_dict()
    with store.immediate(db):  # the version, its routes and its route mix: all or nothing
        version = store.new_router_version(db, kind=estimator.kind, model_id=model_id,
                                           n_labels=len(labelled), thresholds=thresholds,
                                           metrics=metrics, note=note)
        changed = store.save_route_columns(db, routing.problem_ids, routing.model_ids, routing.routes,
                                           routing.uncertainty, routing.value, version, interval=interval)
        store.record_route_counts(db, version)
    return RouteReport(version, estimator.kind, routing.counts(), changed, routing.thresholds, metrics,
                       time.perf_counter() - start)


def explain(report: RouteReport) -> list[str]:
    """What a routing did, in plain lines: the budget, the self-train band's certificate, low
    priority's, and the estimator."""
    t = report.thresholds
    lines = []
    if t.get("budget_note"):
        lines.append(t["budget_note"].capitalize() + ".")
    cert = t.get("self_train_certificate")
    if cert:
        target, delta = t["target_precision"], t["delta"]
        if cert["candidates"] == 0:
            lines.append("Self-train: no candidates (no split vote is estimated above the precision target).")
        elif cert["open"]:
            lines.append(f"Self-train: open for {cert['certified']} of {cert['candidates']} candidates; measured "
                         f"precision {cert['precision']:.3f} on {cert['labels']} labels, lower bound "
                         f"{cert['lower_bound']:.3f} >= target {target} (delta {delta}).")
        else:
            waiting = report.counts.get("self_train_pending", 0)
            lines.append(f"Self-train: closed, {waiting} problems wait as self_train_pending"
                         + (f" ({cert['candidates'] - waiting} of the band are probes or labelled)"
                            if cert["candidates"] > waiting else "") + "; "
                         + probe_plan(cert)
                         + f" (target {target}, delta {delta}).")
    low = t.get("low_priority_certificate")
    if low and low["candidates"]:
        verified = t.get("low_priority_verified")
        lines.append(f"Low priority: {'verified' if verified else 'unverified'} "
                     f"({low['labels']} labels among {low['candidates']} unanimous, likely right problems)"
                     + ("" if verified or not low.get("probes_to_go") else "; " + probe_plan(low, goal="verify"))
                     + ".")
    if t.get("calibration_probes"):
        lines.append(f"{t['calibration_probes']} calibration probes are in the annotate queue.")
    lines.append(f"Estimator: {report.kind}" + (f", {report.metrics.get('n')} labels" if report.metrics.get("n") else
                                                " (cold-start prior, no labels yet)") + ".")
    choice = model_choice(report.metrics)
    if choice:
        lines.append(choice)
    return lines


def model_choice(metrics: dict) -> str | None:
    """Which model ranks the pool, and the Bayes factor behind the choice, in one line (None before
    the labels hold both outcomes, when no alternative was weighed)."""
    factor, best = metrics.get("bayes_factor"), metrics.get("best_alternative")
    if factor is None or best is None:
        return None
    needed = metrics.get("bayes_factor_to_switch")
    if metrics.get("model") == best:
        return (f"Ranked by {best}: the labels favour it over all signals by a Bayes factor of {factor:.3g} "
                f"(switch above {needed:g}).")
    return (f"Ranked by {metrics.get('model', 'all signals')}; the best alternative, {best}, has a Bayes factor "
            f"of {factor:.3g} (switch above {needed:g}).")


@dataclass(frozen=True)
class RecalibrationDue:
    """Why the router should recalibrate now: traces of a checkpoint no router version has seen
    (`NEW_CHECKPOINT`), a router version whose routes were never written (`UNFINISHED_ROUTING`: a
    crash, before routing was one transaction), traces without current features (`STALE_FEATURES`:
    new, or re-traced with other answers), or enough new labels (`NEW_LABELS`). All but the last
    compute the features from the traces first."""

    NEW_CHECKPOINT: ClassVar[str] = "new_checkpoint"
    UNFINISHED_ROUTING: ClassVar[str] = "unfinished_routing"
    STALE_FEATURES: ClassVar[str] = "stale_features"
    NEW_LABELS: ClassVar[str] = "new_labels"
    cause: str  # one of the four above
    model_id: str  # the checkpoint the recalibration routes
    labels: int = 0  # labels in force (NEW_LABELS)
    count: int = 0  # the unfinished router version (UNFINISHED_ROUTING), or traces without features (STALE_FEATURES)

    @property
    def rescore(self) -> bool:
        """Whether the pool's features must be computed from the traces first."""
        return self.cause != self.NEW_LABELS

    @property
    def note(self) -> str:
        """The router version's note."""
        if self.cause == self.NEW_CHECKPOINT:
            return f"traces of a new model checkpoint ({self.model_id})"
        if self.cause == self.UNFINISHED_ROUTING:
            return f"router version {self.count} left without routes: routed again"
        if self.cause == self.STALE_FEATURES:
            return f"{self.count} traces without current features"
        return f"after {self.labels} labels"


def recalibration_due(db, *, every: int = RECALIBRATE_EVERY) -> RecalibrationDue | None:
    """Why the router should recalibrate now, or None.

    Due when traces of a model checkpoint that no router version has seen arrive; when the
    last version's routes were never written (a crash, before routing was one transaction);
    when traces have no current features (new, or re-traced with other answers); or when at
    least `every` labels (0: never) arrived since the last router version (RecalibrationDue).
    """
    model_id = store.latest_model_id(db)
    if model_id is None:
        return None
    last_of_model = store.latest_router_version(db, model_id=model_id)
    if last_of_model is None:
        return RecalibrationDue(RecalibrationDue.NEW_CHECKPOINT, model_id)
    if store.routing_unfinished(db, last_of_model):
        return RecalibrationDue(RecalibrationDue.UNFINISHED_ROUTING, model_id, count=last_of_model["id"])
    stale = store.stale_features(db, model_id)
    if stale:
        return RecalibrationDue(RecalibrationDue.STALE_FEATURES, model_id, count=stale)
    labelled = len(store.effective_labels(db))
    last = store.latest_router_version(db)
    if every and abs(labelled - (last["n_labels"] or 0)) >= every:
        return RecalibrationDue(RecalibrationDue.NEW_LABELS, model_id, labels=labelled)
    return None


def recalibrate_if_due(db, *, every: int = RECALIBRATE_EVERY,
                       config: RouterConfig | None = None) -> RouteReport | None:
    """Recalibrate and re-route when `recalibration_due` says so (rescoring for a new checkpoint).

    Without `config`, the last router version's precision target is kept (a lead may have set it).
    """
    due = recalibration_due(db, every=every)
    if due is None:
        return None
    return route(db, config=config or current_router_config(db), rescore=due.rescore, note=due.note)


def current_router_config(db) -> RouterConfig:
    """The router settings in force: the last router version's precision target and risk delta
    (a lead may have set them)."""
    last = store.latest_router_version(db)
    settings = {}
    if last and last["thresholds"].get("target_precision") is not None:
        settings["target_precision"] = float(last["thresholds"]["target_precision"])
    if last and last["thresholds"].get("delta") is not None:
        settings["delta"] = float(last["thresholds"]["delta"])
    return RouterConfig(**settings)


def label(db, *, problem_id: str, annotator: str, verdict: str, gold_answer: str | None = None,
          shown_answer: str | None = None, seconds: float | None = None,
          recalibrate_every: int = RECALIBRATE_EVERY, wait: bool = True,
          second_label: bool = False) -> RouteReport | None:
    """Save a label, then recalibrate and re-route when `recalibrate_every` labels have arrived.

    `wait=False` (the app): return as soon as the label is written, and let the recalibration run
    right behind it on a background thread (`recalibrate_in_background`); returns None then.
    """
    save = store.save_second_label if second_label else store.save_label  # an overlap item's second opinion
    save(db, problem_id=problem_id, annotator=annotator, verdict=verdict,
         gold_answer=gold_answer, shown_answer=shown_answer, seconds=seconds)
    if verdict == "skip":
        return None
    if not wait:
        recalibrate_in_background(db, every=recalibrate_every)
        return None
    return recalibrate_if_due(db, every=recalibrate_every)


class _Recalibrator:
    """One background thread per database file that recalibrates while labels keep arriving.

    Requests while it runs set `dirty`, so it runs once more after the current pass (never two at
    once, never one per label in a burst). Labels are written before a request, so a crash loses
    no label: the next request (or `recalibration_due` on the next page load) catches up.
    """

    def __init__(self, path: str):
        self.path = path
        self.dirty = False
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.last: RouteReport | None = None

    def request(self, every: int) -> None:
        with _RECALIBRATORS_LOCK:
            self.dirty = True
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, args=(every,), daemon=True,
                                               name="pivottrace-recalibrate")
                self.thread.start()

    def _run(self, every: int) -> None:
        db = store.open_db(self.path)
        try:
            while True:
                with _RECALIBRATORS_LOCK:
                    if not self.dirty:
                        self.thread = None
                        return
                    self.dirty = False
                try:
                    self.last = recalibrate_if_due(db, every=every) or self.last
                    self.error = None
                except Exception as err:  # kept for the app to show; the labels are safe
                    self.error = f"{type(err).__name__}: {err}"
        finally:
            db.conn.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until idle (True) or `timeout` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with _RECALIBRATORS_LOCK:
                thread = self.thread
            if thread is None:
                return True
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            thread.join(left)
            if deadline is not None and time.monotonic() >= deadline and thread.is_alive():
                return False


_RECALIBRATORS: dict[str, _Recalibrator] = {}
_RECALIBRATORS_LOCK = threading.Lock()


def _database_file(db) -> str:
    path = store.db_file(db)
    if not path:
        raise ValueError("Background recalibration needs a database file, not an in-memory database.")
    return path


def background_recalibrator(db) -> _Recalibrator:
    """The background recalibrator of this database file (created on first use)."""
    path = _database_file(db)
    with _RECALIBRATORS_LOCK:
        return _RECALIBRATORS.setdefault(path, _Recalibrator(path))


def wait_for_background(timeout: float | None = None) -> bool:
    """Block until every background recalibration in this process is idle (True) or `timeout` passes."""
    with _RECALIBRATORS_LOCK:
        workers = list(_RECALIBRATORS.values())
    return all(worker.wait(timeout) for worker in workers)


def recalibrate_in_background(db, *, every: int = RECALIBRATE_EVERY) -> None:
    """Ask for a recalibration on a background thread (it runs `recalibrate_if_due`)."""
    background_recalibrator(db).request(every)


DEMO_SOURCE = "demo"
DEMO_PROBLEMS = 40  # the demo pool: enough for every route and an evaluation, traced in minutes on a CPU
DEMO_FIRST = 6  # traced before the app opens (about a minute); the rest follows in the background
DEMO_BUDGET_SHARE = 0.1  # the demo's label budget, as a share of its pool: fewer labels than uncertain
# problems, so the router has to choose (the rest wait as `deferred`), as on a real pool
DEMO_ROUTE_EVERY = 8  # while the rest of the demo pool is traced, re-route after this many traces:
# the route mix on the pages moves every half minute or so; routing 40 problems takes well under a second


def demo_budget(n_problems: int) -> int:
    """The label budget the demo sets: DEMO_BUDGET_SHARE of the pool, at least one label."""
    return max(1, round(DEMO_BUDGET_SHARE * n_problems))


def run_demo(db, tracer, *, by, n_problems: int = DEMO_PROBLEMS, n_trace: int = DEMO_FIRST, seed: int = 0,
             show_progress: bool = True, on_progress=None) -> tuple[IngestReport, TraceRun, RouteReport]:
    """Generate demo problems, ingest them, set the demo budget (only where no budget was ever
    set; `by` is who starts the demo: a lead or researcher, or store.LocalOperator), trace a
    handful with `tracer`, and route them.

    The handful covers every step count (most demo problems are one-step), so the Inspect page
    has multi-step chains to show from the start. `continue_demo` traces the rest."""
    problems = with_every_step_count(demo_problems(n_problems, seed=seed), seed=seed)
    report = ingest_loaded(db, LoadResult(spread_by_steps(problems), []))
    store.set_initial_budget(db, total=demo_budget(n_problems), set_by=DEMO_SOURCE, by=by)
    run = trace_pool(db, tracer, limit=n_trace, source=DEMO_SOURCE, show_progress=show_progress,
                     on_progress=on_progress)
    return report, run, route(db, model_id=tracer.model_id, config=current_router_config(db), note="demo")


def continue_demo(db, tracer, *, route_every: int = DEMO_ROUTE_EVERY, on_progress=None) -> TraceRun:
    """Trace the demo problems `run_demo` left, re-routing after every `route_every` traces, so
    the evaluation and every route become possible while people already use the app.
    `on_progress(done, total, run, routed)` is called after each chunk (routed: its RouteReport)."""
    total = len(store.pending_problems(db, tracer.model_id, source=DEMO_SOURCE))
    overall = TraceRun()
    while True:
        run = trace_pool(db, tracer, limit=max(int(route_every), 1), source=DEMO_SOURCE, show_progress=False)
        if not run.traced:
            return overall
        overall.traced += run.traced
        overall.tokens += run.tokens
        overall.seconds += run.seconds
        routed = route(db, model_id=tracer.model_id, config=current_router_config(db), note="demo: more traces")
        if on_progress:
            on_progress(overall.traced, total, overall, routed)
