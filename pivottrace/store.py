"""Every SQLite read and write, through sqlite-utils, in WAL mode, with numbered migrations.

Input/output: plain dicts and dataclasses from the other stages. It does not compute features,
scores, routes or analytics (analytics.py); it only keeps them, and it imports no pipeline stage
(from the package only records.py). Labels are append-only: an undo is a new row, nothing is
deleted. Writes that must not race (leases, labels) run inside `BEGIN IMMEDIATE` transactions, so
two annotators in two processes never get the same item and never lose a label.

Roles are enforced here, inside those transactions: every mutating function names who acts (a user
in `users`, or the LocalOperator at the machine's shell), and budget, target and user changes are
written to the append-only `audit` table. It stores password hashes, never passwords, and session
token hashes, never tokens: hashing and sign-in live in auth.py.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import sqlite_utils

from .records import NUMERIC_FEATURES, PIVOT_FEATURES, ROUTING_COLUMNS, FeatureTable
from .vocab import ROUTES, SKIP, UNDO, VERDICTS

DEFAULT_DB = "pivottrace.db"
ROLES = ("annotator", "researcher", "lead")
LEASE_MINUTES = 15  # default lease on a queue item; an abandoned item returns to the queue after it
LABELLER_ROLES = ("annotator", "lead")  # who may take queue items and label (researchers read traces)
MAX_NAME_CHARS = 64
LOCAL_PREFIX = "local:"  # audit name of the LocalOperator; no user name may start with it


class StoreError(Exception):
    """Base class for store errors shown to users."""


class PermissionDenied(StoreError):
    """The user's role does not allow this change."""


class LeaseError(StoreError):
    """The item is leased to another annotator, or no longer in the queue."""


class InvalidLabel(StoreError):
    """A label the store refuses: an unknown verdict, or `wrong` without the gold answer."""


class NothingToUndo(StoreError):
    """The annotator has no label left to undo."""


class BudgetSpent(StoreError):
    """The label budget has no room for this label or lease."""


@dataclass(frozen=True)
class LocalOperator:
    """Whoever runs the `pivottrace` command on the machine that holds the database file.

    Trusted like a lead: anyone who can run the CLI can also open the SQLite file and write to it,
    so a password prompt there would protect nothing. The audit trail records them as
    `local:<login>`, so their changes are still told apart from a signed-in lead's.
    """
    login: str

    @property
    def audit_name(self) -> str:
        return f"{LOCAL_PREFIX}{self.login}"


def default_db_path() -> str:
    return os.environ.get("PIVOTTRACE_DB", DEFAULT_DB)


def now() -> float:
    return time.time()


# --------------------------------------------------------------------------- schema

def _migration_1(db: sqlite_utils.Database) -> None:
    db["problems"].create({
        "id": str, "text": str, "source": str, "gold": str, "meta": str, "created_at": float,
        "verdict": str,  # current effective human verdict (denormalised from labels, for the queue)
    }, pk="id")
    db["models"].create({"id": str, "spec": str, "n_layers": int, "created_at": float}, pk="id")
    db["traces"].create({
        "problem_id": str, "model_id": str, "prompt": str, "completion": str, "answer": str,
        "n_prompt_tokens": int, "n_completion_tokens": int,
        "steps": str,  # JSON list of {text, char_start, char_end, tok_start, tok_end}
        "tokens": str,  # JSON list of completion token strings
        "arrays": bytes,  # compressed npz: entropy [L,S], segment_attention [L,S,S+1], ...
        "mean_logprob": float, "min_logprob": float, "answer_prob": float,
        "seconds": float, "created_at": float,
    }, pk=("problem_id", "model_id"))
    db["samples"].create({
        "problem_id": str, "model_id": str, "idx": int, "completion": str, "answer": str,
    }, pk=("problem_id", "model_id", "idx"))
    db["features"].create({
        "problem_id": str, "model_id": str,
        "answer_found": int, "greedy_answer": str, "majority_answer": str, "greedy_agrees": int,
        "vote_share": float, "n_distinct": int, "vote_entropy": float,
        "mean_logprob": float, "min_logprob": float, "answer_prob": float, "length": int,
        "n_steps": int, "n_pivots": int, "pivot_density": float, "max_pivot_score": float,
        "mean_entropy": float, "mean_temporal": float, "mean_consistency": float, "n_cues": int,
        "pivot_scores": str,  # JSON [S]
        "pivot_signals": str,  # JSON [S] of lists of signal names that fired
        "updated_at": float,
    }, pk=("problem_id", "model_id"))
    db["router_versions"].create({
        "id": int, "created_at": float, "kind": str, "model_id": str, "n_labels": int,
        "budget_total": int, "budget_remaining": int, "thresholds": str, "metrics": str, "note": str,
    }, pk="id")
    db["routes"].create({
        "problem_id": str, "model_id": str, "route": str, "uncertainty": float, "value": float,
        "router_version": int, "updated_at": float,
    }, pk="problem_id")
    db["route_log"].create({
        "id": int, "problem_id": str, "route": str, "uncertainty": float, "router_version": int,
        "created_at": float,
    }, pk="id")
    db["labels"].create({
        "id": int, "problem_id": str, "annotator": str, "verdict": str, "gold_answer": str,
        "shown_answer": str, "seconds": float, "created_at": float, "undoes": int,
        "router_version": int,
    }, pk="id")
    db["assignments"].create({
        "problem_id": str, "annotator": str, "leased_at": float, "expires_at": float,
    }, pk="problem_id")
    db["skips"].create({"problem_id": str, "annotator": str, "created_at": float},
                       pk=("problem_id", "annotator"))
    db["budgets"].create({
        "id": int, "total": int, "cost_per_label": float, "set_by": str, "created_at": float,
    }, pk="id")
    db["users"].create({"name": str, "role": str, "created_at": float}, pk="name")
    db["jobs"].create({
        "id": int, "kind": str, "args": str, "status": str, "done": int, "total": int,
        "message": str, "pid": int, "started_at": float, "updated_at": float,
    }, pk="id")
    db["routes"].create_index(["route", "value"])
    db["route_log"].create_index(["problem_id"])
    db["labels"].create_index(["problem_id"])
    db["labels"].create_index(["annotator", "id"])
    db["labels"].create_index(["created_at"])
    db["assignments"].create_index(["annotator"])
    db["traces"].create_index(["model_id"])
    db["features"].create_index(["model_id"])
    db["problems"].create_index(["source"])


def _migration_2(db: sqlite_utils.Database) -> None:
    """Indexes for a pool of 100k problems (bench/store_scale.py measures what each one buys)."""
    # effective_labels / undo: "not exists (select 1 from labels u where u.undoes = l.id)"
    db["labels"].create_index(["undoes"])
    # labels_spent / budget: count the few labelled problems without scanning every problem
    db.execute("create index idx_problems_labelled on problems (verdict) where verdict is not null")


def _migration_3(db: sqlite_utils.Database) -> None:
    """Covering indexes for next_item's walk down the queue: it passes the labelled items at the
    top without reading a table row (~6x less CPU with 1000 labelled items at 100k problems)."""
    db.execute("drop index if exists idx_routes_route_value")  # a prefix of the new one
    db.execute("create index idx_routes_queue on routes (route, value, problem_id)")  # replaced in 4
    db.execute("create index idx_problems_id_verdict on problems (id, verdict)")


QUEUE_INDEX = "idx_routes_annotate_queue"  # the annotate rows of routes only, best value first


def _migration_4(db: sqlite_utils.Database) -> None:
    """Pool scale (100k problems; bench/store_scale.py measures each):
    - latest_model_id asks for the newest trace: without an index it read every trace blob
      (378 ms at 100k problems, on every recalibration and every app page that checks for traces);
    - the annotate queue index covers the annotate rows only (partial), so a full re-route that
      rewrites 100k routes touches a few thousand index entries (1.0 s -> 0.25 s), not all of them;
    - feature_columns: per model, the numeric feature columns in one blob (load_feature_table),
      kept in step by triggers that drop a model's copy whenever one of its feature rows changes;
    - router_versions.counts: the route mix each version left, so the Budget page's history does
      not replay the route log (which grows by thousands of rows per recalibration at 100k).
    """
    db.execute("create index idx_traces_created_at on traces (created_at)")
    db.execute("drop index if exists idx_routes_queue")
    db.execute(f"create index {QUEUE_INDEX} on routes (value, problem_id, route) where route = 'annotate'")
    db["feature_columns"].create({
        "model_id": str, "n": int, "names": str,  # JSON [F]
        "ids": str, "majority_answers": str,  # JSON [N] each, ordered by problem id
        "numbers": bytes,  # .npy float64 [F, N], NaN where a feature is missing
        "created_at": float,
    }, pk="model_id")
    db["router_versions"].add_column("counts", str)  # JSON {route: problems} after the version's writes
    for event, models in (("insert", "new.model_id"), ("update", "old.model_id, new.model_id"),
                          ("delete", "old.model_id")):
        db.execute(f"create trigger features_{event}_stales_columns after {event} on features begin "
                   f"delete from feature_columns where model_id in ({models}); end")


def _migration_5(db: sqlite_utils.Database) -> None:
    """Token-level pivot feature columns, and step labels (process supervision, PRM800K style):
    an annotator's first wrong step of the shown chain (or "no wrong step", -1) and optional
    per-step ratings +1 / 0 / -1. Append-only like labels: an undo is a row whose `undoes` names
    the row it takes back."""
    for name in PIVOT_FEATURES:
        db["features"].add_column(name, float)
    db["step_labels"].create({
        "id": int, "problem_id": str, "model_id": str, "annotator": str,
        "first_wrong_step": int,  # 0-based step of the stored trace; -1 = every step is right; NULL on undo rows
        "ratings": str,  # JSON [S] of +1 / 0 / -1 / null, or NULL
        "n_steps": int,  # steps of the trace the label was given on (a re-trace changes them)
        "label_id": int,  # the verdict label it goes with, when there is one
        "created_at": float, "undoes": int,
    }, pk="id")
    db["step_labels"].create_index(["problem_id"])
    db["step_labels"].create_index(["annotator", "id"])


def _migration_6(db: sqlite_utils.Database) -> None:
    """Sign-in and the audit trail (issue 12):
    - users get an argon2 password hash (None: cannot sign in with a password), an email for
      single sign-on (unique, case-insensitive) and a must-change flag for one-time passwords;
    - sessions: the sha256 of each session token (the token itself is never stored), its user
      and its expiry;
    - sign_in_attempts: every password sign-in, so failed ones are rate-limited per name;
    - audit: who changed a budget, target, user or role, when, from what to what. Triggers make
      it append-only: an update or delete aborts.
    """
    db["users"].add_column("password_hash", str)
    db["users"].add_column("email", str)
    db["users"].add_column("must_change_password", int)
    db.execute("create unique index idx_users_email on users (lower(email)) where email is not null")
    db["sessions"].create({"token_hash": str, "user": str, "via": str, "created_at": float,
                           "expires_at": float, "ended_at": float}, pk="token_hash")
    db["sessions"].create_index(["user"])
    db["sign_in_attempts"].create({"id": int, "name": str, "ok": int, "created_at": float}, pk="id")
    db["sign_in_attempts"].create_index(["name", "created_at"])
    db["audit"].create({"id": int, "at": float, "actor": str, "action": str, "subject": str,
                        "before": str, "after": str}, pk="id")
    for event in ("update", "delete"):
        db.execute(f"create trigger audit_no_{event} before {event} on audit begin "
                   "select raise(abort, 'the audit trail is append-only'); end")


MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6]  # index i upgrades user_version i -> i+1; append, never edit


def open_db(path: str | Path | None = None) -> sqlite_utils.Database:
    """Open (and create or migrate) the database. Safe to call from many processes at once."""
    path = str(path or default_db_path())
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.create_function("fold", 1, _fold, deterministic=True)
    db = sqlite_utils.Database(conn)
    if path != ":memory:":
        db.enable_wal()
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    with immediate(db):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for index in range(version, len(MIGRATIONS)):
            MIGRATIONS[index](db)
            conn.execute(f"PRAGMA user_version = {index + 1}")
    return db


@contextmanager
def immediate(db: sqlite_utils.Database):
    """A write transaction that takes the write lock up front (no lost updates between processes)."""
    conn = db.conn
    if conn.in_transaction:  # nested: the outer transaction already holds the lock
        yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def db_file(db: sqlite_utils.Database) -> str:
    """The file behind an open database ("" for an in-memory one)."""
    for _, name, path in db.execute("PRAGMA database_list"):
        if name == "main":
            return path or ""
    return ""


def problem_count(db: sqlite_utils.Database) -> int:
    return db["problems"].count


def gold_answers(db: sqlite_utils.Database) -> dict[str, str]:
    """problem id -> hidden gold answer, for every problem that has one (the evaluation's oracle
    reads them; the app's views never do)."""
    return {r["id"]: r["gold"] for r in db.query("select id, gold from problems where gold is not null")}


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


# --------------------------------------------------------------------------- arrays

def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Per-step arrays -> compressed npz bytes (float32)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    return buffer.getvalue()


def decode_arrays(blob: bytes | None) -> dict[str, np.ndarray]:
    if not blob:
        return {}
    with np.load(io.BytesIO(blob)) as data:
        return {k: data[k] for k in data.files}


# --------------------------------------------------------------------------- problems

def insert_problems(db: sqlite_utils.Database, problems) -> tuple[int, int]:
    """Insert Problem rows; returns (added, already present). Ids are content hashes."""
    rows = [{
        "id": p.id, "text": p.text, "source": p.source, "gold": p.gold,
        "meta": json.dumps(p.meta or {}), "created_at": now(), "verdict": None,
    } for p in problems]
    with immediate(db):
        before = db["problems"].count
        db["problems"].insert_all(rows, ignore=True, batch_size=1000)
        added = db["problems"].count - before
    return added, len(rows) - added


def get_problem(db: sqlite_utils.Database, problem_id: str) -> dict | None:
    rows = list(db.query("select * from problems where id = ?", [problem_id]))
    return rows[0] if rows else None


def pending_problems(db: sqlite_utils.Database, model_id: str, *, limit: int | None = None,
                     source: str | None = None) -> list[dict]:
    """Problems with no trace for this model yet, oldest first (what a resumed run still has to do)."""
    sql = ("select p.id, p.text from problems p where not exists (select 1 from traces t "
           "where t.problem_id = p.id and t.model_id = ?)")
    params: list = [model_id]
    if source:
        sql += " and p.source = ?"
        params.append(source)
    sql += " order by p.created_at, p.rowid"
    if limit is not None:
        sql += " limit ?"
        params.append(int(limit))
    return list(db.query(sql, params))


# --------------------------------------------------------------------------- models and traces

def upsert_model(db: sqlite_utils.Database, model_id: str, *, spec: str, n_layers: int) -> None:
    with immediate(db):
        db["models"].upsert({"id": model_id, "spec": spec, "n_layers": n_layers,
                             "created_at": now()}, pk="id")


def save_trace(db: sqlite_utils.Database, problem_id: str, model_id: str, result) -> None:
    """Write one ProblemTrace (trace + samples) in its own transaction: all of it or nothing."""
    trace = result.trace
    row = {
        "problem_id": problem_id, "model_id": model_id, "prompt": trace.prompt,
        "completion": trace.completion, "answer": trace.answer,
        "n_prompt_tokens": trace.n_prompt_tokens, "n_completion_tokens": trace.n_completion_tokens,
        "steps": json.dumps(trace.steps), "tokens": json.dumps(trace.tokens),
        "arrays": encode_arrays(trace.arrays), "mean_logprob": trace.mean_logprob,
        "min_logprob": trace.min_logprob, "answer_prob": trace.answer_prob,
        "seconds": result.seconds, "created_at": now(),
    }
    samples = [{"problem_id": problem_id, "model_id": model_id, "idx": i, "completion": text,
                "answer": answer}
               for i, (text, answer) in enumerate(zip(result.samples, result.sample_answers))]
    with immediate(db):
        db["traces"].insert(row, replace=True)
        db["samples"].insert_all(samples, replace=True)


def load_trace(db: sqlite_utils.Database, problem_id: str, model_id: str | None = None) -> dict | None:
    """One trace with `steps`, `tokens` and `arrays` decoded; the newest model's when none named."""
    sql, params = "select * from traces where problem_id = ?", [problem_id]
    if model_id:
        sql += " and model_id = ?"
        params.append(model_id)
    rows = list(db.query(sql + " order by created_at desc limit 1", params))
    if not rows:
        return None
    row = rows[0]
    row["steps"] = json.loads(row["steps"] or "[]")
    row["tokens"] = json.loads(row["tokens"] or "[]")
    row["arrays"] = decode_arrays(row["arrays"])
    return row


def iter_trace_arrays(db: sqlite_utils.Database, model_id: str | None = None):
    """Yield (problem_id, model_id, row) for every trace, arrays decoded; for pool-level scoring."""
    sql = "select problem_id, model_id, completion, answer, steps, tokens, arrays, n_completion_tokens, " \
          "mean_logprob, min_logprob, answer_prob from traces"
    params = []
    if model_id:
        sql += " where model_id = ?"
        params.append(model_id)
    for row in db.query(sql, params):
        row["steps"] = json.loads(row["steps"] or "[]")
        row["tokens"] = json.loads(row["tokens"] or "[]")
        row["arrays"] = decode_arrays(row["arrays"])
        yield row


def sample_answers(db: sqlite_utils.Database, problem_id: str, model_id: str) -> list[str | None]:
    return [r["answer"] for r in db.query(
        "select answer from samples where problem_id = ? and model_id = ? order by idx",
        [problem_id, model_id])]


def all_sample_answers(db: sqlite_utils.Database, model_id: str | None = None, *,
                       column: str = "answer") -> dict:
    """{(problem_id, model_id): [answers in sample order]}; `column="completion"` gives the texts."""
    if column not in ("answer", "completion"):
        raise ValueError(f"column must be answer or completion, got {column!r}")
    sql, params = f"select problem_id, model_id, {column} from samples", []
    if model_id:
        sql += " where model_id = ?"
        params.append(model_id)
    out: dict = {}
    for r in db.query(sql + " order by problem_id, model_id, idx", params):
        out.setdefault((r["problem_id"], r["model_id"]), []).append(r[column])
    return out


def reextract_answers(db: sqlite_utils.Database, extract, model_id: str | None = None) -> int:
    """Re-read every stored trace's and sample's answer from its completion text with `extract`
    (answers.extract_answer, passed in: the store imports no pipeline stage); write the ones that
    changed, e.g. after a fix to the extraction. Returns how many answers changed."""
    where, params = (" where model_id = ?", [model_id]) if model_id else ("", [])
    changed = 0
    with immediate(db):
        for table in ("traces", "samples"):
            updates = [(new, rowid) for rowid, completion, old in
                       db.execute(f"select rowid, completion, answer from {table}{where}", params).fetchall()
                       if (new := extract(completion)) != old]
            db.conn.executemany(f"update {table} set answer = ? where rowid = ?", updates)
            changed += len(updates)
    return changed


def latest_model_id(db: sqlite_utils.Database) -> str | None:
    row = db.execute("select model_id from traces order by created_at desc limit 1").fetchone()
    return row[0] if row else None


# --------------------------------------------------------------------------- features and routes

def save_features(db: sqlite_utils.Database, rows: list[dict]) -> None:
    """Upsert feature rows, and rebuild the column copy of each model they touch (same transaction)."""
    stamp = now()
    for row in rows:
        row["updated_at"] = stamp
    with immediate(db):
        db["features"].upsert_all(rows, pk=("problem_id", "model_id"), batch_size=1000)
        for model_id in sorted({row["model_id"] for row in rows}):
            _save_feature_columns(db, _scan_feature_table(db, model_id))


PER_STEP_FEATURES = ("pivot_scores", "pivot_signals")  # JSON per-step columns; views read them


def load_features(db: sqlite_utils.Database, model_id: str | None = None, *,
                  per_step: bool = False) -> list[dict]:
    """Feature rows ordered by problem id; without the per-step JSON columns unless `per_step`
    (routing needs only the per-problem numbers; at 100k rows the JSON costs ~15% more CPU)."""
    columns = [c.name for c in db["features"].columns if per_step or c.name not in PER_STEP_FEATURES]
    sql, params = f"select {', '.join(columns)} from features", []
    if model_id:
        sql += " where model_id = ?"
        params.append(model_id)
    return list(db.query(sql + " order by problem_id, model_id", params))


FEATURE_TABLE_COLUMNS = NUMERIC_FEATURES + tuple(c for c in ROUTING_COLUMNS + PIVOT_FEATURES
                                                  if c not in NUMERIC_FEATURES)


def load_feature_table(db: sqlite_utils.Database, model_id: str | None = None) -> FeatureTable:
    """One model's feature rows as a FeatureTable ordered by problem id: what the estimators and
    the router read. Served from the model's column copy (feature_columns, ~30 ms at 100k rows);
    when there is none (features written outside save_features), built from the rows (~0.5 s)
    and saved for next time. Without `model_id`, every model's rows, built from the rows."""
    if not model_id:
        return _scan_feature_table(db, None)
    row = db.execute("select names, ids, majority_answers, numbers from feature_columns "
                     "where model_id = ?", [model_id]).fetchone()
    if row is not None:
        names = json.loads(row[0])
        ids = json.loads(row[1])
        numbers = np.load(io.BytesIO(row[3]), allow_pickle=False)  # [F, N]
        return FeatureTable(ids, {name: numbers[j] for j, name in enumerate(names)},
                            model_ids=[model_id] * len(ids), majority_answers=json.loads(row[2]))
    with immediate(db):  # scanned under the write lock, so the copy saved is of these very rows
        table = _scan_feature_table(db, model_id)
        _save_feature_columns(db, table)
    return table


def _scan_feature_table(db: sqlite_utils.Database, model_id: str | None) -> FeatureTable:
    """load_feature_table from the feature rows: one scan into tuples, then numpy columns."""
    names = FEATURE_TABLE_COLUMNS
    sql, params = f"select problem_id, model_id, majority_answer, {', '.join(names)} from features", []
    if model_id:
        sql += " where +model_id = ?"  # a scan: reading the rows through the model_id index seeks each one
        params.append(model_id)
    rows = db.execute(sql, params).fetchall()
    rows.sort(key=lambda row: (row[0], row[1]))  # cheaper here than SQLite's temporary b-tree
    if not rows:
        return FeatureTable([], {name: np.zeros(0) for name in names}, model_ids=[], majority_answers=[])
    columns = list(zip(*rows))
    numbers = np.array(columns[3:], dtype=np.float64)  # [F, N], None -> NaN
    return FeatureTable(list(columns[0]), {name: numbers[j] for j, name in enumerate(names)},
                        model_ids=list(columns[1]), majority_answers=list(columns[2]))


def _save_feature_columns(db: sqlite_utils.Database, table: FeatureTable) -> None:
    """Write one model's column copy (call inside a write transaction, after its rows)."""
    if not len(table):
        return
    names = list(table.columns)
    buffer = io.BytesIO()
    np.save(buffer, np.stack([table.columns[name] for name in names]), allow_pickle=False)  # [F, N]
    db.execute("insert or replace into feature_columns (model_id, n, names, ids, majority_answers, "
               "numbers, created_at) values (?, ?, ?, ?, ?, ?, ?)",
               [table.model_ids[0], len(table), json.dumps(names), json.dumps(table.ids),
                json.dumps(table.majority_answers), buffer.getvalue(), now()])


def new_router_version(db: sqlite_utils.Database, *, kind: str, model_id: str | None,
                       n_labels: int, thresholds: dict, metrics: dict, note: str = "") -> int:
    budget = budget_status(db)
    with immediate(db):
        table = db["router_versions"].insert({
            "created_at": now(), "kind": kind, "model_id": model_id, "n_labels": n_labels,
            "budget_total": budget["total"], "budget_remaining": budget["remaining"],
            "thresholds": json.dumps(thresholds), "metrics": json.dumps(metrics), "note": note,
        })
        return table.last_pk


def record_route_counts(db: sqlite_utils.Database, router_version: int) -> dict[str, int]:
    """Store the current route mix on a router version (after its routes are written)."""
    counts = route_counts(db)
    db.execute("update router_versions set counts = ? where id = ?", [json.dumps(counts), router_version])
    return counts


def router_versions(db: sqlite_utils.Database) -> list[dict]:
    """Every router version, oldest first, thresholds and metrics decoded."""
    return [_decoded_version(row) for row in db.query("select * from router_versions order by id")]


def latest_router_version(db: sqlite_utils.Database, *, model_id: str | None = None) -> dict | None:
    """The newest router version (of `model_id`'s traces, when given), decoded; None if none.
    A label's recalibration check reads this one row, not every version."""
    sql, params = "select * from router_versions", []
    if model_id is not None:
        sql += " where model_id = ?"
        params.append(model_id)
    rows = list(db.query(sql + " order by id desc limit 1", params))
    return _decoded_version(rows[0]) if rows else None


def _decoded_version(row: dict) -> dict:
    row["thresholds"] = json.loads(row["thresholds"] or "{}")
    row["metrics"] = json.loads(row["metrics"] or "{}")
    row["counts"] = json.loads(row["counts"]) if row.get("counts") else None  # None before migration 4
    return row


def save_routes(db: sqlite_utils.Database, decisions: list[dict], router_version: int) -> int:
    """Upsert the current route of each problem; log the ones that changed. Returns #changed.

    Each decision: {problem_id, model_id, route, uncertainty, value}.
    """
    return save_route_columns(
        db, [d["problem_id"] for d in decisions], [d["model_id"] for d in decisions],
        [d["route"] for d in decisions], [d["uncertainty"] for d in decisions],
        [d["value"] for d in decisions], router_version)


ROUTE_REFRESH_CHUNK = 5000  # rows per transaction when refreshing the uncertainty and value of rows whose
# route did not change: an annotator's submit waits for the write lock at most one chunk (~tens of ms)


def save_route_columns(db: sqlite_utils.Database, problem_ids: list, model_ids: list, routes: list,
                       uncertainty, value, router_version: int) -> int:
    """save_routes for decisions given as columns ([N] each), as route.Routing holds them.

    One transaction writes every route that changed (with its log row) and every `annotate` row
    (the queue's order): the routing itself is atomic. The uncertainty and value of the other
    rows are then refreshed in ROUTE_REFRESH_CHUNK-row transactions, so a large pool does not hold
    the write lock for the length of the whole write. Returns the number of routes changed.
    """
    routes = [str(r) for r in routes]
    unknown = set(routes) - set(ROUTES)
    if unknown:
        raise ValueError(f"unknown route {sorted(unknown)[0]!r}")
    n = len(problem_ids)
    if not (len(model_ids) == len(routes) == len(uncertainty) == len(value) == n):
        raise ValueError("save_route_columns needs columns of one length.")
    uncertainty = np.asarray(uncertainty, dtype=np.float64).tolist()
    value = np.asarray(value, dtype=np.float64).tolist()
    stamp = now()
    upsert = ("insert into routes (problem_id, model_id, route, uncertainty, value, router_version, "
              "updated_at) values (?, ?, ?, ?, ?, ?, ?) on conflict (problem_id) do update set "
              "model_id = excluded.model_id, route = excluded.route, uncertainty = excluded.uncertainty, "
              "value = excluded.value, router_version = excluded.router_version, "
              "updated_at = excluded.updated_at")

    def rows(indexes):
        return [(problem_ids[i], model_ids[i], routes[i], uncertainty[i], value[i], router_version, stamp)
                for i in indexes]

    with immediate(db):
        current = dict(db.execute("select problem_id, route from routes").fetchall())
        before = np.array(list(map(current.get, problem_ids)), dtype=object)  # [N] None where new
        after = np.array(routes, dtype=object)  # [N]
        changed = np.flatnonzero(before != after).tolist()
        first = np.flatnonzero((before != after) | (after == "annotate")).tolist()
        log = [(problem_ids[i], routes[i], uncertainty[i], router_version, stamp) for i in changed]
        db.conn.executemany(upsert, rows(first))
        db.conn.executemany("insert into route_log (problem_id, route, uncertainty, router_version, "
                            "created_at) values (?, ?, ?, ?, ?)", log)
    rest = np.flatnonzero((before == after) & (after != "annotate")).tolist()
    for offset in range(0, len(rest), ROUTE_REFRESH_CHUNK):
        chunk = rest[offset:offset + ROUTE_REFRESH_CHUNK]
        with immediate(db):
            db.conn.executemany("update routes set uncertainty = ?, value = ?, router_version = ?, "
                                "updated_at = ? where problem_id = ? and route = ?",
                                [(uncertainty[i], value[i], router_version, stamp, problem_ids[i], routes[i])
                                 for i in chunk])
    return len(log)


def current_routes(db: sqlite_utils.Database) -> dict[str, str]:
    """{problem_id: route} of the routes in force."""
    return dict(db.execute("select problem_id, route from routes").fetchall())


def route_counts(db: sqlite_utils.Database) -> dict[str, int]:
    counts = {route: 0 for route in ROUTES}
    for route, n in db.execute("select route, count(*) from routes group by route"):
        counts[route] = n
    return counts


# --------------------------------------------------------------------------- users and budget

def _validate_name(name) -> str:
    name = (name or "").strip()
    if not name:
        raise StoreError("A user needs a name.")
    if len(name) > MAX_NAME_CHARS or any(not ch.isprintable() for ch in name):
        raise StoreError(f"A name is at most {MAX_NAME_CHARS} printable characters.")
    if name.lower().startswith(LOCAL_PREFIX):
        raise StoreError(f"A name may not start with {LOCAL_PREFIX!r} (the audit trail's mark of the local operator).")
    return name


def _validate_role(role) -> str:
    if role not in ROLES:
        raise StoreError(f"Unknown role {role!r}; choose one of {', '.join(ROLES)}.")
    return role


def _validate_email(email) -> str | None:
    email = (email or "").strip()
    if not email:
        return None
    if "@" not in email or any(ch.isspace() for ch in email):
        raise StoreError(f"{email!r} is not an email address.")
    return email


def _actor(db, by, role: str | None = None) -> str:
    """The audit name of `by` (a user name or a LocalOperator), checked inside the caller's
    transaction: a name must be a known user, with `role` when one is asked for."""
    if isinstance(by, LocalOperator):
        return by.audit_name
    if not isinstance(by, str) or not by:
        raise PermissionDenied("Sign in first.")
    actual = user_role(db, by)
    if actual is None:
        raise PermissionDenied(f"{by!r} is not a known user.")
    if role is not None and actual != role:
        raise PermissionDenied(f"Only a {role} can do this; {by!r} is a{'n' if actual[0] in 'aeiou' else ''} {actual}.")
    return by


def _audit(db, *, actor: str, action: str, subject: str | None, before, after) -> None:
    """Append one audit row (call inside the change's own transaction)."""
    db.execute("insert into audit (at, actor, action, subject, before, after) values (?, ?, ?, ?, ?, ?)",
               [now(), actor, action, subject, None if before is None else str(before),
                None if after is None else str(after)])


def _leads(db) -> int:
    return db.execute("select count(*) from users where role = 'lead'").fetchone()[0]


def add_user(db: sqlite_utils.Database, name: str, role: str, *, by, password_hash: str | None = None,
             email: str | None = None, must_change_password: bool = False) -> None:
    """Add a user. Only a lead (or the local operator) may. An existing name is refused, never
    changed: a role changes only through set_role, which says so in the audit trail."""
    name, role, email = _validate_name(name), _validate_role(role), _validate_email(email)
    with immediate(db):
        actor = _actor(db, by, "lead")
        if user_role(db, name) is not None:
            raise StoreError(f"{name!r} already exists (as {user_role(db, name)}); change a role with set_role.")
        if email and user_by_email(db, email):
            raise StoreError(f"{email!r} already belongs to {user_by_email(db, email)['name']!r}.")
        db.execute("insert into users (name, role, created_at, password_hash, email, must_change_password) "
                   "values (?, ?, ?, ?, ?, ?)", [name, role, now(), password_hash, email, int(must_change_password)])
        _audit(db, actor=actor, action="user added", subject=name, before=None, after=role)
        if email:
            _audit(db, actor=actor, action="email", subject=name, before=None, after=email)


def set_role(db: sqlite_utils.Database, name: str, role: str, *, by) -> None:
    """Change a user's role (a lead or the local operator). The last lead cannot be demoted."""
    role = _validate_role(role)
    with immediate(db):
        actor = _actor(db, by, "lead")
        before = user_role(db, name)
        if before is None:
            raise StoreError(f"{name!r} is not a known user.")
        if before == role:
            return
        if before == "lead" and _leads(db) == 1:
            raise PermissionDenied(f"{name!r} is the last lead; make someone else a lead first.")
        db.execute("update users set role = ? where name = ?", [role, name])
        _audit(db, actor=actor, action="role", subject=name, before=before, after=role)


def set_email(db: sqlite_utils.Database, name: str, email: str | None, *, by) -> None:
    """Set (or clear) the email single sign-on maps to this user (a lead or the local operator)."""
    email = _validate_email(email)
    with immediate(db):
        actor = _actor(db, by, "lead")
        row = user_record(db, name)
        if row is None:
            raise StoreError(f"{name!r} is not a known user.")
        owner = user_by_email(db, email) if email else None
        if owner and owner["name"] != name:
            raise StoreError(f"{email!r} already belongs to {owner['name']!r}.")
        db.execute("update users set email = ? where name = ?", [email, name])
        _audit(db, actor=actor, action="email", subject=name, before=row["email"], after=email)


def set_password_hash(db: sqlite_utils.Database, name: str, password_hash: str, *, by,
                      must_change_password: bool = False) -> None:
    """Store a new password hash: the user themselves, a lead, or the local operator may. Every
    session of the user ends (a stolen session does not outlive a password change)."""
    with immediate(db):
        if by != name:
            actor = _actor(db, by, "lead")
        else:
            actor = _actor(db, by)
        if user_role(db, name) is None:
            raise StoreError(f"{name!r} is not a known user.")
        db.execute("update users set password_hash = ?, must_change_password = ? where name = ?",
                   [password_hash, int(must_change_password), name])
        db.execute("update sessions set ended_at = ? where user = ? and ended_at is null", [now(), name])
        _audit(db, actor=actor, action="password", subject=name, before=None,
               after="one-time password set" if must_change_password else "changed")


def rehash_password(db: sqlite_utils.Database, name: str, password_hash: str) -> None:
    """Replace a hash with a stronger one of the same password (auth.py, after a good sign-in)."""
    with immediate(db):
        db.execute("update users set password_hash = ? where name = ?", [password_hash, name])


def user_role(db: sqlite_utils.Database, name: str) -> str | None:
    row = db.execute("select role from users where name = ?", [name]).fetchone()
    return row[0] if row else None


def user_record(db: sqlite_utils.Database, name: str) -> dict | None:
    """{name, role, email, password_hash, must_change_password} or None."""
    rows = list(db.query("select name, role, email, password_hash, must_change_password from users "
                         "where name = ?", [name]))
    return rows[0] if rows else None


def user_by_email(db: sqlite_utils.Database, email: str) -> dict | None:
    """The user whose email matches, case-insensitively (what single sign-on maps to), or None."""
    rows = list(db.query("select name, role, email from users where lower(email) = lower(?)", [email]))
    return rows[0] if rows else None


def leads_with_password(db: sqlite_utils.Database) -> list[str]:
    return [r[0] for r in db.execute(
        "select name from users where role = 'lead' and password_hash is not null order by name")]


def require_role(db: sqlite_utils.Database, user, role: str) -> None:
    """Raise PermissionDenied unless `user` (a name or the LocalOperator) may act as `role`."""
    _actor(db, user, role)


# --------------------------------------------------------------------------- sign-in records and sessions

def record_sign_in(db: sqlite_utils.Database, name: str, *, ok: bool, at: float | None = None) -> None:
    with immediate(db):
        db.execute("insert into sign_in_attempts (name, ok, created_at) values (?, ?, ?)",
                   [name, int(ok), now() if at is None else at])


def failed_sign_ins(db: sqlite_utils.Database, name: str, *, since: float) -> list[float]:
    """Times of the failed sign-ins for `name` after `since` and after its last good one, oldest first."""
    return [r[0] for r in db.execute(
        "select created_at from sign_in_attempts where name = ? and ok = 0 and created_at > ? "
        "and created_at > coalesce((select max(created_at) from sign_in_attempts "
        "where name = ? and ok = 1), 0) order by created_at", [name, since, name])]


def create_session(db: sqlite_utils.Database, *, token_hash: str, user: str, via: str,
                   expires_at: float) -> None:
    with immediate(db):
        if user_role(db, user) is None:
            raise PermissionDenied(f"{user!r} is not a known user.")
        db.execute("insert into sessions (token_hash, user, via, created_at, expires_at, ended_at) "
                   "values (?, ?, ?, ?, ?, null)", [token_hash, user, via, now(), expires_at])


def session_record(db: sqlite_utils.Database, token_hash: str) -> dict | None:
    """The session with the user's current role and password flag: {user, role, via, created_at,
    expires_at, ended_at, must_change_password}; None when unknown or its user was removed."""
    rows = list(db.query(
        "select s.user, u.role, s.via, s.created_at, s.expires_at, s.ended_at, u.must_change_password "
        "from sessions s join users u on u.name = s.user where s.token_hash = ?", [token_hash]))
    return rows[0] if rows else None


def end_session(db: sqlite_utils.Database, token_hash: str) -> None:
    with immediate(db):
        db.execute("update sessions set ended_at = ? where token_hash = ? and ended_at is null",
                   [now(), token_hash])


def audit_trail(db: sqlite_utils.Database, *, limit: int | None = 200) -> list[dict]:
    """The audit rows, newest first: {at, actor, action, subject, before, after}."""
    return list(db.query("select at, actor, action, subject, before, after from audit order by id desc limit ?",
                         [-1 if limit is None else int(limit)]))


# --------------------------------------------------------------------------- budget and target

def set_budget(db: sqlite_utils.Database, *, user, total: int, cost_per_label: float = 0.0) -> dict:
    """Set the label budget. Only a lead (or the local operator) may.

    Atomic with the leases: when the new total leaves room for fewer labels than items are leased,
    the newest leases are released in the same transaction, so every lease still held can be
    labelled and the labels spent never pass the total. A total below the labels already spent is
    refused. Returns {released: [problem ids whose lease was released]}.
    """
    if int(total) < 0 or float(cost_per_label) < 0:
        raise StoreError("Budget and cost per label must not be negative.")
    stamp = now()
    with immediate(db):
        actor = _actor(db, user, "lead")
        spent = labels_spent(db)
        if int(total) < spent:
            raise StoreError(f"{spent} labels are spent already; the budget cannot be set below that.")
        before = db.execute("select total, cost_per_label from budgets order by id desc limit 1").fetchone()
        leases = _active_leases(db, stamp)  # oldest first: whoever started first keeps their item
        released = leases[int(total) - spent:]
        for problem_id, annotator in released:
            db.execute("delete from assignments where problem_id = ? and annotator = ?", [problem_id, annotator])
        db["budgets"].insert({"total": int(total), "cost_per_label": float(cost_per_label),
                              "set_by": actor, "created_at": stamp})
        _audit(db, actor=actor, action="budget", subject=None,
               before=None if before is None else _budget_text(*before), after=_budget_text(total, cost_per_label))
    return {"released": [problem_id for problem_id, _ in released]}


def _budget_text(total, cost) -> str:
    return f"{int(total)} labels" + (f" at {float(cost):g} per label" if cost else "")


def record_target_precision(db: sqlite_utils.Database, *, user, before: float, after: float) -> None:
    """Check that `user` is a lead and write the target change to the audit trail (the router
    version the re-route writes holds the target itself)."""
    with immediate(db):
        actor = _actor(db, user, "lead")
        _audit(db, actor=actor, action="target precision", subject=None, before=f"{before:.2f}", after=f"{after:.2f}")


def _active_leases(db, stamp: float) -> list[tuple[str, str]]:
    """(problem_id, annotator) of unexpired leases on unlabelled problems, oldest first."""
    return db.execute(
        "select a.problem_id, a.annotator from assignments a join problems p on p.id = a.problem_id "
        "where a.expires_at > ? and p.verdict is null order by a.leased_at, a.rowid", [stamp]).fetchall()


def _budget_room(db, stamp: float) -> int | None:
    """Labels the budget still allows beyond those spent and those leased; None without a budget."""
    row = db.execute("select total from budgets order by id desc limit 1").fetchone()
    if row is None:
        return None
    return row[0] - labels_spent(db) - len(_active_leases(db, stamp))


def labels_spent(db: sqlite_utils.Database) -> int:
    return db.execute("select count(*) from problems where verdict is not null").fetchone()[0]


def budget_status(db: sqlite_utils.Database) -> dict:
    """{total, cost_per_label, spent, remaining}; total None when no budget was ever set."""
    row = db.execute("select total, cost_per_label from budgets order by id desc limit 1").fetchone()
    spent = labels_spent(db)
    total, cost = (row[0], row[1]) if row else (None, 0.0)
    remaining = None if total is None else max(total - spent, 0)
    return {"total": total, "cost_per_label": cost, "spent": spent, "remaining": remaining}


# --------------------------------------------------------------------------- queue and labels

def _labeller(db, annotator) -> str:
    """Check (inside the caller's transaction) that `annotator` is a user who may label."""
    role = user_role(db, annotator) if isinstance(annotator, str) else None
    if role is None:
        raise PermissionDenied(f"{annotator!r} is not a known user; a lead adds annotators.")
    if role not in LABELLER_ROLES:
        raise PermissionDenied(f"{annotator!r} is a {role}; only {' and '.join(r + 's' for r in LABELLER_ROLES)} label.")
    return annotator


def _holds_lease(db, problem_id: str, annotator: str, stamp: float) -> bool:
    return db.execute("select 1 from assignments where problem_id = ? and annotator = ? and expires_at > ?",
                      [problem_id, annotator, stamp]).fetchone() is not None


def next_item(db: sqlite_utils.Database, annotator: str, *,
              lease_minutes: float = LEASE_MINUTES) -> dict | None:
    """Lease the highest-value unlabelled `annotate` item to `annotator` (or renew theirs).

    Atomic across processes: the lease is taken inside BEGIN IMMEDIATE, so two annotators
    never hold the same item. Items this annotator skipped come last. A new lease is taken only
    while the budget has room beyond the labels spent and the items leased (None otherwise), so
    every lease held can be labelled. Only known users with a labelling role get items.
    """
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        held = db.execute(
            "select a.problem_id from assignments a join problems p on p.id = a.problem_id "
            "join routes r on r.problem_id = a.problem_id "
            "where a.annotator = ? and a.expires_at > ? and p.verdict is null and r.route = 'annotate' "
            "order by a.leased_at desc limit 1",  # newest first: an undone item comes straight back
            [annotator, stamp]).fetchone()
        if held:
            problem_id = held[0]
        else:  # a lease on an item re-routed away from annotate no longer holds budget
            db.execute("delete from assignments where annotator = ? and problem_id in (select problem_id "
                       "from routes where route != 'annotate')", [annotator])
            room = _budget_room(db, stamp)
            if room is not None and room <= 0:
                return None
            problem_id = (_top_open_item(db, annotator, stamp, skipped=False)
                          or _top_open_item(db, annotator, stamp, skipped=True))
            if problem_id is None:
                return None
        db.execute("insert or replace into assignments (problem_id, annotator, leased_at, expires_at) "
                   "values (?, ?, ?, ?)", [problem_id, annotator, stamp, stamp + 60 * lease_minutes])
    return queue_item(db, problem_id)


def lease_item(db: sqlite_utils.Database, problem_id: str, annotator: str, *,
               lease_minutes: float = LEASE_MINUTES) -> dict:
    """Lease one named item to `annotator` (or renew theirs), under next_item's rules: it must be
    routed to `annotate`, unlabelled, held by nobody else, and within the budget's room."""
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        route = db.execute("select route from routes where problem_id = ?", [problem_id]).fetchone()
        if route is None or route[0] != "annotate":
            raise LeaseError("This problem is not in the annotation queue.")
        if db.execute("select verdict from problems where id = ?", [problem_id]).fetchone()[0] is not None:
            raise LeaseError("This problem already has a label; undo it first to change it.")
        holder = _lease_holder(db, problem_id, stamp)
        if holder not in (None, annotator):
            raise LeaseError(f"{holder} is labelling this problem right now.")
        room = _budget_room(db, stamp)
        if holder is None and room is not None and room <= 0:
            raise BudgetSpent("The label budget has no room for another item.")
        db.execute("insert or replace into assignments (problem_id, annotator, leased_at, expires_at) "
                   "values (?, ?, ?, ?)", [problem_id, annotator, stamp, stamp + 60 * lease_minutes])
    return queue_item(db, problem_id)


def _top_open_item_sql(*, skipped: bool) -> str:
    """The query behind _top_open_item; params: (now, annotator, annotator)."""
    skip_test = "exists" if skipped else "not exists"
    return ("select r.problem_id from routes r cross join problems p on p.id = r.problem_id "
            "where r.route = 'annotate' and p.verdict is null "
            "and not exists (select 1 from assignments a where a.problem_id = r.problem_id "
            "and a.expires_at > ? and a.annotator != ?) "
            f"and {skip_test} (select 1 from skips s where s.problem_id = r.problem_id and s.annotator = ?) "
            "order by r.value desc limit 1")


def _top_open_item(db, annotator: str, stamp: float, *, skipped: bool) -> str | None:
    """The highest-value unlabelled annotate item nobody else holds, among those this annotator
    skipped (`skipped=True`) or not. It walks the queue index (QUEUE_INDEX, covering) from the
    top and stops at the first open item: no sort of the whole queue, and the labelled items
    it passes cost one index probe each (CROSS JOIN keeps routes the outer loop).
    """
    row = db.execute(_top_open_item_sql(skipped=skipped), [stamp, annotator, annotator]).fetchone()
    return row[0] if row else None


def queue_item(db: sqlite_utils.Database, problem_id: str) -> dict:
    """Everything the annotate page shows for one item (gold answers are never included)."""
    problem = get_problem(db, problem_id)
    route = db.execute("select route, uncertainty, value, model_id, router_version from routes "
                       "where problem_id = ?", [problem_id]).fetchone()
    model_id = route[3] if route else None
    features = list(db.query("select * from features where problem_id = ? and model_id = ?",
                             [problem_id, model_id]))
    return {
        "problem_id": problem_id, "text": problem["text"], "source": problem["source"],
        "route": route[0] if route else None, "uncertainty": route[1] if route else None,
        "value": route[2] if route else None, "model_id": model_id,
        "router_version": route[4] if route else None,
        "features": features[0] if features else None,
        "sample_answers": sample_answers(db, problem_id, model_id) if model_id else [],
    }


def _lease_holder(db, problem_id: str, stamp: float) -> str | None:
    row = db.execute("select annotator from assignments where problem_id = ? and expires_at > ?",
                     [problem_id, stamp]).fetchone()
    return row[0] if row else None


def save_label(db: sqlite_utils.Database, *, problem_id: str, annotator: str, verdict: str,
               gold_answer: str | None = None, shown_answer: str | None = None,
               seconds: float | None = None) -> int:
    """Append a label by `annotator` (the signed-in user) on an item they hold a lease on.

    `verdict`: correct (the majority answer is right), wrong (with `gold_answer`), flawed, skip.
    Refused: an unknown user or one who may not label, no lease of theirs on the item (another
    annotator holds it, it expired, or a budget cut released it), an item already labelled, and a
    verdict the budget has no room for. A skip ends the lease and spends nothing.
    """
    if verdict not in VERDICTS + (SKIP,):
        raise InvalidLabel(f"Unknown verdict {verdict!r}.")
    if verdict == "wrong" and not gold_answer:
        raise InvalidLabel("A 'wrong' label needs the gold answer.")
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        current = db.execute("select verdict from problems where id = ?", [problem_id]).fetchone()
        if current is None:
            raise LeaseError("No such problem.")
        if not _holds_lease(db, problem_id, annotator, stamp):
            holder = _lease_holder(db, problem_id, stamp)
            if holder is not None:
                raise LeaseError(f"{holder} is labelling this problem right now.")
            raise LeaseError("You hold no lease on this problem (it expired, or a budget change released it); "
                             "take the next item from the queue.")
        if current[0] is not None and verdict != SKIP:
            raise LeaseError("This problem already has a label; undo it first to change it.")
        if verdict != SKIP:
            budget = db.execute("select total from budgets order by id desc limit 1").fetchone()
            if budget is not None and labels_spent(db) >= budget[0]:
                raise BudgetSpent("The label budget is spent; a lead can raise it on the Budget page.")
        version = db.execute("select router_version from routes where problem_id = ?",
                             [problem_id]).fetchone()
        label_id = db["labels"].insert({
            "problem_id": problem_id, "annotator": annotator, "verdict": verdict,
            "gold_answer": gold_answer, "shown_answer": shown_answer, "seconds": seconds,
            "created_at": stamp, "undoes": None, "router_version": version[0] if version else None,
        }).last_pk
        if verdict == SKIP:
            db.execute("insert or replace into skips values (?, ?, ?)", [problem_id, annotator, stamp])
        else:
            db.execute("update problems set verdict = ? where id = ?", [verdict, problem_id])
        db.execute("delete from assignments where problem_id = ? and annotator = ?", [problem_id, annotator])
    return label_id


def undo_last_label(db: sqlite_utils.Database, annotator: str) -> dict:
    """Append an undo row for `annotator`'s own latest label still in force.

    It restores their own state only: a skip is forgotten, a verdict is lifted. The item comes back
    to them (a new lease) only when it is still routed to `annotate`, nobody else holds it and the
    budget has room; it never takes another annotator's lease. Returns {label_id, problem_id,
    verdict, leased}.
    """
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        row = db.execute(
            "select id, problem_id, verdict from labels l where annotator = ? and verdict != 'undo' "
            "and not exists (select 1 from labels u where u.undoes = l.id) order by id desc limit 1",
            [annotator]).fetchone()
        if not row:
            raise NothingToUndo("Nothing to undo.")
        label_id, problem_id, verdict = row
        db["labels"].insert({"problem_id": problem_id, "annotator": annotator, "verdict": UNDO,
                             "gold_answer": None, "shown_answer": None, "seconds": None,
                             "created_at": stamp, "undoes": label_id, "router_version": None})
        if verdict == SKIP:
            db.execute("delete from skips where problem_id = ? and annotator = ?", [problem_id, annotator])
        else:
            db.execute("update problems set verdict = null where id = ?", [problem_id])
        route = db.execute("select route from routes where problem_id = ?", [problem_id]).fetchone()
        holder = _lease_holder(db, problem_id, stamp)
        room = _budget_room(db, stamp)
        leased = (route is not None and route[0] == "annotate" and holder in (None, annotator)
                  and db.execute("select verdict from problems where id = ?", [problem_id]).fetchone()[0] is None
                  and (room is None or room > 0 or holder == annotator))
        if leased:
            db.execute("insert or replace into assignments (problem_id, annotator, leased_at, expires_at) "
                       "values (?, ?, ?, ?)", [problem_id, annotator, stamp, stamp + 60 * LEASE_MINUTES])
    return {"label_id": label_id, "problem_id": problem_id, "verdict": verdict, "leased": leased}


def labels_not_undone_sql(verdicts: tuple[str, ...]) -> str:
    """The one SQL definition of a label row in force: its verdict is one of `verdicts` and no undo
    row undoes it. `verdicts` come from the vocabulary (VERDICTS, SKIP, UNDO), never from users."""
    listed = ", ".join(f"'{v}'" for v in verdicts)
    return (f"select * from labels l where l.verdict in ({listed}) "
            "and not exists (select 1 from labels u where u.undoes = l.id)")


def effective_labels(db: sqlite_utils.Database) -> list[dict]:
    """Labels in force (not undone, verdict correct/wrong/flawed), newest per problem."""
    return list(db.query(
        f"with in_force as ({labels_not_undone_sql(VERDICTS)}) select * from in_force "
        "where id in (select max(id) from in_force group by problem_id) order by id"))


# --------------------------------------------------------------------------- step labels

STEP_RATINGS = (1, 0, -1)  # PRM800K: good, neutral (okay but not progress), bad


def save_step_label(db: sqlite_utils.Database, *, problem_id: str, annotator: str, first_wrong_step: int,
                    model_id: str | None = None, ratings: list | None = None) -> int:
    """Append an annotator's first-wrong-step label on the stored trace of `problem_id`.

    `first_wrong_step`: 0-based step index, or -1 for "every step is right". `ratings`: optional
    per-step +1 / 0 / -1 (None for unrated steps). Checked against the trace's steps; a later label
    of the same annotator on the same problem supersedes the earlier one (nothing is overwritten).
    """
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        sql = "select model_id, steps from traces where problem_id = ?"
        params = [problem_id]
        if model_id:
            sql += " and model_id = ?"
            params.append(model_id)
        row = db.execute(sql + " order by created_at desc limit 1", params).fetchone()
        if row is None:
            raise StoreError("No trace of this problem to label steps on.")
        model_id, n_steps = row[0], len(json.loads(row[1] or "[]"))
        if not isinstance(first_wrong_step, int) or not -1 <= first_wrong_step < n_steps:
            raise StoreError(f"First wrong step must be a step number 1-{n_steps} (or none); got {first_wrong_step!r}.")
        if ratings is not None:
            if len(ratings) != n_steps or any(r not in STEP_RATINGS + (None,) for r in ratings):
                raise StoreError(f"Step ratings must be {n_steps} values of +1, 0, -1 or none.")
            ratings = json.dumps(list(ratings))
        label = db.execute(f"select id from ({labels_not_undone_sql(VERDICTS)}) where problem_id = ? "
                           "and annotator = ? order by id desc limit 1", [problem_id, annotator]).fetchone()
        return db["step_labels"].insert({
            "problem_id": problem_id, "model_id": model_id, "annotator": annotator,
            "first_wrong_step": first_wrong_step, "ratings": ratings, "n_steps": n_steps,
            "label_id": label[0] if label else None, "created_at": stamp, "undoes": None}).last_pk


def undo_last_step_label(db: sqlite_utils.Database, annotator: str, *, problem_id: str | None = None) -> dict:
    """Append an undo row for the annotator's latest step label in force (on `problem_id` if given)."""
    with immediate(db):
        _labeller(db, annotator)
        sql = ("select id, problem_id, first_wrong_step from step_labels s where annotator = ? "
               "and undoes is null and not exists (select 1 from step_labels u where u.undoes = s.id)")
        params = [annotator]
        if problem_id:
            sql += " and problem_id = ?"
            params.append(problem_id)
        row = db.execute(sql + " order by id desc limit 1", params).fetchone()
        if not row:
            raise NothingToUndo("No step label to undo.")
        db["step_labels"].insert({"problem_id": row[1], "model_id": None, "annotator": annotator,
                                  "first_wrong_step": None, "ratings": None, "n_steps": None,
                                  "label_id": None, "created_at": now(), "undoes": row[0]})
    return {"step_label_id": row[0], "problem_id": row[1], "first_wrong_step": row[2]}


def latest_label_in_force(db: sqlite_utils.Database, annotator: str) -> dict | None:
    """The annotator's newest verdict label (correct/wrong/flawed) that is not undone, or None."""
    rows = list(db.query(
        f"select * from ({labels_not_undone_sql(VERDICTS)}) where annotator = ? order by id desc limit 1",
        [annotator]))
    return rows[0] if rows else None


def effective_step_labels(db: sqlite_utils.Database, *, problem_id: str | None = None) -> list[dict]:
    """Step labels in force: not undone, the newest per (problem, annotator); ratings decoded."""
    sql = ("select s.* from step_labels s where s.undoes is null "
           "and not exists (select 1 from step_labels u where u.undoes = s.id) "
           "and s.id = (select max(s2.id) from step_labels s2 where s2.problem_id = s.problem_id "
           "and s2.annotator = s.annotator and s2.undoes is null "
           "and not exists (select 1 from step_labels u2 where u2.undoes = s2.id))")
    params = []
    if problem_id:
        sql += " and s.problem_id = ?"
        params.append(problem_id)
    rows = list(db.query(sql + " order by s.id", params))
    for row in rows:
        row["ratings"] = json.loads(row["ratings"]) if row["ratings"] else None
    return rows


# --------------------------------------------------------------------------- labels for analytics and export

def verdicts_in_force_by_annotator(db: sqlite_utils.Database) -> list[tuple[str, str, str]]:
    """(annotator, problem_id, verdict) of every verdict not undone, oldest first (analytics keeps
    the latest per annotator and problem)."""
    return db.execute(
        f"select annotator, problem_id, verdict from ({labels_not_undone_sql(VERDICTS)}) order by id").fetchall()


def skip_undo_counts(db: sqlite_utils.Database) -> list[tuple[str, str, int]]:
    """(annotator, "skip" or "undo", count) over the skip and undo rows not themselves undone."""
    return db.execute(
        f"select annotator, verdict, count(*) from ({labels_not_undone_sql((SKIP, UNDO))}) "
        "group by annotator, verdict").fetchall()


def export_rows(db: sqlite_utils.Database, routes: tuple[str, ...]) -> list[dict]:
    """Routed problems a training set may draw on: those whose current route is in `routes`, and
    every problem with a label row. Each row: problem_id, text, source, route, model_id,
    router_version, majority_answer and vote_share (features of the route's model). Ordered by
    problem id. Never reads the hidden gold. Which rows become examples is export.py's call.
    """
    marks = ", ".join("?" for _ in routes) or "null"
    return list(db.query(
        "select r.problem_id, p.text, p.source, r.route, r.model_id, r.router_version, "
        "f.majority_answer, f.vote_share from routes r join problems p on p.id = r.problem_id "
        "left join features f on f.problem_id = r.problem_id and f.model_id = r.model_id "
        f"where r.route in ({marks}) or exists (select 1 from labels l where l.problem_id = r.problem_id) "
        "order by r.problem_id", list(routes)))


# --------------------------------------------------------------------------- status

def status(db: sqlite_utils.Database) -> dict:
    """Counts by state and route, and the budget."""
    total = db["problems"].count
    traced = db.execute("select count(distinct problem_id) from traces").fetchone()[0]
    routed = db["routes"].count
    labelled = labels_spent(db)
    return {
        "problems": total, "untraced": total - traced, "traced": traced,
        "routed": routed, "labelled": labelled, "routes": route_counts(db),
        "models": [r["id"] for r in db.query("select id from models order by created_at")],
        "budget": budget_status(db),
        "router_version": (db.execute("select max(id) from router_versions").fetchone()[0]),
    }


# --------------------------------------------------------------------------- background jobs

def create_job(db: sqlite_utils.Database, kind: str, args: dict, total: int) -> int:
    with immediate(db):
        return db["jobs"].insert({"kind": kind, "args": json.dumps(args), "status": "queued",
                                  "done": 0, "total": total, "message": "", "pid": None,
                                  "started_at": now(), "updated_at": now()}).last_pk


def update_job(db: sqlite_utils.Database, job_id: int, **fields) -> None:
    fields["updated_at"] = now()
    with immediate(db):
        db["jobs"].update(job_id, fields)


def get_job(db: sqlite_utils.Database, job_id: int) -> dict | None:
    rows = list(db.query("select * from jobs where id = ?", [job_id]))
    return rows[0] if rows else None


def jobs(db: sqlite_utils.Database, limit: int = 20) -> list[dict]:
    return list(db.query("select * from jobs order by id desc limit ?", [limit]))


# --------------------------------------------------------------------------- read helpers for the app

def users(db: sqlite_utils.Database) -> list[dict]:
    """[{name, role, email, has_password}] by name (never the hashes)."""
    return list(db.query("select name, role, email, password_hash is not null as has_password "
                         "from users order by name"))


PROBLEM_SORTS = {  # search_problems' orders; missing values last, ingest order breaks ties
    "value": "r.value is null, r.value desc, p.rowid",
    "uncertainty": "r.uncertainty is null, r.uncertainty desc, p.rowid",
    "pivot_density": "f.pivot_density is null, f.pivot_density desc, p.rowid",
    "recent": "p.rowid",
}


def _fold(text: str | None) -> str | None:
    """Case folding for search, registered on every connection as SQL `fold` (SQLite's lower()
    folds ASCII letters only)."""
    return None if text is None else str(text).casefold()


def search_problems(db: sqlite_utils.Database, *, routes: list | None = None, min_density: float | None = None,
                    uncertainty: tuple[float, float] | None = None, words: list[str] = (),
                    traced_only: bool = True, sort: str = "value",
                    limit: int | None = None) -> tuple[list[dict], int]:
    """(the first `limit` matching problems, how many match), filtered and sorted in SQLite.

    Each row: the problem, its route, uncertainty and value, and its route model's pivot features.
    `routes` may hold None for problems not routed yet. A word matches the text (case folded)
    or is a prefix of the problem id. At 100k problems about 0.3 s, against ~1 s for the same
    filters over every row in Python.
    """
    if sort not in PROBLEM_SORTS:
        raise ValueError(f"Unknown sort {sort!r}; use one of {', '.join(PROBLEM_SORTS)}.")
    where, params = [], []
    if traced_only:
        where.append("exists (select 1 from traces t where t.problem_id = p.id)")
    if routes:
        named = [r for r in routes if r is not None]
        either = [f"r.route in ({', '.join('?' for _ in named)})"] if named else []
        either += ["r.route is null"] if None in routes else []
        where.append("(" + " or ".join(either) + ")")
        params += named
    if min_density is not None:
        where.append("coalesce(f.pivot_density, 0) >= ?")
        params.append(float(min_density))
    if uncertainty is not None:
        where.append("r.uncertainty between ? and ?")
        params += [float(uncertainty[0]), float(uncertainty[1])]
    for word in words:
        word = _fold(word)
        where.append("(instr(fold(p.text), ?) > 0 or substr(p.id, 1, ?) = ?)")
        params += [word, len(word), word]
    tables = ("from problems p left join routes r on r.problem_id = p.id "
              "left join features f on f.problem_id = p.id and f.model_id = r.model_id "
              + ("where " + " and ".join(where) if where else ""))
    total = db.execute(f"select count(*) {tables}", params).fetchone()[0]
    rows = list(db.query(
        "select p.id as problem_id, p.text, p.source, p.verdict, r.route, r.uncertainty, r.value, "
        "r.model_id, f.pivot_density, f.n_pivots, f.n_steps, f.vote_share, f.majority_answer, "
        "(select count(*) from traces t where t.problem_id = p.id) as n_traces "
        f"{tables} order by {PROBLEM_SORTS[sort]} limit ?", params + [-1 if limit is None else int(limit)]))
    return rows, total


def trace_models(db: sqlite_utils.Database, problem_id: str) -> list[str]:
    """Models that traced this problem, newest first."""
    return [r[0] for r in db.execute(
        "select model_id from traces where problem_id = ? order by created_at desc", [problem_id])]


def get_features(db: sqlite_utils.Database, problem_id: str, model_id: str) -> dict | None:
    rows = list(db.query("select * from features where problem_id = ? and model_id = ?",
                         [problem_id, model_id]))
    return rows[0] if rows else None


def queue_remaining(db: sqlite_utils.Database) -> int:
    """Unlabelled problems routed to `annotate` (leased ones included)."""
    return db.execute("select count(*) from routes r join problems p on p.id = r.problem_id "
                      "where r.route = 'annotate' and p.verdict is null").fetchone()[0]


def route_history(db: sqlite_utils.Database) -> list[dict]:
    """Every logged route change, oldest first."""
    return list(db.query("select problem_id, route, router_version, created_at from route_log order by id"))


def source_counts(db: sqlite_utils.Database) -> list[dict]:
    return list(db.query("select source, count(*) as problems from problems group by source order by 2 desc"))
