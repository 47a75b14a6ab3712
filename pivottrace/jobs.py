"""Background jobs (trace, demo, route, eval, live) that run in their own process, apart from the app.

`start_*` records a job in the store's `jobs` table and launches `python -m pivottrace.jobs <id>`
as a detached process. The worker writes its progress (done / total / message / status) to
that row, so a page reload, or another user, sees the same progress bar, and the app stays
responsive while the model works. `refresh` marks jobs whose process died as failed; `cancel`
stops one. A `live` job traces one problem without storing it (the Inspect page's comparison)
and leaves the result in a file beside its log (`live_result_path`), so torch is only ever
imported in a worker. It holds no pipeline logic of its own (the worker calls pipeline.py) and
runs no SQL (store.py).
"""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

import numpy as np

from . import pipeline, store
from .models import DEFAULT_SPEC
from .vocab import route_summary

KINDS = ("trace", "demo", "route", "eval", "live")
ACTIVE = ("queued", "running")
STARTUP_GRACE_SECONDS = 30  # a queued job whose worker has not reported by then is marked failed


class JobError(store.StoreError):
    """A job cannot be started or changed."""


def _db_file(db) -> str:
    path = store.db_file(db)
    if not path:
        raise JobError("Background jobs need a database file, not an in-memory database.")
    return path


def log_path(db_file: str, job_id: int) -> Path:
    """Where a job's output goes: <db>.jobs/<id>.log beside the database."""
    return Path(f"{db_file}.jobs") / f"{job_id}.log"


def live_result_path(db, job_id: int) -> Path:
    """Where a live job leaves its trace: <db>.jobs/<id>.live.npz beside the database."""
    return Path(f"{_db_file(db)}.jobs") / f"{job_id}.live.npz"


LIVE_META = "meta"  # the npz entry holding the trace's text fields as JSON; the others are its arrays


def _plain(value):
    """JSON for numpy scalars in step dicts (e.g. an int64 token index)."""
    return value.item() if isinstance(value, np.generic) else str(value)


def write_live_result(path: Path, model_id: str, result) -> None:
    """Save one ProblemTrace for the app: its arrays, and its text fields as JSON (no pickle)."""
    trace = result.trace
    meta = {"model_id": model_id, "completion": trace.completion, "answer": trace.answer,
            "steps": trace.steps, "tokens": list(trace.tokens), "n_completion_tokens": trace.n_completion_tokens,
            "sample_answers": list(result.sample_answers)}
    partial = path.with_name(path.name + ".part")
    with partial.open("wb") as out:
        np.savez(out, **{LIVE_META: np.array(json.dumps(meta, default=_plain))}, **trace.arrays)
    partial.replace(path)  # the app never reads half a file


def read_live_result(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(text fields, arrays) of a live job's trace, as write_live_result saved them."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data[LIVE_META])), {k: data[k] for k in data.files if k != LIVE_META}


def start(db, kind: str, args: dict, *, total: int = 0) -> int:
    """Record a job and launch its worker process; returns the job id at once."""
    if kind not in KINDS:
        raise JobError(f"Unknown job kind {kind!r}.")
    db_file = _db_file(db)
    job_id = store.create_job(db, kind, args, total)
    log = log_path(db_file, job_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PIVOTTRACE_DB": db_file, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "pivottrace.jobs", str(job_id)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=root)
    # Reap the child when it exits, so a finished worker never lingers as a zombie.
    threading.Thread(target=process.wait, daemon=True).start()
    store.update_job(db, job_id, pid=process.pid)
    return job_id


def start_trace(db, *, model: str = DEFAULT_SPEC, limit: int | None = None, samples: int = 4,
                max_new_tokens: int = 256, batch_size: int = 4, source: str | None = None,
                route_after: bool = True, device: str = "auto", dtype: str = "auto") -> int:
    """Trace up to `limit` untraced problems with `model` (then route) in the background, on `device`
    ("auto": the GPU when there is one; a device that is not there fails the job with one line)."""
    from .models import resolve_model  # no torch: validates the spec before a process starts

    resolve_model(model)
    if limit is not None and int(limit) < 1:
        raise JobError("Trace at least one problem.")
    _check_device(device, dtype)
    args = {"model": model, "limit": limit, "samples": int(samples), "max_new_tokens": int(max_new_tokens),
            "batch_size": int(batch_size), "source": source, "route_after": bool(route_after),
            "device": device, "dtype": dtype}
    return start(db, "trace", args, total=int(limit or 0))


DEMO_MODEL_ENV = "PIVOTTRACE_DEMO_MODEL"  # the model the app's "Run the demo" uses (default: the embedded one)


def start_demo(db, *, model: str | None = None, problems: int = pipeline.DEMO_PROBLEMS,
               traced: int = pipeline.DEMO_FIRST, samples: int = 4,
               max_new_tokens: int = 256, rest: bool = True, seed: int = 0, by=None) -> int:
    """The demo in the background (pipeline.run_demo): generate `problems` demo problems, set the
    demo budget, trace `traced` of them and route; then, with `rest`, trace the rest of the demo
    pool, re-routing as it goes (pipeline.continue_demo). `traced=0`: the demo problems are in
    already (the CLI traced its handful in the foreground) and only the rest is traced. Without
    `model`: $PIVOTTRACE_DEMO_MODEL, or the embedded default model. `by`: who starts it (a user
    name or store.LocalOperator; it sets the demo budget when `traced` > 0)."""
    from .models import resolve_model

    model = model or os.environ.get(DEMO_MODEL_ENV) or DEFAULT_SPEC
    resolve_model(model)
    args = {"model": model, "problems": int(problems), "limit": int(traced), "samples": int(samples),
            "max_new_tokens": int(max_new_tokens), "batch_size": 4, "rest": bool(rest), "seed": int(seed),
            "by": by.audit_name if isinstance(by, store.LocalOperator) else by}
    return start(db, "demo", args, total=int(problems) if rest else int(traced))


def start_live(db, *, model: str = DEFAULT_SPEC, problem_id: str, samples: int = 4,
               max_new_tokens: int = 256) -> int:
    """Trace one problem with `model` in the background without storing it (live_result_path)."""
    from .models import resolve_model

    resolve_model(model)
    if store.get_problem(db, problem_id) is None:
        raise JobError(f"No problem {problem_id!r}.")
    args = {"model": model, "problem_id": problem_id, "samples": int(samples),
            "max_new_tokens": int(max_new_tokens), "batch_size": 1 + int(samples)}
    return start(db, "live", args, total=1)


DEVICES = ("auto", "cpu", "cuda", "mps")  # the Pool page's choices; the CLI also takes cuda:N
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check_device(device: str, dtype: str) -> None:
    """The names only (no torch here): whether the device is present is checked by the worker."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device or ""):
        raise JobError(f"Unknown device {device!r}: choose one of {', '.join(DEVICES)}.")
    if dtype not in DTYPES:
        raise JobError(f"Unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")


def start_route(db) -> int:
    """Re-score and re-route the pool in the background."""
    if store.latest_model_id(db) is None:
        raise JobError("Nothing is traced yet: trace some problems first.")
    return start(db, "route", {}, total=1)


def start_eval(db, *, folder: str) -> int:
    """Run `pivottrace eval` on the pool in the background, writing the report into `folder`."""
    if store.latest_model_id(db) is None:
        raise JobError("Nothing is traced yet: trace some problems first.")
    return start(db, "eval", {"folder": str(folder)}, total=1)


def refresh(db) -> list[dict]:
    """Recent jobs, newest first; active jobs whose worker is gone are marked failed."""
    rows = store.jobs(db)
    for job in rows:
        if job["status"] not in ACTIVE:
            continue
        waited = store.now() - (job["started_at"] or 0)
        if (job["pid"] and not store.pid_alive(job["pid"])) or (not job["pid"] and waited > STARTUP_GRACE_SECONDS):
            message = "the worker stopped without reporting; see " + str(log_path(_db_file(db), job["id"]))
            store.update_job(db, job["id"], status="failed", message=message)
            job.update(status="failed", message=message)
    return rows


def active(db) -> list[dict]:
    return [job for job in refresh(db) if job["status"] in ACTIVE]


def cancel(db, job_id: int) -> None:
    """Stop a running job; what it finished is kept (each trace is saved as soon as it is done)."""
    job = store.get_job(db, job_id)
    if job is None:
        raise JobError(f"No job {job_id}.")
    if job["status"] not in ACTIVE:
        return
    if job["pid"] and store.pid_alive(job["pid"]):
        os.kill(job["pid"], signal.SIGTERM)
    store.update_job(db, job_id, status="cancelled", message="cancelled")


# --------------------------------------------------------------------------- worker

def _tracer(args: dict):
    from .trace import make_tracer  # torch is imported in the worker only

    return make_tracer(args["model"], samples=args["samples"], max_new_tokens=args["max_new_tokens"],
                       batch_size=args["batch_size"], dtype=args.get("dtype"), device=args.get("device", "auto"))

def run(job_id: int, db=None) -> None:
    """Run one recorded job to the end in this process, reporting progress to its row."""
    db = db or store.open_db()
    job = store.get_job(db, job_id)
    if job is None:
        raise JobError(f"No job {job_id}.")
    args = json.loads(job["args"] or "{}")
    store.update_job(db, job_id, status="running", pid=os.getpid(), message="starting")

    def on_progress(done, total, run_):
        store.update_job(db, job_id, done=done, total=total,
                         message=f"traced {done} of {total} · {run_.tokens_per_second:.1f} tokens/s")

    try:
        if job["kind"] == "demo":
            _run_demo(db, job_id, args)
        elif job["kind"] == "trace":
            store.update_job(db, job_id, message="loading the model")
            tracer = _tracer(args)
            pending = len(store.pending_problems(db, tracer.model_id, limit=args.get("limit"),
                                                 source=args.get("source")))
            store.update_job(db, job_id, total=pending, message=f"tracing {pending} problems")
            run_ = pipeline.trace_pool(db, tracer, limit=args.get("limit"), source=args.get("source"),
                                       show_progress=False, on_progress=on_progress)
            message = f"traced {run_.traced} problems ({run_.tokens_per_second:.1f} tokens/s)"
            if args.get("route_after") and run_.traced:
                routed = pipeline.route(db, model_id=tracer.model_id, config=pipeline.current_router_config(db),
                                        note=job["kind"])
                message += f"; router v{routed.router_version}: " + route_summary(routed.counts)
            elif args.get("route_after"):  # nothing new, but a routing cut short or stale features
                routed = pipeline.recalibrate_if_due(db, every=0)
                if routed is not None:
                    message += f"; re-routed, router v{routed.router_version}"
            store.update_job(db, job_id, status="done", done=run_.traced, message=message)
        elif job["kind"] == "live":
            store.update_job(db, job_id, message="loading the model")
            tracer = _tracer(args)
            store.update_job(db, job_id, message=f"tracing problem {args['problem_id']}")
            result = tracer.trace_batch([store.get_problem(db, args["problem_id"])["text"]])[0]
            write_live_result(live_result_path(db, job_id), tracer.model_id, result)
            store.update_job(db, job_id, status="done", done=1, total=1,
                             message=f"traced problem {args['problem_id']} live (not stored)")
        elif job["kind"] == "route":
            routed = pipeline.route(db, config=pipeline.current_router_config(db), note="on demand")
            store.update_job(db, job_id, status="done", done=1, total=1,
                             message=f"router v{routed.router_version} ({routed.kind}): " + route_summary(routed.counts))
        elif job["kind"] == "eval":
            from .evaluate import evaluate_db

            store.update_job(db, job_id, message="playing the labelling loop for every budget")
            report = evaluate_db(db, args["folder"])
            store.update_job(db, job_id, status="done", done=1, total=1,
                             message=f"report on {report.pool['size']} problems in {args['folder']}")
        else:
            raise JobError(f"Unknown job kind {job['kind']!r}.")
    except BaseException as err:  # the row must say what happened, whatever happened
        traceback.print_exc()
        status = "cancelled" if isinstance(err, (KeyboardInterrupt, SystemExit)) else "failed"
        storage = store.storage_error(err, _db_file(db))  # a full disk says what to do, in one line
        message = str(storage) if storage is not None else f"{type(err).__name__}: {err}"
        store.update_job(db, job_id, status=status, message=message[:500])
        if status == "failed":
            raise


def _acting(by: str | None):
    """Who started a job, back from its JSON args: a user name, or the local operator."""
    if isinstance(by, str) and by.startswith(store.LOCAL_PREFIX):
        return store.LocalOperator(by[len(store.LOCAL_PREFIX):])
    return by


def _run_demo(db, job_id: int, args: dict) -> None:
    """The demo job: pipeline.run_demo (the handful), then pipeline.continue_demo (the rest)."""
    store.update_job(db, job_id, message="loading the model")
    tracer = _tracer(args)
    done = 0
    if args["limit"]:
        def on_first(n, total, run_):
            store.update_job(db, job_id, done=n, message=f"tracing the first {total} problems · "
                                                          f"{run_.tokens_per_second:.1f} tokens/s")

        _, first, routed = pipeline.run_demo(db, tracer, by=_acting(args.get("by")), n_problems=args["problems"],
                                             n_trace=args["limit"],
                                             seed=args.get("seed", 0), show_progress=False, on_progress=on_first)
        done = first.traced
        store.update_job(db, job_id, done=done, message=f"{done} problems traced, the app is ready; "
                                                         f"router v{routed.router_version}: {route_summary(routed.counts, readable=True)}")
    if not args.get("rest"):
        store.update_job(db, job_id, status="done", done=done)
        return
    pending = len(store.pending_problems(db, tracer.model_id, source=pipeline.DEMO_SOURCE))
    total = done + pending
    store.update_job(db, job_id, total=total)

    def on_more(n, _, run_, routed):
        store.update_job(db, job_id, done=done + n, message=(
            f"traced {done + n} of {total} · {run_.tokens_per_second:.1f} tokens/s · "
            f"router v{routed.router_version}: {route_summary(routed.counts, readable=True)}"))

    pipeline.continue_demo(db, tracer, on_progress=on_more)
    counts = store.route_counts(db)
    store.update_job(db, job_id, status="done", done=total,
                     message=f"the demo pool is traced ({total} problems); routes: {route_summary(counts, readable=True)}")


def _on_sigterm(signum, frame):
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m pivottrace.jobs <job id>", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run(int(argv[0]))
    except Exception:
        return 1
    except SystemExit as err:
        return int(err.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
