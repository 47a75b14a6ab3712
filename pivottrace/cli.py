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


def clean_errors(func):
    """Turn the package's domain errors into one line on stderr and exit code 1."""
    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (store.StoreError, PoolFormatError, ModelNotFoundError, ValueError) as err:
            typer.secho(f"Error: {err}", fg="red", err=True)
            raise typer.Exit(1)
    return wrapper


def _db(path: Optional[str]):
    return store.open_db(path)


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


def _tracer(model: str, *, samples: int, max_new_tokens: int, batch_size: int, seed: int):
    from .trace import TraceConfig, Tracer  # torch loads only for commands that trace

    config = TraceConfig(n_samples=samples, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         seed=seed)
    return Tracer(model, config=config)


@app.command()
@clean_errors
def ingest(path: Path = typer.Argument(..., help="A .jsonl, .csv, .tsv or .parquet pool."),
           question_field: Optional[str] = typer.Option(None, "--question-field", help="Column with the problem text."),
           answer_field: Optional[str] = typer.Option(None, "--answer-field", help="Column with the answer/solution."),
           source: Optional[str] = typer.Option(None, "--source", help="Source name (default: file stem)."),
           db: Optional[str] = DbOption):
    """Ingest a pool of problems. Malformed rows are reported by line; good rows still load."""
    report = pipeline.ingest(_db(db), path, question_field=question_field,
                             answer_field=answer_field, source=source)
    typer.echo(f"Added {report.added} problems ({report.existing} already present).")
    for row in report.rejected:
        typer.secho(f"  line {row.line}: {row.reason}", fg="yellow", err=True)
    if report.rejected:
        typer.secho(f"Rejected {len(report.rejected)} rows.", fg="red", err=True)
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
          db: Optional[str] = DbOption):
    """Trace untraced problems: greedy chain + K samples + attention statistics. Resumable."""
    database = _db(db)
    tracer = _tracer(model, samples=samples, max_new_tokens=max_new_tokens,
                     batch_size=batch_size, seed=seed)
    try:
        run = pipeline.trace_pool(database, tracer, limit=limit, source=source)
    except KeyboardInterrupt:
        typer.secho("Interrupted: finished traces are saved; run again to resume.", fg="yellow", err=True)
        raise typer.Exit(130)
    typer.echo(f"Traced {run.traced} problems, {run.tokens} tokens in {run.seconds:.1f}s "
               f"({run.tokens_per_second:.1f} tok/s).")
    routed = pipeline.recalibrate_if_due(database, every=0)  # traces of a new checkpoint: re-route
    if routed is not None:
        typer.echo(f"New model checkpoint: router version {routed.router_version} ({routed.kind}): " +
                   route_summary(routed.counts))


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
         problems: int = typer.Option(40, "--problems", help="Demo problems to generate."),
         traced: int = typer.Option(6, "--trace", help="How many of them to trace now."),
         samples: int = typer.Option(4, "--samples", "-k"),
         max_new_tokens: int = typer.Option(256, "--max-new-tokens"),
         seed: int = typer.Option(0, "--seed"),
         db: Optional[str] = DbOption):
    """Generate demo problems, ingest them, trace a handful with the model and route them."""
    database = _db(db)
    tracer = _tracer(model, samples=samples, max_new_tokens=max_new_tokens, batch_size=8, seed=seed)
    report, run, routed = pipeline.run_demo(database, tracer, n_problems=problems, n_trace=traced, seed=seed)
    typer.echo(f"Demo: {report.added} new problems, traced {run.traced} "
               f"({run.tokens_per_second:.1f} tok/s), router version {routed.router_version}: " +
               route_summary(routed.counts))
    for line in pipeline.explain(routed):
        typer.echo(f"  {line}")


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
    database, operator = _db(db), _operator()
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
