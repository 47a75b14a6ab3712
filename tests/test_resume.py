"""A trace run killed midway resumes without duplicates and without losing finished traces."""

import os
import signal
import subprocess
import sys
import time

from pivottrace import store
from pivottrace.datasets import LoadResult, demo_problems
from pivottrace.pipeline import ingest_loaded

N_PROBLEMS = 30


def _trace_command(model_dir, db_path):
    return [sys.executable, "-m", "pivottrace.cli", "trace", "--model", str(model_dir), "--db", str(db_path),
            "--samples", "1", "--max-new-tokens", "48", "--batch-size", "2"]


def test_killed_trace_run_resumes_without_duplicates(tmp_path, tiny_model_dir):
    db_path = tmp_path / "resume.db"
    db = store.open_db(db_path)
    ingest_loaded(db, LoadResult(demo_problems(N_PROBLEMS, seed=21), []))

    process = subprocess.Popen(_trace_command(tiny_model_dir, db_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and db["traces"].count < 2 and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up: only committed rows survive
    process.wait()

    before = {r["problem_id"]: r["created_at"] for r in db.query("select problem_id, created_at from traces")}
    assert 2 <= len(before) < N_PROBLEMS, "the run should have been killed midway"
    assert db["samples"].count == len(before)  # each problem's trace and samples land together

    subprocess.run(_trace_command(tiny_model_dir, db_path), check=True, capture_output=True, timeout=600)

    after = {r["problem_id"]: r["created_at"] for r in db.query("select problem_id, created_at from traces")}
    assert len(after) == N_PROBLEMS == db["traces"].count
    assert db["samples"].count == N_PROBLEMS
    assert all(after[pid] == stamp for pid, stamp in before.items())  # finished traces were not redone
