"""Benchmark: recalibrating the router for 10,000 traced problems with 1,000 labels.

Recalibration = `pipeline.route(db, rescore=False)`: load the stored features and the labels in
force, fit the calibrated model (with its cross-validated metrics and the gate against the prior),
predict, derive the thresholds, write a router version and the routes. The issue's target is
under 200 ms on this machine. Baselines measured in the same run, on the same database:
- the cold-start route (no fit at all): the floor that storage and routing cost;
- the first version's estimator (StandardScaler + LogisticRegression pipeline in
  CalibratedClassifierCV, nested cross_val_predict, default BLAS threads) on the same labels.

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
from pivottrace.features import NUMERIC_FEATURES, build_features  # noqa: E402
from pivottrace.route import route_pool  # noqa: E402
from pivottrace.synthetic import synthetic_trace  # noqa: E402
from pivottrace.uncertainty import FeatureTable, choose_estimator  # noqa: E402

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


def first_version_estimator(rows: list[dict], outcomes: dict[str, int]):
    """The estimator as it was before this issue: pipeline + nested CV, default threads."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labelled = [r for r in rows if r["problem_id"] in outcomes]
    y = np.array([outcomes[r["problem_id"]] for r in labelled])
    x = FeatureTable.from_rows(labelled).matrix(NUMERIC_FEATURES)
    base = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    model = CalibratedClassifierCV(base, method="sigmoid", cv=5).fit(x, y)
    cross_val_predict(CalibratedClassifierCV(base, method="sigmoid", cv=3), x, y,
                      cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")
    return model.predict_proba(FeatureTable.from_rows(rows).matrix(NUMERIC_FEATURES))[:, 1]


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

        # one recalibration split into the same steps as pipeline.route
        feats = store.load_features(db, MODEL_ID)  # dict rows, for the first version's estimator
        table, t_load = timed(store.load_feature_table, db, MODEL_ID)
        outs, t_outcomes = timed(pipeline.label_outcomes, db, table)
        estimator, t_fit = timed(choose_estimator, table, outs)
        u, t_predict = timed(estimator.predict, table)
        labelled = {r["problem_id"] for r in store.effective_labels(db)}
        routing, t_route = timed(route_pool, table, u, budget_remaining=store.budget_status(db)["remaining"],
                                 exclude=labelled)
        _, t_save = timed(store.save_route_columns, db, routing.problem_ids, routing.model_ids, routing.routes,
                          routing.uncertainty, routing.value, report.router_version)
        _, t_old = timed(first_version_estimator, feats, outs)

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
    print(f"baseline, first version's estimator alone: {t_old * 1e3:.0f} ms vs this one {t_fit * 1e3:.0f} ms "
          f"({t_old / t_fit:.1f}x faster now)")
    parts = {"store.load_feature_table": t_load, "label_outcomes": t_outcomes,
             "choose_estimator (fit, CV metrics, gate)": t_fit, "estimator.predict": t_predict,
             "route_pool": t_route, "store.save_route_columns": t_save}
    total = sum(parts.values())
    print("one recalibration, by step (wall):")
    for name, seconds in parts.items():
        print(f"  {name:42s} {seconds * 1e3:7.1f} ms  {seconds / total:5.0%}")


def _short(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


if __name__ == "__main__":
    main()
