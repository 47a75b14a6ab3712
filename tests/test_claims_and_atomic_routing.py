"""Trace claims and atomic routing (issue 13): two trace runs never trace the same problem, a
crashed run's claims lapse, a re-trace with other answers re-routes, and a process killed inside
the routing transaction leaves nothing half-written that the next command does not repair."""

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pivottrace import pipeline, store
from pivottrace.answers import majority_vote
from pivottrace.datasets import Problem, demo_problems
from pivottrace.synthetic import synthetic_trace

REPO = Path(__file__).resolve().parents[1]


class FakeTracer:
    """Tracer stand-in: synthetic traces, and a record of every text it was asked to trace."""

    model_id = "fake"
    n_layers = 30
    source = SimpleNamespace(path="fake")

    def __init__(self, *, samples: int = 4, batch_size: int = 2, seed: int = 0, pause: float = 0.0):
        self.config = SimpleNamespace(batch_size=batch_size)
        self.samples, self.rng, self.pause, self.seen = samples, np.random.default_rng(seed), pause, []

    def trace_batch(self, texts):
        self.seen += texts
        if self.pause:
            threading.Event().wait(self.pause)  # lets the other run take its turn
        return [synthetic_trace(Problem("x", t, "s", "5"), self.rng, n_samples=self.samples) for t in texts]


def pool_db(path, n: int = 12):
    db = store.open_db(path)
    store.insert_problems(db, demo_problems(n, seed=0))
    return db


def test_two_runs_at_once_never_trace_the_same_problem(tmp_path):
    path = tmp_path / "two.db"
    pool_db(path, 12)
    tracers = [FakeTracer(seed=1, pause=0.2), FakeTracer(seed=2, samples=5, pause=0.2)]
    runs = {}

    def work(index):
        runs[index] = pipeline.trace_pool(store.open_db(path), tracers[index], show_progress=False)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seen = tracers[0].seen + tracers[1].seen
    assert len(seen) == len(set(seen)) == 12  # each problem traced once, by one of the runs
    assert runs[0].traced + runs[1].traced == 12 and runs[0].traced and runs[1].traced
    db = store.open_db(path)
    assert store.claimed_problems(db) == []  # released on exit
    for problem_id, k in db.execute("select problem_id, count(*) from samples group by problem_id"):
        assert k in (4, 5)


def test_claims_are_released_when_a_run_fails(tmp_path):
    db = pool_db(tmp_path / "fail.db", 6)
    tracer = FakeTracer()

    def broken(texts):
        raise RuntimeError("model crashed")
    tracer.trace_batch = broken
    try:
        pipeline.trace_pool(db, tracer, show_progress=False)
    except RuntimeError:
        pass
    assert store.claimed_problems(db) == []


def test_a_killed_run_leaves_claims_the_next_run_takes_over(tmp_path):
    path = tmp_path / "killed.db"
    pool_db(path, 6)
    script = textwrap.dedent("""
        import os, sys
        from types import SimpleNamespace
        from pivottrace import pipeline, store

        class Dies:
            model_id, n_layers, source = "fake", 30, SimpleNamespace(path="fake")
            config = SimpleNamespace(batch_size=4)
            def trace_batch(self, texts):
                os._exit(9)  # killed mid-batch: no release, no cleanup
        pipeline.trace_pool(store.open_db(sys.argv[1]), Dies(), show_progress=False)
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    db = store.open_db(path)
    assert len(store.claimed_problems(db)) == 4  # the dead run's batch, still claimed
    tracer = FakeTracer()
    run = pipeline.trace_pool(db, tracer, show_progress=False)
    assert run.traced == 6  # its process is gone, so its claims lapsed at once
    assert store.claimed_problems(db) == []


def test_a_live_claim_elsewhere_is_respected_until_it_expires(tmp_path):
    db = pool_db(tmp_path / "host.db", 4)
    first = db.execute("select id from problems order by rowid limit 1").fetchone()[0]
    db.execute("insert into trace_claims values (?, 'fake', 'other-run', 'another-host', 1, ?)",
               [first, store.now() + 600])
    tracer = FakeTracer()
    assert pipeline.trace_pool(db, tracer, show_progress=False).traced == 3
    db.execute("update trace_claims set expires_at = ?", [store.now() - 1])  # that run never came back
    assert pipeline.trace_pool(db, tracer, show_progress=False).traced == 1


def test_a_retrace_with_other_answers_marks_features_stale_and_reroutes(tmp_path):
    db = pool_db(tmp_path / "re.db", 8)
    pipeline.trace_pool(db, FakeTracer(samples=5, seed=3), show_progress=False)
    first = pipeline.recalibrate_if_due(db, every=0)
    assert first is not None and pipeline.recalibration_due(db, every=0) is None
    problem = store.get_problem(db, db.execute("select problem_id from features limit 1").fetchone()[0])
    rng = np.random.default_rng(11)
    while True:  # a re-trace whose answers differ (K = 3 now)
        again = synthetic_trace(Problem(problem["id"], problem["text"], "s", "5"), rng, n_samples=3)
        if again.sample_answers != store.sample_answers(db, problem["id"], "fake")[:3]:
            break
    assert store.save_trace(db, problem["id"], "fake", again) is True
    assert store.get_features(db, problem["id"], "fake") is None  # stale features are gone
    assert store.sample_answers(db, problem["id"], "fake") == list(again.sample_answers)  # no K=5 leftovers
    due = pipeline.recalibration_due(db, every=0)
    assert (due.cause, due.count, due.rescore) == (pipeline.RecalibrationDue.STALE_FEATURES, 1, True)
    routed = pipeline.recalibrate_if_due(db, every=0)
    assert routed is not None and routed.router_version > first.router_version
    features = store.get_features(db, problem["id"], "fake")
    votes = [again.trace.answer] + list(again.sample_answers)  # the greedy chain votes too
    assert abs(features["vote_share"] - majority_vote(votes).share) < 1e-9
    assert store.save_trace(db, problem["id"], "fake", again) is False  # same answers: nothing stale


def routable_db(path):
    db = pool_db(path, 12)
    pipeline.trace_pool(db, FakeTracer(), show_progress=False)
    return db


def test_killed_inside_the_routing_transaction_then_the_next_command_routes(tmp_path):
    path = tmp_path / "crash.db"
    routable_db(path)
    script = textwrap.dedent("""
        import os, sys
        from pivottrace import pipeline, store

        write_routes = store.save_route_columns
        def then_die(*args, **kwargs):
            write_routes(*args, **kwargs)
            os._exit(9)  # killed after the version and the routes are written, before the commit
        store.save_route_columns = then_die
        pipeline.route(store.open_db(sys.argv[1]), model_id="fake")
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path)], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr
    db = store.open_db(path)
    assert db["router_versions"].count == 0 and db["routes"].count == 0  # nothing half-written
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    routed = pipeline.recalibrate_if_due(db, every=0)  # what `trace` runs after its batches
    assert routed is not None and db["routes"].count == 12


def test_a_version_without_routes_from_before_the_fix_is_repaired(tmp_path):
    db = routable_db(tmp_path / "legacy.db")
    pipeline.score_pool(db, "fake")
    version = store.new_router_version(db, kind="cold_start", model_id="fake", n_labels=0, thresholds={},
                                       metrics={})  # the old code committed this, then crashed
    due = pipeline.recalibration_due(db, every=0)
    assert (due.cause, due.count, due.rescore) == (pipeline.RecalibrationDue.UNFINISHED_ROUTING, version, True)
    routed = pipeline.recalibrate_if_due(db, every=0)
    assert routed.router_version == version + 1 and db["routes"].count == 12
    assert pipeline.recalibration_due(db, every=0) is None
