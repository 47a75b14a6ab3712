"""The `pivottrace` command: ingest, trace, route, status, demo, export, eval, app, users, budget, audit.

Each command is a thin wrapper over pipeline.py / store.py / auth.py (it runs no SQL of its own);
domain errors become one clean message and a non-zero exit code, never a traceback.

The CLI acts as the local operator (store.LocalOperator): whoever can run it on the machine that
holds the database file can also open that file and write to it, so a password prompt here would
protect nothing. Its user, role and budget changes are written to the audit trail as
`local:<login>`. People who are not operators sign in to the app instead.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import subprocess
import sys
import traceback
from functools import wraps
from pathlib import Path
from typing import Optional

import typer

from . import auth, pipeline, store
from .datasets import PoolFormatError
from .evaluate import DEFAULT_REPORT_DIR
from .models import DEFAULT_SPEC, ModelNotFoundError
from .route import DEFAULT_TARGET_PRECISION
from .vocab import route_summary

app = typer.Typer(help="PivotTrace: route unlabeled RLVR problems by metacognitive pivots. "
                       "Commands act as the local operator (shell access to the database file): "
                       "their user, role and budget changes are audited as local:<login>.",
                  no_args_is_help=True, add_completion=False)
users_app = typer.Typer(help="Manage users and roles.", no_args_is_help=True)
budget_app = typer.Typer(help="Set or show the label budget.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(budget_app, name="budget")

DbOption = typer.Option(None, "--db", help="SQLite database (default: $PIVOTTRACE_DB or ./pivottrace.db).")
ModelOption = typer.Option(DEFAULT_SPEC, "--model", "-m",
                           help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face id, "
                                "a local HF folder or a .gguf file.")


EXIT_ERROR = 1  # a domain error (bad option, unknown user, ...); storage errors have their own codes
EXIT_INTERRUPTED = 130
_debug = {"on": False}  # set by --debug (or $PIVOTTRACE_DEBUG=1) for this invocation


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", envvar="PIVOTTRACE_DEBUG",
                                    help="Show the Python traceback behind an error.")):
    """PivotTrace: route unlabeled RLVR problems by metacognitive pivots."""
    _debug["on"] = debug


def _error_line(err: BaseException, db_path: str) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error a user should see as one line, or None."""
    storage = store.storage_error(err, db_path)
    if storage is not None:
        return storage.exit_code, str(storage)
    if isinstance(err, (store.StoreError, PoolFormatError, ModelNotFoundError, ValueError)):
        return EXIT_ERROR, str(err)
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "Interrupted; what was finished is saved, run the command again to go on."
    if isinstance(err, Exception):
        return EXIT_ERROR, (f"unexpected {type(err).__name__}: {err} (run again with --debug for the "
                            "traceback, and please report it)")
    return None


def clean_errors(func):
    """Turn every error into one `Error: ...` line on stderr and an exit code: 1 for domain
    errors, StorageError.exit_code (3-9) for storage failures, 130 for Ctrl-C. `--debug` also
    prints the traceback."""
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BaseException as err:
            line = _error_line(err, str(kwargs.get("db") or store.default_db_path()))
            if line is None:
                raise
            if _debug["on"]:
                traceback.print_exc()
            typer.secho(f"Error: {' '.join(line[1].split())}", fg="red", err=True)
            raise typer.Exit(line[0])
    return wrapper


def _db(path: Optional[str], *, create: bool = False):
    """The database; only commands that add data (`create=True`) may start a new one."""
    return store.open_db(path, create=create)


def _operator() -> store.LocalOperator:
    """The person at this shell, as the audit trail names them."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container's numeric user)
        login = f"uid{os.getuid()}"
    return store.LocalOperator(login)


def _say_operator(operator: store.LocalOperator) -> None:
    typer.secho(f"Acting as the local operator ({operator.audit_name}); the change is audited.", err=True, dim=True)


LOOPBACK_HOSTS = ("localhost",)


def is_loopback(address: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if address in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


DeviceOption = typer.Option("auto", "--device", help="auto (a CUDA GPU when there is one), cpu, cuda, cuda:N or mps.")
DtypeOption = typer.Option("auto", "--dtype", help="auto (bfloat16 on a GPU or a bf16 CPU, else float32), "
                                                  "float32, bfloat16 or float16.")
EngineOption = typer.Option("local", "--engine", help="local (this process) or ray (a Ray cluster: "
                                                      "one model per actor, this process writes the store).")
RayAddressOption = typer.Option(None, "--ray-address", help="Ray cluster to join (ray.init address, e.g. "
                                                            "'auto' or ray://head:10001); default: start a local one.")
ActorsOption = typer.Option(None, "--actors", help="Ray actors, one model each (default: one per GPU, else 2).")
WriteEveryOption = typer.Option(16, "--write-every", help="--engine ray: results per store transaction.")


def _tracer(model: str, **options):
    from .trace import make_tracer  # torch loads only for commands that trace

    return make_tracer(model, **options)


def _trace_config(**options):
    from .trace import tracer_config

    return tracer_config(**options)


@app.command()
@clean_errors
def ingest(path: Path = typer.Argument(..., help="A .jsonl, .csv, .tsv or .parquet pool."),
           question_field: Optional[str] = typer.Option(None, "--question-field", help="Column with the problem text."),
           answer_field: Optional[str] = typer.Option(None, "--answer-field", help="Column with the answer/solution."),
           source: Optional[str] = typer.Option(None, "--source", help="Source name (default: file stem)."),
           db: Optional[str] = DbOption):
    """Ingest a pool of problems. Malformed rows are reported by line; good rows still load."""
    report = pipeline.ingest(_db(db, create=True), path, question_field=question_field,
                             answer_field=answer_field, source=source)
    typer.echo(report.totals())
    typer.echo(f"Added {report.added} problems ({report.existing} already present).")
    _exit_if_rejected([(row.where, row.reason) for row in report.rejected])


def _exit_if_rejected(rejected: list[tuple[str, str]]) -> None:
    """Print each rejected row (where, why) to stderr and exit 2 if there was any; the good rows
    are already stored."""
    for where, reason in rejected:
        typer.secho(f"  {where}: {reason}", fg="yellow", err=True)
    if rejected:
        typer.secho(f"Rejected {len(rejected)} rows.", fg="red", err=True)
        raise typer.Exit(2)


@app.command()
@clean_errors
def trace(model: str = ModelOption,
          limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Trace at most this many problems."),
          samples: int = typer.Option(4, "--samples", "-k", help="K sampled answers per problem."),
          max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
          batch_size: int = typer.Option(8, "--batch-size"),
          source: Optional[str] = typer.Option(None, "--source", help="Only problems from this source."),
          seed: int = typer.Option(0, "--seed"),
          device: str = DeviceOption,
          dtype: str = DtypeOption,
          engine: str = EngineOption,
          ray_address: Optional[str] = RayAddressOption,
          actors: Optional[int] = ActorsOption,
          write_every: int = WriteEveryOption,
          db: Optional[str] = DbOption):
    """Trace untraced problems: greedy chain + K samples + attention statistics. Resumable."""
    database = _db(db)
    try:
        if engine == "ray":
            from .distributed import RayOptions, trace_pool_ray

            config = _trace_config(samples=samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   seed=seed, dtype=dtype)
            run = trace_pool_ray(database, model, config=config, limit=limit, source=source,
                                 options=RayOptions(address=ray_address, actors=actors, device=device,
                                                    write_every=write_every))
        elif engine == "local":
            tracer = _tracer(model, samples=samples, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed, device=device, dtype=dtype)
            run = pipeline.trace_pool(database, tracer, limit=limit, source=source)
        else:
            raise ValueError(f"unknown engine {engine!r}: use local or ray")
    except KeyboardInterrupt:
        typer.secho("Interrupted: finished traces are saved; run again to resume.", fg="yellow", err=True)
        raise typer.Exit(130)
    typer.echo(f"Traced {run.traced} problems, {run.tokens} tokens in {run.seconds:.1f}s "
               f"({run.tokens_per_second:.1f} tok/s).")
    due = pipeline.recalibration_due(database, every=0)  # a new checkpoint, stale features, a routing cut short
    routed = pipeline.recalibrate_if_due(database, every=0)
    if routed is not None:
        typer.echo(f"Routed ({due.note}): router version {routed.router_version} ({routed.kind}): " +
                   route_summary(routed.counts))


@app.command("import-rollouts")
@clean_errors
def import_rollouts(path: Path = typer.Argument(..., help="A rollout file (.jsonl, or .parquet for TRL's logs)."),
                    fmt: str = typer.Option(..., "--format", "-f", help="verl, vllm, trl or jsonl (generic)."),
                    checkpoint: str = typer.Option(..., "--checkpoint", "-c",
                                                   help="The policy checkpoint that sampled them (a local "
                                                        "folder or hub id): `analyse` loads it."),
                    step: Optional[int] = typer.Option(None, "--step", help="Training step of the checkpoint "
                                                       "(default: the rows' `step`, or the file name's number)."),
                    prompt_field: str = typer.Option("prompt", "--prompt-field", help="jsonl: prompt column."),
                    completion_field: str = typer.Option("completion", "--completion-field", help="jsonl: completion column."),
                    id_field: Optional[str] = typer.Option(None, "--id-field", help="jsonl: column with the problem id."),
                    step_field: str = typer.Option("step", "--step-field", help="jsonl: step column."),
                    score_field: str = typer.Option("score", "--score-field", help="jsonl: reward column."),
                    source: Optional[str] = typer.Option(None, "--source", help="Source of new problems "
                                                         "(default: rollouts:<file stem>)."),
                    db: Optional[str] = DbOption):
    """Import completions sampled elsewhere, K per problem; then `pivottrace analyse` traces them."""
    from .rollouts import ColumnOptions

    if os.path.exists(checkpoint):
        checkpoint = str(Path(checkpoint).resolve())
    columns = ColumnOptions(prompt=prompt_field, completion=completion_field, problem_id=id_field,
                            step=step_field, score=score_field)
    report = pipeline.import_rollouts(_db(db, create=True), path, fmt=fmt, checkpoint=checkpoint, step=step,
                                      columns=columns, source=source)
    matched = ", ".join(f"{n} by {how}" for how, n in sorted(report.matched.items())) or "none"
    typer.echo(f"Read {report.rows} completions in {report.groups} groups; stored {report.added}. "
               f"Matched problems: {matched}; new problems: {len(report.new_problems)}.")
    for problem_id, question in report.new_problems[:20]:
        typer.echo(f"  new {problem_id}: {question[:80]!r}")
    if len(report.new_problems) > 20:
        typer.echo(f"  ... and {len(report.new_problems) - 20} more new problems")
    typer.echo("Model ids: " + ", ".join(report.model_ids) + ". Next: pivottrace analyse")
    _exit_if_rejected([(f"line {row.line}", row.reason) for row in report.rejected])


@app.command()
@clean_errors
def analyse(model_id: Optional[str] = typer.Option(None, "--model-id", help="Imported model id to analyse "
                                                    "(default: every one with chains not analysed yet)."),
            model: Optional[str] = typer.Option(None, "--model", "-m", help="Load this model instead of the "
                                                "checkpoint named at import (it must be the one that sampled them)."),
            limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Analyse at most this many problems."),
            device: str = DeviceOption,
            dtype: str = DtypeOption,
            engine: str = EngineOption,
            ray_address: Optional[str] = RayAddressOption,
            actors: Optional[int] = ActorsOption,
            write_every: int = WriteEveryOption,
            route: bool = typer.Option(True, "--route/--no-route", help="Route the pool afterwards."),
            db: Optional[str] = DbOption):
    """Teacher-forced analysis of imported rollouts (no generation), then routing. Resumable."""
    database = _db(db)
    model_ids = [model_id] if model_id else store.rollout_models(database)
    if not model_ids:
        raise ValueError("no imported rollouts: run `pivottrace import-rollouts` first")
    for mid in model_ids:
        spec = model or store.model_spec(database, mid)
        if spec is None:
            raise ValueError(f"unknown model id {mid!r}: see `pivottrace status`")
        if not store.pending_rollouts(database, mid, limit=1):
            typer.echo(f"{mid}: nothing left to analyse.")
            continue
        try:
            if engine == "ray":
                from .distributed import RayOptions, analyse_pool_ray

                run = analyse_pool_ray(database, spec, model_id=mid, config=_trace_config(dtype=dtype), limit=limit,
                                       options=RayOptions(address=ray_address, actors=actors, device=device,
                                                    write_every=write_every))
            elif engine == "local":
                tracer = _tracer(spec, device=device, dtype=dtype)
                run = pipeline.analyse_pool(database, tracer, model_id=mid, limit=limit)
            else:
                raise ValueError(f"unknown engine {engine!r}: use local or ray")
        except KeyboardInterrupt:
            typer.secho("Interrupted: finished analyses are saved; run again to resume.", fg="yellow", err=True)
            raise typer.Exit(130)
        typer.echo(f"{mid}: analysed {run.traced} problems, {run.tokens} tokens in {run.seconds:.1f}s.")
        if route:
            report = pipeline.route(database, model_id=mid, note="analyse",
                                    config=pipeline.current_router_config(database))
            typer.echo(f"Router version {report.router_version} ({report.kind}): " +
                       ", ".join(f"{k} {v}" for k, v in report.counts.items()))


@app.command("route")
@clean_errors
def route_cmd(model: Optional[str] = typer.Option(None, "--model-id", help="Model id to route (default: latest traced)."),
              target_precision: float = typer.Option(DEFAULT_TARGET_PRECISION, "--target-precision"),
              db: Optional[str] = DbOption):
    """Score pivots and features, estimate uncertainty and route every traced problem."""
    from .route import RouterConfig

    report = pipeline.route(_db(db), model_id=model, config=RouterConfig(target_precision=target_precision),
                            note="cli")
    typer.echo(f"Router version {report.router_version} ({report.kind}): " + route_summary(report.counts))
    for line in pipeline.explain(report):
        typer.echo(f"  {line}")


@app.command()
@clean_errors
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON."), db: Optional[str] = DbOption):
    """Counts by state and route, and the budget."""
    info = store.status(_db(db))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    budget = info["budget"]
    typer.echo(f"problems     {info['problems']}")
    typer.echo(f"  untraced   {info['untraced']}")
    typer.echo(f"  traced     {info['traced']}")
    typer.echo(f"  routed     {info['routed']}")
    typer.echo(f"  labelled   {info['labelled']}")
    typer.echo("routes       " + ", ".join(f"{k} {v}" for k, v in info["routes"].items()))
    total = "not set" if budget["total"] is None else budget["total"]
    typer.echo(f"budget       {total} (spent {budget['spent']}, remaining {budget['remaining']})")
    typer.echo(f"router       version {info['router_version']}")
    typer.echo(f"models       {', '.join(info['models']) or '-'}")


@app.command()
@clean_errors
def demo(model: str = ModelOption,
         problems: int = typer.Option(pipeline.DEMO_PROBLEMS, "--problems", help="Demo problems to generate."),
         traced: int = typer.Option(pipeline.DEMO_FIRST, "--trace", help="How many of them to trace now."),
         samples: int = typer.Option(4, "--samples", "-k"),
         max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
         seed: int = typer.Option(0, "--seed"),
         device: str = DeviceOption,
         dtype: str = DtypeOption,
         rest_in_background: bool = typer.Option(
             False, "--rest-in-background",
             help="Then trace the rest of the demo pool in a background job (the app shows its progress)."),
         db: Optional[str] = DbOption):
    """Generate demo problems, set the demo budget, trace a handful with the model and route them."""
    database, operator = _db(db, create=True), _operator()
    _say_operator(operator)  # it sets the demo budget where none was set
    tracer = _tracer(model, samples=samples, max_new_tokens=max_new_tokens, batch_size=8, seed=seed,
                     device=device, dtype=dtype)
    report, run, routed = pipeline.run_demo(database, tracer, by=operator, n_problems=problems, n_trace=traced,
                                            seed=seed)
    budget = store.budget_status(database)
    typer.echo(f"Demo: {report.added} new problems, traced {run.traced} "
               f"({run.tokens_per_second:.1f} tok/s), budget {budget['total']} labels, router version "
               f"{routed.router_version}: " + route_summary(routed.counts))
    for line in pipeline.explain(routed):
        typer.echo(f"  {line}")
    if rest_in_background:
        from . import jobs

        job_id = jobs.start_demo(database, model=model, problems=problems, traced=0, samples=samples,
                                 max_new_tokens=max_new_tokens, seed=seed, by=operator)
        typer.echo(f"Tracing the other {problems - run.traced} demo problems in background job #{job_id}.")


def _export_help() -> str:
    """`pivottrace export --help`: what it writes, and the lines that point each trainer at it."""
    from . import trainers

    paragraphs = [
        "Write the training set for verl, TRL or OpenRLHF: human labels plus self-train pseudo-labels, "
        "and a card (README.md, card.json) beside it with counts, precision and the exact training lines.",
        "verl: data_source defaults to lighteval/MATH, which verl's own default_compute_score scores "
        "from the last \\boxed{} (what the default instruction asks for). For PivotTrace's math-verify "
        f"scorer, put {trainers.SOURCE_ROOT} on PYTHONPATH and add to verl.trainer.main_ppo:",
        *trainers.verl_reward_overrides(),
        "OpenRLHF 0.11 (train_ppo_ray): --data.prompt_dataset FILE --data.input_key input "
        f"--data.label_key label --data.apply_chat_template --reward.remote_url {trainers.REWARDS_FILE}",
        "TRL: GRPOTrainer(model=..., reward_funcs=pivottrace.rewards.math_reward, train_dataset=the export)",
    ]
    return "\n\n".join(paragraphs)


@app.command("export", help=_export_help())
@clean_errors
def export_cmd(fmt: str = typer.Option(..., "--format", "-f",
                                       help="verl, trl or openrlhf; prm: human step labels for TRL's PRMTrainer."),
               out: Path = typer.Option(..., "--out", "-o",
                                        help="Output file (.parquet or .jsonl); a test split goes "
                                             "next to it as <stem>_test<suffix>, the card in the same folder."),
               include_low_priority: bool = typer.Option(False, "--include-low-priority",
                                                         help="Add low_priority problems (majority-vote labels)."),
               include_deferred: bool = typer.Option(False, "--include-deferred",
                                                     help="Add deferred problems (majority-vote labels)."),
               test_fraction: float = typer.Option(0.0, "--test-fraction",
                                                   help="Share of problems in a test split, in [0, 1)."),
               seed: int = typer.Option(0, "--seed", help="Seed of the train/test split."),
               file_type: Optional[str] = typer.Option(None, "--file-type",
                                                       help="jsonl or parquet (TRL takes both; default: from --out)."),
               input_key: str = typer.Option("input", "--input-key", help="OpenRLHF --data.input_key."),
               label_key: str = typer.Option("label", "--label-key", help="OpenRLHF --data.label_key."),
               instruction: Optional[str] = typer.Option(None, "--instruction",
                                                         help="Text after each question (default asks for \\boxed{}; '' for none)."),
               data_source: Optional[str] = typer.Option(
                   None, "--data-source",
                   help="verl data_source / OpenRLHF datasource (default: lighteval/MATH for verl, which "
                        "verl scores from \\boxed{}; each problem's source for OpenRLHF). A verl scorer that "
                        "reads another answer form than the instruction asks for gets a warning."),
               db: Optional[str] = DbOption):
    from .export import DEFAULT_INSTRUCTION, ExportOptions, export

    options = ExportOptions(include_low_priority=include_low_priority, include_deferred=include_deferred,
                            test_fraction=test_fraction, seed=seed, file_type=file_type,
                            input_key=input_key, label_key=label_key, data_source=data_source,
                            instruction=DEFAULT_INSTRUCTION if instruction is None else instruction)
    result = export(_db(db), fmt=fmt, out=out, options=options)
    for split, path in result.files.items():
        typer.echo(f"Wrote {result.rows[split]} {split} rows to {path}")
    typer.echo("Labels: " + ", ".join(f"{k} {v}" for k, v in sorted(result.label_sources.items())) +
               f"; router version {result.router_version}.")
    typer.echo(f"Card (counts, precision, training lines): {out.parent / 'README.md'}")
    for reason, count in sorted(result.skipped.items()):
        typer.secho(f"  left out {count}: {reason}", fg="yellow", err=True)
    for warning in result.warnings:
        typer.secho(f"Warning: {warning}", fg="yellow", err=True)


@app.command("eval")
@clean_errors
def eval_cmd(out: Path = typer.Option(Path(DEFAULT_REPORT_DIR), "--out", "-o", help="Folder for the report."),
             budgets: str = typer.Option("5,10,20,30,50", "--budgets",
                                         help="Label budgets in % of the pool, comma-separated."),
             rounds: int = typer.Option(5, "--rounds", help="Labelling rounds per budget (recalibrate after each)."),
             target_precision: float = typer.Option(DEFAULT_TARGET_PRECISION, "--target-precision"),
             strategies: Optional[str] = typer.Option(None, "--strategies",
                                                      help="Comma-separated subset (default: all baselines and ablations)."),
             model: Optional[str] = typer.Option(None, "--model-id", help="Model id (default: latest traced)."),
             png: bool = typer.Option(True, "--png/--no-png", help="Also write PNG charts (needs Chromium)."),
             seed: int = typer.Option(0, "--seed"),
             db: Optional[str] = DbOption):
    """Judge the selection with an oracle from the gold answers: the labelling loop per budget,
    against random, confidence-only and vote-share-only selection and three ablations. Reads the
    database only; your labels and routes are not touched."""
    from .evaluate import EvalConfig, evaluate_db

    try:
        shares = tuple(float(b) / 100.0 for b in budgets.split(",") if b.strip())
    except ValueError:
        raise ValueError(f"--budgets takes percentages like 5,10,20; got {budgets!r}.") from None
    config = EvalConfig(budgets=shares, rounds=rounds, target_precision=target_precision, seed=seed, png=png,
                        strategies=tuple(s.strip() for s in strategies.split(",")) if strategies else None)
    report = evaluate_db(_db(db), out, config=config, model_id=model)  # EvaluationError is a ValueError
    typer.echo(f"Evaluated {report.pool['size']} problems of {report.pool['model_id']} "
               f"({report.pool['wrong']} wrong majorities); report in {out / 'report.md'} and {out / 'report.html'}.")
    if report.png_error:
        typer.secho(f"PNG charts not written: {report.png_error}", fg="yellow", err=True)


@app.command("app")
@clean_errors
def app_cmd(db: Optional[str] = DbOption,
            port: int = typer.Option(8501, "--port"),
            address: str = typer.Option("127.0.0.1", "--address",
                                        help="Interface to listen on. The default is reachable from this "
                                             "machine only; another address serves the app to the network "
                                             "(sign-in is always on; put TLS in front of it)."),
            headless: bool = typer.Option(False, "--headless", help="Do not open a browser.")):
    """Launch the Streamlit app (sign-in required). When no lead can sign in yet, this creates the
    lead account `admin` and prints its one-time password once."""
    path = Path(db or store.default_db_path()).resolve()
    first = auth.ensure_first_lead(store.open_db(path), operator=_operator())
    if first is not None:
        typer.secho(f"First run: created the lead account {first[0]!r} with the one-time password\n\n"
                    f"    {first[1]}\n\nSign in with it; the app then asks you to choose your own. "
                    "It is shown this once (`pivottrace users password admin` sets a new one).",
                    fg="green", err=True)
    if not is_loopback(address):
        typer.secho(f"Serving on {address}: everyone who can reach it gets the sign-in page. Streamlit "
                    "speaks plain HTTP; put a TLS proxy in front before passwords cross a network.",
                    fg="yellow", err=True)
    env = dict(os.environ)
    env["PIVOTTRACE_DB"] = str(path)
    entry = Path(__file__).resolve().parent.parent / "app.py"
    command = [sys.executable, "-m", "streamlit", "run", str(entry), "--server.port", str(port),
               "--server.address", address, "--browser.gatherUsageStats", "false"]
    if headless:
        command += ["--server.headless", "true"]
    # from the repository root, so Streamlit reads .streamlit/config.toml (theme, no file watcher)
    raise typer.Exit(subprocess.call(command, env=env, cwd=entry.parent))


PasswordStdin = typer.Option(False, "--password-stdin", help="Read the password from the first line of stdin.")


def _new_password(password_stdin: bool) -> str:
    return auth.read_password(stdin_text=sys.stdin.read() if password_stdin else None)


@users_app.command("add")
@clean_errors
def users_add(name: str, role: str = typer.Option("annotator", "--role", help="annotator, researcher or lead"),
              email: Optional[str] = typer.Option(None, "--email", help="The email single sign-on maps to this user."),
              password_stdin: bool = PasswordStdin,
              no_password: bool = typer.Option(False, "--no-password",
                                               help="No password: the user signs in with single sign-on only."),
              db: Optional[str] = DbOption):
    """Add a user with a password (asked for, or --password-stdin). An existing name is refused:
    change a role with `pivottrace users role`."""
    database, operator = _db(db, create=True), _operator()
    if store.user_role(database, name.strip()) is not None:  # before asking for a password
        raise store.StoreError(f"{name!r} already exists (as {store.user_role(database, name.strip())}); "
                               "change a role with `pivottrace users role`.")
    password = None if no_password else _new_password(password_stdin)
    _say_operator(operator)
    auth.create_user(database, name, role, by=operator, password=password, email=email)
    typer.echo(f"{name.strip()} is a {role}" + (f" ({email})" if email else "") + ".")


@users_app.command("role")
@clean_errors
def users_role(name: str, role: str = typer.Argument(..., help="annotator, researcher or lead"),
               db: Optional[str] = DbOption):
    """Change a user's role (the last lead cannot be demoted)."""
    operator = _operator()
    _say_operator(operator)
    store.set_role(_db(db), name, role, by=operator)
    typer.echo(f"{name} is a {role}.")


@users_app.command("password")
@clean_errors
def users_password(name: str, password_stdin: bool = PasswordStdin, db: Optional[str] = DbOption):
    """Set a user's password (asked for, or --password-stdin); their open sessions end."""
    database, operator = _db(db), _operator()
    if store.user_role(database, name) is None:
        raise store.StoreError(f"{name!r} is not a known user.")
    password = _new_password(password_stdin)
    _say_operator(operator)
    auth.set_password(database, name, password, by=operator)
    typer.echo(f"Password of {name} set.")


@users_app.command("email")
@clean_errors
def users_email(name: str, email: str = typer.Argument(..., help="The address ('' to clear it)."),
                db: Optional[str] = DbOption):
    """Set the email single sign-on maps to this user."""
    operator = _operator()
    _say_operator(operator)
    store.set_email(_db(db), name, email, by=operator)
    typer.echo(f"{name}'s email is {email or 'cleared'}.")


@users_app.command("list")
@clean_errors
def users_list(db: Optional[str] = DbOption):
    """List users, roles and emails."""
    for row in store.users(_db(db)):
        typer.echo("\t".join([row["name"], row["role"], row["email"] or "", "password" if row["has_password"] else "-"]))


@budget_app.command("set")
@clean_errors
def budget_set(total: int, cost: float = typer.Option(0.0, "--cost", help="Cost per label."),
               db: Optional[str] = DbOption):
    """Set the label budget (as the local operator; in the app, leads only). Leases beyond the
    new total are released."""
    operator = _operator()
    _say_operator(operator)
    result = store.set_budget(_db(db), user=operator, total=total, cost_per_label=cost)
    typer.echo(f"Budget set to {total} labels." +
               (f" Released {len(result['released'])} leased items." if result["released"] else ""))


@app.command("audit")
@clean_errors
def audit_cmd(limit: int = typer.Option(50, "--limit", "-n"), db: Optional[str] = DbOption):
    """Show the audit trail (budget, target, user and role changes), newest first."""
    import datetime as dt

    for row in store.audit_trail(_db(db), limit=limit):
        when = dt.datetime.fromtimestamp(row["at"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo("\t".join([when, row["actor"], row["action"], row["subject"] or "-",
                              row["before"] or "-", row["after"] or "-"]))


@budget_app.command("show")
@clean_errors
def budget_show(db: Optional[str] = DbOption):
    """Show the budget."""
    typer.echo(json.dumps(store.budget_status(_db(db))))


if __name__ == "__main__":
    app()
