"""The store and the queue at pool scale (default 100,000 problems with synthetic traces).

Fills a fresh database and prints: ingest and write throughput (per-problem transactions on a
subset, bulk batches for the rest), database size per problem, the time to lease the next
`annotate` item, the time to recalibrate and re-route the whole pool (with where the time goes),
and the time of the Budget page's aggregates. The recalibration times what the app runs behind
each label: `pipeline.route(db, rescore=False)` end to end, then step by step, with the fit being
`posterior.estimator_for` (the Laplace update of the cold-start prior, default `EstimatorConfig`). Each figure is printed with its target and, where it
makes sense, a ratio against a baseline measured in this same run (the query as it was before
its index or rewrite).

Speed: generating and compressing a synthetic trace costs ~0.75 ms, so by default only `--unique`
traces are generated and the rest of the pool reuses their arrays (each problem still gets its own
row, text and blob copy, so sizes and query costs are those of a real pool). `--unique 0` makes
every trace distinct. It does not test correctness (tests/ do) and never runs a model.

    python bench/store_scale.py            # 100k problems, a few minutes on 2 cores
    python bench/store_scale.py --n 10000  # quicker
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pivottrace import analytics, pipeline, store, views  # noqa: E402
from pivottrace.answers import canonical  # noqa: E402
from pivottrace.datasets import Problem, demo_problems, problem_id  # noqa: E402
from pivottrace.features import FeatureTable, build_features  # noqa: E402
from pivottrace.posterior import credible_intervals, estimator_for  # noqa: E402
from pivottrace.route import route_pool  # noqa: E402
from pivottrace.uncertainty import EstimatorConfig  # noqa: E402
from pivottrace.synthetic import synthetic_trace  # noqa: E402

MODEL_ID = "bench-model"
BULK_BATCH = 2000  # rows per bulk transaction: big enough to amortise the commit, small enough for RAM
TARGET_NEXT_MS = 20.0
TARGET_ROUTE_S = 2.0
TARGET_BUDGET_MS = 200.0
ANNOTATORS = ("ann", "bob", "cat", "dan")
LABEL_DAYS = 14  # labels are spread over the last two weeks, so the burn rate has a history


def timed(func, *args, **kwargs):
    start = time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - start


def measure(func):
    """(result, wall seconds, CPU seconds of this process). On a machine shared with other work,
    the CPU time is what the code costs; the wall time is what a user waits for."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = func()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def paired(new, old, repeats: int, pick=statistics.median) -> tuple[tuple, tuple]:
    """((wall, cpu) of `new`, (wall, cpu) of `old`) in ms, summarised by `pick` over `repeats`
    calls made in turn, so that load from other processes hits both alike."""
    times = {"new": ([], []), "old": ([], [])}
    for _ in range(repeats):
        for name, func in (("new", new), ("old", old)):
            if func is None:
                continue
            _, wall, cpu = measure(func)
            times[name][0].append(wall * 1e3)
            times[name][1].append(cpu * 1e3)
    return tuple((pick(w), pick(c)) if w else (float("nan"), float("nan")) for w, c in times.values())


def ratio(baseline: float, new: float) -> str:
    return f"{baseline / new:.1f}x" if new > 0 else "-"


def verdict_line(name: str, wall: float, cpu: float, target: float, unit: str) -> str:
    mark = "OK  " if wall < target else ("CPU " if cpu < target else "MISS")
    return f"  [{mark}] {name}: {wall:.1f} {unit} wall, {cpu:.1f} {unit} CPU (target < {target:g} {unit})"


# --------------------------------------------------------------------------- building the pool

def make_pool(n: int, unique: int, seed: int):
    """n problems; problem i reuses template i % unique's trace. Returns problems, templates, gen ms."""
    templates = demo_problems(unique, seed=seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    traces = [synthetic_trace(p, rng) for p in templates]
    blobs = [store.encode_arrays(t.trace.arrays) for t in traces]
    gen_ms = (time.perf_counter() - start) / unique * 1e3
    problems = []
    for i in range(n):
        template = templates[i % unique]
        text = template.text if i < unique else f"{template.text} (variant {i})"
        problems.append(Problem(problem_id(text), text, "bench", template.gold, {}))
    return problems, traces, blobs, gen_ms


def trace_rows(problem: Problem, result, blob: bytes) -> tuple[dict, list[dict]]:
    """The rows store.save_trace writes, with the arrays blob already encoded."""
    import json

    trace = result.trace
    row = {
        "problem_id": problem.id, "model_id": MODEL_ID, "prompt": problem.text,
        "completion": trace.completion, "answer": trace.answer,
        "n_prompt_tokens": trace.n_prompt_tokens, "n_completion_tokens": trace.n_completion_tokens,
        "steps": json.dumps(trace.steps), "tokens": json.dumps(trace.tokens), "arrays": blob,
        "mean_logprob": trace.mean_logprob, "min_logprob": trace.min_logprob,
        "answer_prob": trace.answer_prob, "seconds": 0.0, "created_at": store.now(),
    }
    samples = [{"problem_id": problem.id, "model_id": MODEL_ID, "idx": k, "completion": text,
                "answer": answer}
               for k, (text, answer) in enumerate(zip(result.samples, result.sample_answers))]
    return row, samples


def bulk_write(db, problems, traces, blobs, start: int, unique: int) -> tuple[float, int]:
    """Traces and samples for problems[start:] in BULK_BATCH-row transactions. Returns (s, bytes)."""
    seconds, written = 0.0, 0
    for offset in range(start, len(problems), BULK_BATCH):
        rows, samples = [], []
        for i in range(offset, min(offset + BULK_BATCH, len(problems))):
            row, sample_rows = trace_rows(problems[i], traces[i % unique], blobs[i % unique])
            rows.append(row)
            samples.extend(sample_rows)
            written += len(row["arrays"]) + len(row["steps"]) + len(row["tokens"]) + len(row["completion"])
        begin = time.perf_counter()
        with store.immediate(db):
            db["traces"].insert_all(rows, batch_size=200)
            db["samples"].insert_all(samples, batch_size=500)
        seconds += time.perf_counter() - begin
    return seconds, written


def pool_features(problems, traces, blobs, unique: int) -> list[dict]:
    """Real features of the unique traces (as the pipeline computes them), copied to their variants."""
    templates = []
    for problem, result, blob in zip(problems[:unique], traces, blobs):
        trace = result.trace  # the dict store.iter_trace_arrays would yield for this trace
        templates.append({
            "problem_id": problem.id, "model_id": MODEL_ID, "completion": trace.completion,
            "answer": trace.answer, "steps": trace.steps, "arrays": store.decode_arrays(blob),
            "n_completion_tokens": trace.n_completion_tokens, "mean_logprob": trace.mean_logprob,
            "min_logprob": trace.min_logprob, "answer_prob": trace.answer_prob})
    answers = {(p.id, MODEL_ID): r.sample_answers for p, r in zip(problems[:unique], traces)}
    rows, _ = build_features(templates, answers)
    out = []
    for i, problem in enumerate(problems):
        row = dict(rows[i % unique])
        row["problem_id"] = problem.id
        out.append(row)
    return out


def label_queue(db, problems, n_labels: int, seed: int) -> list[float]:
    """Annotators work the queue through store.next_item + store.save_label; returns next_item ms."""
    gold = {p.id: canonical(p.gold) for p in problems}  # the oracle plays the annotator
    rng = np.random.default_rng(seed)
    times = []
    for k in range(n_labels):
        annotator = ANNOTATORS[k % len(ANNOTATORS)]
        item, seconds = timed(store.next_item, db, annotator)
        times.append(seconds * 1e3)
        if item is None:
            break
        majority = (item["features"] or {}).get("majority_answer")
        if rng.random() < 0.03:
            verdict, answer = "flawed", None
        elif majority is not None and majority == gold[item["problem_id"]]:
            verdict, answer = "correct", None
        else:
            verdict, answer = "wrong", gold[item["problem_id"]]
        store.save_label(db, problem_id=item["problem_id"], annotator=annotator, verdict=verdict,
                         gold_answer=answer, shown_answer=majority,
                         seconds=float(rng.lognormal(3.5, 0.5)))
        if k % 50 == 49:  # an occasional undo, redone at once, so undo rows exist at scale
            undone = store.undo_last_label(db, annotator)
            store.save_label(db, problem_id=undone["problem_id"], annotator=annotator,
                             verdict=verdict, gold_answer=answer, shown_answer=majority, seconds=20.0)
    # spread the labels over the last LABEL_DAYS days, oldest first, like a real run
    now = store.now()
    ids = [r[0] for r in db.execute("select id from labels order by id")]
    stamps = np.sort(rng.uniform(now - LABEL_DAYS * 86400, now, len(ids)))
    with store.immediate(db):
        db.conn.executemany("update labels set created_at = ? where id = ?",
                            list(zip(stamps.tolist(), ids)))
    return times


# --------------------------------------------------------------------------- baselines

def next_item_before(db, annotator: str, *, lease_minutes: float = store.LEASE_MINUTES):
    """store.next_item as it was before this bench (one query, sorting every annotate row)."""
    stamp = store.now()
    with store.immediate(db):
        held = db.execute(
            "select a.problem_id from assignments a join problems p on p.id = a.problem_id "
            "where a.annotator = ? and a.expires_at > ? and p.verdict is null "
            "order by a.leased_at limit 1", [annotator, stamp]).fetchone()
        if held:
            problem_id_ = held[0]
        else:
            row = db.execute(
                "select r.problem_id from routes r join problems p on p.id = r.problem_id "
                "left join assignments a on a.problem_id = r.problem_id "
                "left join skips s on s.problem_id = r.problem_id and s.annotator = ? "
                "where r.route = 'annotate' and p.verdict is null "
                "and (a.problem_id is null or a.expires_at <= ? or a.annotator = ?) "
                "order by (s.problem_id is not null), r.value desc limit 1",
                [annotator, stamp, annotator]).fetchone()
            if not row:
                return None
            problem_id_ = row[0]
        db.execute("insert or replace into assignments (problem_id, annotator, leased_at, expires_at) "
                   "values (?, ?, ?, ?)", [problem_id_, annotator, stamp, stamp + 60 * lease_minutes])
    return store.queue_item(db, problem_id_)


def effective_labels_unindexed(db) -> list[dict]:
    """store.effective_labels without the labels(undoes) index (NOT INDEXED on the undo probes)."""
    return list(db.query(
        "select l.* from labels l where l.verdict in ('correct', 'wrong', 'flawed') "
        "and not exists (select 1 from labels u not indexed where u.undoes = l.id) "
        "and l.id = (select max(l2.id) from labels l2 where l2.problem_id = l.problem_id "
        "and l2.verdict in ('correct', 'wrong', 'flawed') "
        "and not exists (select 1 from labels u2 not indexed where u2.undoes = l2.id)) order by l.id"))


def search_before(db, words: list[str]) -> list[dict]:
    """The Inspect page's search as it was: every problem as a dict, filtered and sorted in Python."""
    rows = [r for r in db.query(
        "select p.id as problem_id, p.text, r.route, r.uncertainty, r.value, f.pivot_density, "
        "(select count(*) from traces t where t.problem_id = p.id) as n_traces "
        "from problems p left join routes r on r.problem_id = p.id "
        "left join features f on f.problem_id = p.id and f.model_id = r.model_id order by p.created_at, p.rowid")
        if r["n_traces"] and all(w in r["text"].lower() or r["problem_id"].startswith(w) for w in words)]
    rows.sort(key=lambda r: -(r["value"] if r["value"] is not None else -1.0))
    return rows


def load_table_before(db, model_id: str) -> FeatureTable:
    """The routing inputs as pipeline.route read them before the column copy: every column as a
    dict per row, sorted by SQLite, then converted to columns."""
    return FeatureTable.from_rows(list(db.query(
        "select * from features where model_id = ? order by problem_id", [model_id])))


def save_routes_before(db, decisions: list[dict], router_version: int) -> int:
    """store.save_routes as it was: sqlite-utils upsert_all of every row."""
    stamp = store.now()
    current = {r["problem_id"]: r["route"] for r in db.query("select problem_id, route from routes")}
    rows, log = [], []
    for d in decisions:
        rows.append({**d, "router_version": router_version, "updated_at": stamp})
        if current.get(d["problem_id"]) != d["route"]:
            log.append({"problem_id": d["problem_id"], "route": d["route"],
                        "uncertainty": d["uncertainty"], "router_version": router_version,
                        "created_at": stamp})
    with store.immediate(db):
        db["routes"].upsert_all(rows, pk="problem_id", batch_size=2000)
        if log:
            db["route_log"].insert_all(log, batch_size=2000)
    return len(log)


# --------------------------------------------------------------------------- the run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="problems in the pool")
    parser.add_argument("--unique", type=int, default=5000, help="distinct synthetic traces (0 = all)")
    parser.add_argument("--per-problem", type=int, default=1000,
                        help="problems written one transaction each (store.save_trace)")
    parser.add_argument("--labels", type=int, default=1000, help="labels before recalibration")
    parser.add_argument("--budget", type=int, default=5000, help="label budget")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per latency figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="database path (default: a fresh temporary file, removed after)")
    args = parser.parse_args()
    n = args.n
    unique = n if args.unique <= 0 else min(args.unique, n)
    per_problem = min(args.per_problem, n)

    tmp = None
    if args.db:
        path = Path(args.db)
        if path.exists():
            sys.exit(f"{path} exists; the bench needs a fresh database")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pivottrace-bench-")
        path = Path(tmp.name) / "scale.db"
    total_start = time.perf_counter()
    print(f"store_scale: {n:,} problems ({unique:,} distinct synthetic traces), "
          f"{args.labels} labels, budget {args.budget}, db {path}")

    # ---------------------------------------------------------------- ingest and writes
    problems, traces, blobs, gen_ms = make_pool(n, unique, args.seed)
    print(f"\nsynthetic trace generation + npz compression: {gen_ms:.2f} ms/problem "
          f"(not part of the write figures; {gen_ms * n / 1e3:.0f} s for all {n:,})")
    db = store.open_db(path)
    (added, _), seconds = timed(store.insert_problems, db, problems)
    print("\ningest and write throughput")
    print(f"  insert_problems (one transaction):       {added / seconds:10,.0f} problems/s "
          f"({seconds:.2f} s)")
    store.upsert_model(db, MODEL_ID, spec="synthetic", n_layers=30)
    start = time.perf_counter()
    for i in range(per_problem):
        store.save_trace(db, problems[i].id, MODEL_ID, traces[i % unique])
    per_problem_s = time.perf_counter() - start
    per_rate = per_problem / per_problem_s
    # save_trace encodes the arrays itself; take that out so both figures are pure writes
    _, encode_one = timed(lambda: [store.encode_arrays(traces[i % unique].trace.arrays)
                                   for i in range(min(per_problem, 200))])
    encode_s = encode_one / min(per_problem, 200) * per_problem
    write_rate = per_problem / max(per_problem_s - encode_s, 1e-9)
    bulk_s, written = bulk_write(db, problems, traces, blobs, per_problem, unique)
    bulk_n = n - per_problem
    bulk_rate = bulk_n / bulk_s if bulk_n else float("nan")
    print(f"  save_trace, one transaction per problem: {per_rate:10,.0f} problems/s "
          f"(incl. npz encoding; {write_rate:,.0f}/s without it) on {per_problem:,}")
    if bulk_n:
        print(f"  bulk insert_all, {BULK_BATCH} per transaction:  {bulk_rate:10,.0f} problems/s "
              f"= {written / bulk_s / 1e6:.1f} MB/s on {bulk_n:,}; "
              f"{ratio(bulk_rate, write_rate)} the per-problem write rate")

    features, seconds = timed(pool_features, problems, traces, blobs, unique)
    _, save_s = timed(store.save_features, db, features)
    print(f"  features for the pool: computed {seconds:.1f} s ({unique:,} distinct), "
          f"save_features {len(features) / save_s:,.0f} rows/s ({save_s:.2f} s)")

    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    print(f"\ndatabase size: {size / 1e6:,.0f} MB = {size / n / 1024:.1f} KiB per problem")
    try:
        for name, table_bytes in db.execute(
                "select name, sum(pgsize) from dbstat group by name order by 2 desc limit 6"):
            print(f"  {name:28s} {table_bytes / n / 1024:6.2f} KiB/problem")
    except Exception as err:  # dbstat is a compile-time option of SQLite
        print(f"  (per-table sizes unavailable: {err})")

    # ---------------------------------------------------------------- cold-start route and labels
    store.add_user(db, "lee", "lead", by=store.LocalOperator("bench"))
    for name in ANNOTATORS:
        store.add_user(db, name, "annotator", by=store.LocalOperator("bench"))
    for k in range(2 * args.repeats + 1):  # next_item serves known users only (issue 12)
        store.add_user(db, f"fresh-{k}", "annotator", by=store.LocalOperator("bench"))
    store.set_budget(db, user="lee", total=args.budget)
    report, seconds = timed(pipeline.route, db, rescore=False, note="bench cold start")
    print(f"\ncold-start route of the pool (no labels): {seconds:.2f} s -> {report.counts}")
    label_times = label_queue(db, problems, args.labels, args.seed)
    print(f"labelled {store.labels_spent(db)} problems through the queue; next_item during labelling: "
          f"median {statistics.median(label_times):.1f} ms, max {max(label_times):.1f} ms")

    # ---------------------------------------------------------------- next item
    def next_item_figures(when: str) -> None:
        counter = iter(range(10**9))
        new, old = paired(lambda: store.next_item(db, f"fresh-{next(counter)}"),
                          lambda: next_item_before(db, f"fresh-{next(counter)}"), args.repeats)
        held, _ = paired(lambda: store.next_item(db, "fresh-0"), None, args.repeats)
        open_labelled = db.execute(
            "select count(*) from routes r join problems p on p.id = r.problem_id "
            "where r.route = 'annotate' and p.verdict is not null and r.value >= "
            "(select max(r2.value) from routes r2 join problems p2 on p2.id = r2.problem_id "
            "where r2.route = 'annotate' and p2.verdict is null)").fetchone()[0]
        print(f"\nnext annotate item with its lease, a fresh annotator each call ({when}; "
              f"{open_labelled} labelled items rank above the best open one)")
        print(verdict_line("store.next_item", *new, TARGET_NEXT_MS, "ms") +
              f"; before: {old[0]:.1f} ms wall, {old[1]:.1f} ms CPU ({ratio(old[1], new[1])} the CPU now)")
        print(f"  renewing an annotator's held lease: {held[0]:.2f} ms wall")
        db.execute("delete from assignments where annotator like 'fresh-%'")

    next_item_figures("labels on top of the queue, before recalibration")

    # ---------------------------------------------------------------- recalibrate and re-route
    print("\nrecalibrate and re-route the pool (pipeline.route, rescore=False)")
    report, wall, cpu = measure(lambda: pipeline.route(db, rescore=False, note="bench recalibration"))
    print(verdict_line("pipeline.route", wall * 1e3, cpu * 1e3, TARGET_ROUTE_S * 1e3, "ms") +
          f" ({report.kind}, {report.changed:,} routes changed, {report.counts}; the process's first "
          f"fit, so scikit-learn's first-use imports are in it)")
    label_queue(db, problems, 50, args.seed + 1)
    again, wall, cpu = measure(lambda: pipeline.route(db, rescore=False, note="bench recalibration 2"))
    print(verdict_line("pipeline.route after 50 more labels", wall * 1e3, cpu * 1e3, TARGET_ROUTE_S * 1e3, "ms") +
          f" ({again.kind}, {again.changed:,} routes changed)")
    report = again
    table = store.load_feature_table(db, MODEL_ID)
    labels_in_force = store.effective_labels(db)
    outcomes, _, t_outcomes = measure(lambda: pipeline.label_outcomes(db, table, labels=labels_in_force))
    estimator, _, t_fit = measure(lambda: estimator_for(table, outcomes))
    uncertainty, _, t_predict = measure(lambda: estimator.predict(table))
    interval, _, t_interval = measure(lambda: credible_intervals(estimator, table))
    labelled = {r["problem_id"] for r in labels_in_force}
    (budget, last, previous), _, t_state = measure(lambda: (
        store.budget_status(db), store.latest_router_version(db, model_id=MODEL_ID), store.current_routes(db)))
    routing, _, t_route = measure(lambda: route_pool(table, uncertainty, budget_remaining=budget["remaining"],
                                                     exclude=labelled, outcomes=outcomes,
                                                     previous=last["thresholds"], previous_routes=previous))

    def fresh() -> FeatureTable:  # the same columns without the prior's cached output, as a fresh load
        return dataclasses.replace(table, cache={})

    posterior, prior_only = paired(lambda: (lambda t: estimator_for(t, outcomes).predict(t))(fresh()),
                                   lambda: EstimatorConfig().prior().predict(fresh()), 3, min)
    version = report.router_version
    load, load_old = paired(lambda: store.load_feature_table(db, MODEL_ID),
                            lambda: load_table_before(db, MODEL_ID), 3, min)
    scan, _ = paired(lambda: store._scan_feature_table(db, MODEL_ID), None, 3, min)
    labels, labels_old = paired(lambda: store.effective_labels(db), lambda: effective_labels_unindexed(db), 3, min)
    decisions = routing.decisions
    save, save_old = paired(lambda: store.save_route_columns(db, routing.problem_ids, routing.model_ids,
                                                             routing.routes, routing.uncertainty,
                                                             routing.value, version, interval=interval),
                            lambda: save_routes_before(db, decisions, version), 2, min)
    latest, latest_old = paired(lambda: store.latest_model_id(db), lambda: db.execute(
        "select model_id from traces not indexed order by created_at desc limit 1").fetchone(), 3, min)
    parts = {
        "store.latest_model_id": latest[1] / 1e3,
        "store.load_feature_table (the column copy)": load[1] / 1e3,
        "store.effective_labels x2": 2 * labels[1] / 1e3,
        "pipeline.label_outcomes": t_outcomes,
        f"posterior.estimator_for ({estimator.kind}: weights, MAP, held-out metrics)": t_fit,
        "estimator.predict": t_predict,
        "posterior.credible_intervals": t_interval,
        "budget, last version, current routes": t_state,
        "route_pool (thresholds, certificates)": t_route,
        "store.save_route_columns": save[1] / 1e3,
    }
    accounted = sum(parts.values())
    print("  where the CPU time goes (each step again, on its own):")
    for name, seconds in parts.items():
        print(f"    {name:66s} {seconds * 1e3:8.1f} ms  {seconds / accounted:5.0%}")
    print(f"  baselines in this run: load_feature_table {load[1]:.0f} ms vs {scan[1]:.0f} ms scanning the "
          f"feature rows ({ratio(scan[1], load[1])}) vs {load_old[1]:.0f} ms as dict rows "
          f"({ratio(load_old[1], load[1])}); latest_model_id {latest[1]:.2f} ms vs {latest_old[1]:.0f} ms "
          f"without its index ({ratio(latest_old[1], latest[1])}); effective_labels {labels_old[1]:.1f} ms "
          f"without the undoes index ({ratio(labels_old[1], labels[1])}); save_route_columns vs sqlite-utils "
          f"upsert_all {save_old[1]:.0f} ms ({ratio(save_old[1], save[1])}); the posterior's fit + prediction "
          f"{posterior[1]:.0f} ms vs the cold-start prior's prediction alone {prior_only[1]:.0f} ms "
          f"(x{posterior[1] / prior_only[1]:.1f} the prior's CPU)")

    next_item_figures("after recalibration")

    # ---------------------------------------------------------------- budget page
    print("\nBudget page aggregates")
    agg, _ = paired(lambda: analytics.budget_aggregates(db), None, max(args.repeats // 3, 3))
    spent, spent_old = paired(lambda: store.labels_spent(db), lambda: db.execute(
        "select count(*) from problems not indexed where verdict is not null").fetchone(), args.repeats)
    print(verdict_line("analytics.budget_aggregates", *agg, TARGET_BUDGET_MS, "ms"))
    print(f"  labels_spent: {spent[0]:.2f} ms with the partial index, {spent_old[0]:.2f} ms scanning "
          f"problems ({ratio(spent_old[0], spent[0])})")
    aggregates = analytics.budget_aggregates(db)
    print(f"  spent {aggregates['spent']}, remaining {aggregates['remaining']}, "
          f"burn {aggregates['burn_rate_per_day']:.1f}/day, run-out {aggregates['projected_run_out']}")

    # ---------------------------------------------------------------- inspect page
    print("\nInspect page search (views.find_problems, the first 500 of the matches and their count)")
    for label, kwargs, words in (("no filter, by value", {}, []),
                                 ("two words", {"search": "apples variant"}, ["apples", "variant"]),
                                 ("annotate route", {"routes": ["annotate"]}, None)):
        new, old = paired(lambda: views.find_problems(db, limit=500, **kwargs),
                          (lambda: search_before(db, words)) if words is not None else None, 3, min)
        found = views.find_problems(db, limit=500, **kwargs)
        baseline = f"; every row filtered in Python: {old[0]:.0f} ms ({ratio(old[0], new[0])})" if words is not None else ""
        print(f"  {label:20s} {new[0]:6.0f} ms wall for {found.total:,} matches{baseline}")

    print(f"\nwall time {time.perf_counter() - total_start:.0f} s")
    db.conn.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
