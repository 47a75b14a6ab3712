"""--engine ray on a local 2-CPU Ray cluster with the tiny model: the same statistics as the local
path, and a run killed midway resumes without duplicates."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pivottrace import pipeline, store
from pivottrace.datasets import LoadResult, demo_problems

ray = pytest.importorskip("ray")

K = 3  # completions per problem in the rollout file
STEP = 3
N_RESUME = 24


@pytest.fixture(scope="module")
def ray_cluster():
    """One local cluster for the module (its start is the slow part): 2 CPUs, a small object store."""
    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _chain(problem, index: int, lines: int) -> str:
    """A plausible chain of `lines` sentences (the tiny model's own text would be gibberish anyway)."""
    body = [f"Step {j + 1}: we look at the {['apples', 'cards', 'shells'][j % 3]} again and count {j + index}."
            for j in range(lines)]
    return "\n".join(body + [f"Wait, let me check. Answer: {index + len(problem.text) % 7}"])


def rollout_db(path, tmp_path, tiny_model_dir, n: int, *, lines: int = 4):
    db = store.open_db(path)
    pool = demo_problems(n, seed=11)
    pipeline.ingest_loaded(db, LoadResult(pool, []))
    rows = [{"input": f"user\n{p.text}\nassistant\n", "output": _chain(p, i, lines + i % 3), "score": 0.0, "step": STEP}
            for p in pool for i in range(K)]
    rollout_file = tmp_path / f"{STEP}.jsonl"
    rollout_file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = pipeline.import_rollouts(db, rollout_file, fmt="verl", checkpoint=str(tiny_model_dir))
    assert report.matched == {"text": n} and not report.rejected
    return db, report.model_ids[0]


def traces_by_problem(db) -> dict:
    return {row["problem_id"]: store.load_trace(db, row["problem_id"]) for row in db.query("select problem_id from traces")}


def test_ray_analysis_equals_the_local_path(ray_cluster, tmp_path, tiny_model_dir):
    from pivottrace.distributed import RayOptions, analyse_pool_ray
    from pivottrace.trace import TraceConfig, Tracer

    local_db, model_id = rollout_db(tmp_path / "local.db", tmp_path, tiny_model_dir, 6)
    local_db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(tmp_path / "local.db", tmp_path / "ray.db")
    ray_db = store.open_db(tmp_path / "ray.db")

    config = TraceConfig(dtype="float32")
    pipeline.analyse_pool(local_db, Tracer(str(tiny_model_dir), config=config), model_id=model_id,
                          show_progress=False)
    run = analyse_pool_ray(ray_db, str(tiny_model_dir), model_id=model_id, config=config,
                           options=RayOptions(device="cpu", batch_size=2, write_every=2))
    assert run.traced == 6

    local, distributed = traces_by_problem(local_db), traces_by_problem(ray_db)
    assert sorted(local) == sorted(distributed) and len(local) == 6
    for pid, expected in local.items():
        got = distributed[pid]
        assert got["completion"] == expected["completion"] and got["steps"] == expected["steps"]
        assert set(got["arrays"]) == set(expected["arrays"])
        for key, array in expected["arrays"].items():
            np.testing.assert_allclose(got["arrays"][key], array, atol=1e-5, rtol=0, err_msg=key)
        for key in ("mean_logprob", "min_logprob"):
            assert got[key] == pytest.approx(expected[key], abs=1e-5)
    assert store.all_sample_answers(ray_db) == store.all_sample_answers(local_db)
    assert ray_db.execute("select n_layers from models where id = ?", [model_id]).fetchone()[0] == 2


def test_killed_ray_run_resumes_without_duplicates(ray_cluster, tmp_path, tiny_model_dir):
    from pivottrace.distributed import RayOptions, analyse_pool_ray

    db_path = tmp_path / "resume.db"
    db, model_id = rollout_db(db_path, tmp_path, tiny_model_dir, N_RESUME, lines=20)
    command = [sys.executable, "-m", "pivottrace.cli", "analyse", "--engine", "ray", "--ray-address", ray_cluster,
               "--device", "cpu", "--dtype", "float32", "--actors", "1", "--write-every", "2", "--no-route",
               "--db", str(db_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and db["traces"].count < 2 and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the driver dies mid-stream: only committed batches survive
    process.wait()

    before = {r["problem_id"]: r["created_at"] for r in db.query("select problem_id, created_at from traces")}
    assert 2 <= len(before) < N_RESUME, "the run should have been killed midway"
    assert db["samples"].count == len(before) * (K - 1)  # each trace and its samples land together

    run = analyse_pool_ray(db, str(tiny_model_dir), model_id=model_id, options=RayOptions(device="cpu", write_every=4))
    assert run.traced == N_RESUME - len(before)  # only what was missing
    after = {r["problem_id"]: r["created_at"] for r in db.query("select problem_id, created_at from traces")}
    assert len(after) == N_RESUME == db["traces"].count
    assert db["samples"].count == N_RESUME * (K - 1)
    assert all(after[pid] == stamp for pid, stamp in before.items())  # finished analyses were not redone


def test_ray_trace_generates_and_analyses_every_untraced_problem_once(ray_cluster, tmp_path, tiny_model_dir):
    from pivottrace.distributed import RayOptions, trace_pool_ray
    from pivottrace.models import resolve_model
    from pivottrace.trace import TraceConfig

    db = store.open_db(tmp_path / "trace.db")
    pipeline.ingest_loaded(db, LoadResult(demo_problems(5, seed=4), []))
    config = TraceConfig(n_samples=2, max_new_tokens=12, dtype="float32")
    options = RayOptions(device="cpu", actors=1, batch_size=2, write_every=2)
    run = trace_pool_ray(db, str(tiny_model_dir), config=config, options=options)
    model_id = resolve_model(str(tiny_model_dir)).model_id
    assert run.traced == 5 and db["traces"].count == 5 and db["samples"].count == 10
    assert {r["model_id"] for r in db.query("select model_id from traces")} == {model_id}
    assert trace_pool_ray(db, str(tiny_model_dir), config=config, options=options).traced == 0
