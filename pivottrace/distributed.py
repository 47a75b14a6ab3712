"""The heavy stages (analysis of imported rollouts, tracing) on a Ray cluster.

Ray Data `map_batches` runs over an actor pool: each actor loads one model (on its own GPU when the
cluster has GPUs, `num_gpus=1` per actor) and turns batches of problems into `ProblemTrace`s with the
same functions as the local path (pipeline.analyse_group, Tracer.trace_batch), so the statistics are
the same. This process, the driver, is the single writer of the SQLite store: results stream back
and are written `write_every` at a time, one transaction each. The pending problems are read from
the store at the start, so a killed run (driver or actors) loses at most the results in flight, and
a re-run does only what is missing; a trace is never written twice.
It schedules nothing itself (Ray does), generates nothing at scale (leave that to vLLM or the
trainer, and bring the completions in with import-rollouts) and runs no SQL (store.py does).
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import pipeline, store

DEFAULT_CPU_ACTORS = 2  # actors on a cluster without GPUs: each holds a model, so memory, not cores, limits them


@dataclass
class RayOptions:
    """Where and how wide to run. `address` None starts a local cluster (`num_cpus` of this machine)."""

    address: str | None = None  # ray.init address: "auto", "ray://head:10001", ...
    actors: int | None = None  # None: one per GPU when the cluster has GPUs, else DEFAULT_CPU_ACTORS
    device: str = "auto"  # "auto" | "cpu" | "cuda": each actor sees only its own GPU
    num_cpus: int | None = None  # local cluster only
    batch_size: int = 4  # problems per map_batches call on an actor
    write_every: int = 16  # results per SQLite transaction on the driver
    ship_code: bool | None = None  # send this package to the workers (default: when joining a cluster)
    runtime_env: dict = field(default_factory=dict)


def _init_ray(options: RayOptions):
    try:
        import ray
        import ray.data  # noqa: F401  (the extra: ray[data])
    except ImportError:
        raise ValueError("--engine ray needs Ray Data: pip install 'pivottrace[ray]'") from None

    if ray.is_initialized():
        return ray
    env = dict(options.runtime_env)
    if options.ship_code if options.ship_code is not None else options.address is not None:
        env.setdefault("py_modules", [str(Path(__file__).resolve().parent)])
    if options.address:
        ray.init(address=options.address, runtime_env=env or None, log_to_driver=False)
    else:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, runtime_env=env or None,
                 log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # they would bury the CLI's output
    return ray


def _pool_shape(ray, options: RayOptions) -> tuple[int, dict]:
    """(actors, per-actor resources): a GPU each when the cluster has GPUs and the device allows."""
    if options.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {options.device!r} with --engine ray: use auto, cpu or cuda (each actor "
                         "gets its own GPU)")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and options.device != "cpu":
        return options.actors or gpus, {"num_gpus": 1}
    if options.device == "cuda":
        raise ValueError("device 'cuda' with --engine ray: the cluster has no GPUs")
    cpus = int(ray.cluster_resources().get("CPU", 1))
    actors = options.actors or max(1, min(DEFAULT_CPU_ACTORS, cpus))
    return actors, {"num_cpus": max(1, cpus // actors) if options.address is None else 1}


class _AnalyseActor:
    """One model; analyses imported rollouts (pipeline.analyse_group)."""

    def __init__(self, spec: str, config, device: str):
        from .trace import Tracer  # torch loads in the actor, not in the driver

        self.tracer = Tracer(spec, config=config, device=device)

    def __call__(self, batch: dict) -> dict:
        results = [pickle.dumps(pipeline.analyse_group(self.tracer, json.loads(payload)))
                   for payload in batch["payload"]]
        return {"problem_id": batch["problem_id"], "result": np.array(results, dtype=object)}


class _TraceActor:
    """One model; greedy chain + K samples + analysis (Tracer.trace_batch)."""

    def __init__(self, spec: str, config, device: str):
        from .trace import Tracer

        self.tracer = Tracer(spec, config=config, device=device)

    def __call__(self, batch: dict) -> dict:
        results = [pickle.dumps(r) for r in self.tracer.trace_batch([str(t) for t in batch["text"]])]
        return {"problem_id": batch["problem_id"], "result": np.array(results, dtype=object)}


def _run(db, items: list[dict], actor, *, spec: str, config, model_id: str, options: RayOptions,
         on_progress=None) -> pipeline.TraceRun:
    """Stream `items` through an actor pool and write the results from this process, in batches."""
    run = pipeline.TraceRun()
    if not items:
        return run
    ray = _init_ray(options)
    actors, resources = _pool_shape(ray, options)
    device = "cuda" if "num_gpus" in resources else ("cpu" if options.device == "auto" else options.device)
    dataset = ray.data.from_items(items).map_batches(
        actor, fn_constructor_kwargs={"spec": spec, "config": config, "device": device},
        batch_size=max(1, options.batch_size), concurrency=actors, batch_format="numpy", **resources)
    start = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=max(1, options.write_every), batch_format="numpy"):
        results = [(str(pid), pickle.loads(blob)) for pid, blob in zip(batch["problem_id"], batch["result"])]
        store.save_traces(db, model_id, results)
        run.traced += len(results)
        run.tokens += sum(r.generated_tokens or r.trace.n_completion_tokens for _, r in results)
        run.seconds = time.perf_counter() - start
        if on_progress:
            on_progress(run.traced, len(items), run)
    return run


def analyse_pool_ray(db, spec: str, *, model_id: str, config=None, limit: int | None = None,
                     options: RayOptions | None = None, on_progress=None) -> pipeline.TraceRun:
    """pipeline.analyse_pool on a Ray cluster: imported rollouts of `model_id`, analysed with `spec`."""
    options = options or RayOptions()
    pending = sorted(store.pending_rollouts(db, model_id, limit=limit), key=lambda g: len(g["completions"][0]))
    items = [{"problem_id": g["problem_id"], "payload": json.dumps(g)} for g in pending]
    if store.model_spec(db, model_id) is None:
        store.upsert_model(db, model_id, spec=spec, n_layers=None)
    run = _run(db, items, _AnalyseActor, spec=spec, config=config, model_id=model_id, options=options,
               on_progress=on_progress)
    _record_layers(db, model_id)
    return run


def trace_pool_ray(db, spec: str, *, config=None, limit: int | None = None, source: str | None = None,
                   options: RayOptions | None = None, on_progress=None) -> pipeline.TraceRun:
    """pipeline.trace_pool on a Ray cluster: generation and analysis of untraced problems with `spec`."""
    from .models import resolve_model

    options = options or RayOptions()
    model_id = resolve_model(spec).model_id
    if store.model_spec(db, model_id) is None:
        store.upsert_model(db, model_id, spec=spec, n_layers=None)
    pending = sorted(store.pending_problems(db, model_id, limit=limit, source=source), key=lambda p: len(p["text"]))
    items = [{"problem_id": p["id"], "text": p["text"]} for p in pending]
    run = _run(db, items, _TraceActor, spec=spec, config=config, model_id=model_id, options=options,
               on_progress=on_progress)
    _record_layers(db, model_id)
    return run


def _record_layers(db, model_id: str) -> None:
    """The model's layer count, read from a stored trace (the driver never loads the model)."""
    trace = store.load_trace(db, next(iter(store.traced_problem_ids(db, model_id, limit=1)), ""), model_id)
    if trace and "entropy" in trace["arrays"]:
        store.upsert_model(db, model_id, spec=store.model_spec(db, model_id) or model_id,
                           n_layers=int(trace["arrays"]["entropy"].shape[0]))


def shutdown() -> None:
    """Leave the Ray cluster (a local one stops)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()

