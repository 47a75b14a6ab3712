"""Benchmark: recalibrating the router for 10,000 traced problems with 1,000 labels.

Recalibration = `pipeline.route(db, rescore=False)`, what the app runs behind each label: load the
stored features and the labels in force, update the cold-start prior with the labels
(`posterior.estimator_for` with the default `EstimatorConfig`: covariate-shift weights, the Laplace
posterior, its held-out ECE / Brier / AUROC, and the same for the two single-signal models it may
switch to), predict with each problem's credible interval, derive
and certify the thresholds, write a router version and the routes. The issue's target is under 200 ms on this machine. Baselines
measured in the same run, on the same database:
- the cold-start route (no labels, so nothing to fit): the floor that storage and routing cost;
- the cold-start prior's prediction alone, against the posterior's fit + prediction;
- the all-signal fit alone, against the choice among it and the two single-signal models.

The pool is synthetic (pivottrace.synthetic traces -> features); setting it up is not timed.
The machine is shared, so each run prints wall time and this process's CPU time (what the work
itself costs, whatever else runs), and the load average when it ran.
Run: .venv/bin/python bench/recalibrate.py [--problems 10000] [--labels 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pivottrace import pipeline, store  # noqa: E402
from pivottrace.answers import answers_match  # noqa: E402
from pivottrace.datasets import demo_problems  # noqa: E402
from pivottrace.features import build_features  # noqa: E402
from pivottrace.posterior import credible_intervals, estimator_for  # noqa: E402
from pivottrace.route import route_pool  # noqa: E402
from pivottrace.synthetic import synthetic_trace  # noqa: E402
from pivottrace.uncertainty import EstimatorConfig  # noqa: E402

TARGET_MS = 200.0  # the budget for one recalibration
MODEL_ID = "bench-synthetic"
N_LAYERS = 8  # fewer layers than SmolLM2 keeps set-up fast; features do not depend on it


def timed(func, *args, **kwargs):
    start = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - start


def timed_cpu(func, *args, **kwargs):
    """(out, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def median_of(repeats: int, first: float | None, load, func) -> float:
    """Median wall seconds of `func(table)` over `repeats` calls (counting `first`, a call already
    timed), each on a table from `load()` (untimed), so that no cached prior output is reused."""
    times = [] if first is None else [first]
    while len(times) < repeats:
        table = load()
        start = time.perf_counter()
        func(table)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_pool(db, n_problems: int, seed: int) -> list[dict]:
    """Problems, synthetic traces turned into features (not stored traces: only features matter)."""
    problems = demo_problems(n_problems, seed=seed, mix=(0.25, 0.25, 0.25, 0.25))
    store.insert_problems(db, problems)
    store.upsert_model(db, MODEL_ID, spec="synthetic", n_layers=N_LAYERS)
    rng = np.random.default_rng(seed)
    traces, answers = [], {}
    for p in problems:
        result = synthetic_trace(p, rng, n_layers=N_LAYERS)
        t = result.trace
        traces.append({"problem_id": p.id, "model_id": MODEL_ID, "arrays": t.arrays, "answer": t.answer,
                       "n_completion_tokens": t.n_completion_tokens, "mean_logprob": t.mean_logprob,
                       "min_logprob": t.min_logprob, "answer_prob": t.answer_prob})
        answers[(p.id, MODEL_ID)] = result.sample_answers
    rows, _ = build_features(traces, answers)
    store.save_features(db, rows)
    return rows


ORACLES = [f"bench-oracle-{k}" for k in range(250)]  # labels per routing round


def label_router_picks(db, rows: list[dict], gold: dict[str, str], n_labels: int) -> None:
    """Label what the router sends to humans (as the app would), until n_labels are in."""
    majority = {r["problem_id"]: r["majority_answer"] for r in rows}
    while store.labels_spent(db) < n_labels:
        report = pipeline.route(db, rescore=False, note="bench set-up")
        picks = []  # the queue's best items, each leased by one oracle (a label needs a lease)
        for oracle in ORACLES[:min(len(ORACLES), n_labels - store.labels_spent(db))]:
            item = store.next_item(db, oracle)
            if item is None:
                break
            picks.append((oracle, item["problem_id"]))
        if not picks:
            raise SystemExit(f"router sent nothing to annotate ({report.counts})")
        for oracle, pid in picks:
            right = answers_match(majority[pid], gold[pid])
            store.save_label(db, problem_id=pid, annotator=oracle,
                             verdict="correct" if right else "wrong",
                             gold_answer=None if right else gold[pid], shown_answer=majority[pid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=10_000)
    parser.add_argument("--labels", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = store.open_db(Path(tmp) / "bench.db")
        (rows, t_build) = timed(build_pool, db, args.problems, args.seed)
        gold = {r["id"]: r["gold"] for r in db.query("select id, gold from problems")}
        store.add_user(db, "bench-lead", "lead", by=store.LocalOperator("bench"))
        for oracle in ORACLES:
            store.add_user(db, oracle, "annotator", by=store.LocalOperator("bench"))
        store.set_budget(db, user="bench-lead", total=2 * args.labels)
        cold = [timed_cpu(pipeline.route, db, rescore=False, note="bench cold start")[1:]  # nothing to fit
                for _ in range(args.repeats)]
        _, t_label = timed(label_router_picks, db, rows, gold, args.labels)
        outcomes = pipeline.label_outcomes(db)
        wrong = sum(outcomes.values())
        print(f"set-up: {len(rows):,} problems with features in {t_build:.1f} s; "
              f"{len(outcomes):,} labels ({wrong} wrong) from the router's picks in {t_label:.1f} s")

        runs, reports = [], []
        for _ in range(args.repeats):
            report, wall, cpu = timed_cpu(pipeline.route, db, rescore=False, note="bench recalibration")
            runs.append((wall, cpu))
            reports.append(report)
        report = reports[-1]

        # one recalibration split into the same steps as pipeline.route, each on a freshly loaded
        # table (the prior caches its output on the table; the app loads a fresh one every time)
        model_id, t_model = timed(store.latest_model_id, db)
        table, t_load = timed(store.load_feature_table, db, model_id)
        labels, t_labels = timed(store.effective_labels, db)
        outs, t_outcomes = timed(pipeline.label_outcomes, db, table, labels=labels)
        estimator, t_fit = timed(estimator_for, table, outs)
        fresh = lambda: store.load_feature_table(db, model_id)  # noqa: E731
        t_fit = median_of(args.repeats, t_fit, fresh, lambda t: estimator_for(t, outs))
        u, t_predict = timed(estimator.predict, table)
        interval, t_interval = timed(credible_intervals, estimator, table)
        labelled = {r["problem_id"] for r in labels}
        (budget, last, previous), t_state = timed(lambda: (
            store.budget_status(db), store.latest_router_version(db, model_id=model_id), store.current_routes(db)))
        routing, t_route = timed(route_pool, table, u, budget_remaining=budget["remaining"], exclude=labelled,
                                 outcomes=outs, previous=last["thresholds"], previous_routes=previous)
        _, t_save = timed(store.save_route_columns, db, routing.problem_ids, routing.model_ids, routing.routes,
                          routing.uncertainty, routing.value, report.router_version, interval=interval)
        # the fit without its held-out metrics, and the cold-start prior alone (the floor of an estimate)
        t_fit_bare = median_of(args.repeats, None, fresh, lambda t: estimator_for(t, outs, with_metrics=False))
        t_prior = median_of(args.repeats, None, fresh, EstimatorConfig().prior().predict)
        # the all-signal model alone, against the choice among it and the two single-signal models
        t_fit_single = median_of(args.repeats, None, fresh,
                                 lambda t: estimator_for(t, outs, config=EstimatorConfig().single()))

    wall = statistics.median(w for w, _ in runs) * 1e3
    cpu = statistics.median(c for _, c in runs) * 1e3
    floor = statistics.median(w for w, _ in cold) * 1e3
    floor_cpu = statistics.median(c for _, c in cold) * 1e3
    print(f"\nload average during the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(f"recalibration (pipeline.route, rescore=False), median of {args.repeats}: wall {wall:.0f} ms, "
          f"CPU {cpu:.0f} ms [target < {TARGET_MS:.0f} ms: {'OK' if wall < TARGET_MS else 'OVER'} on wall, "
          f"{'OK' if cpu < TARGET_MS else 'OVER'} on CPU]")
    print(f"  estimator {report.kind}, metrics {_short(report.metrics)}")
    print(f"  routes {report.counts}")
    print(f"baseline, cold-start route (no fit): wall {floor:.0f} ms, CPU {floor_cpu:.0f} ms -> "
          f"recalibration is {wall / floor:.2f}x the floor (CPU {cpu / floor_cpu:.2f}x)")
    print(f"baseline, the cold-start prior's prediction alone: {t_prior * 1e3:.0f} ms vs the posterior's "
          f"fit + prediction {(t_fit + t_predict) * 1e3:.0f} ms ({(t_fit + t_predict) / t_prior:.1f}x); "
          f"the fit without held-out metrics {t_fit_bare * 1e3:.0f} ms")
    print(f"baseline, the all-signal fit alone (no model choice): {t_fit_single * 1e3:.0f} ms vs the choice among "
          f"three models {t_fit * 1e3:.0f} ms ({t_fit / t_fit_single:.2f}x); ranked by {report.metrics.get('model')} "
          f"(Bayes factor of the best alternative {report.metrics.get('bayes_factor')})")
    parts = {"store.latest_model_id": t_model, "store.load_feature_table": t_load,
             "store.effective_labels": t_labels, "label_outcomes": t_outcomes,
             f"posterior.estimator_for ({estimator.kind}: weights, MAP, held-out metrics)": t_fit,
             "estimator.predict": t_predict, "posterior.credible_intervals": t_interval, "budget, last version, current routes": t_state,
             "route_pool (thresholds, certificates)": t_route, "store.save_route_columns": t_save}
    total = sum(parts.values())
    print("one recalibration, by step (wall):")
    for name, seconds in parts.items():
        print(f"  {name:66s} {seconds * 1e3:7.1f} ms  {seconds / total:5.0%}")


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                     if not isinstance(v, (dict, list)))  # the per-weight summary is in the router version


if __name__ == "__main__":
    main()
