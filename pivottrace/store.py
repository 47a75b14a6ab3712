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

import errno
import io
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
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


class StorageError(StoreError):
    """The database or a file cannot be read or written. The message says what to do; the
    exit code tells the failures apart for scripts (see `storage_error`)."""

    exit_code = 9


class NotADatabase(StorageError):
    exit_code = 3


class ReadOnlyStorage(StorageError):
    exit_code = 4


class StorageFull(StorageError):
    exit_code = 5


class NoDatabase(StorageError):
    exit_code = 6


class CannotWriteFile(StorageError):
    exit_code = 7


class DatabaseBusy(StorageError):
    exit_code = 8


_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


LOW_SPACE_BYTES = 1 << 20  # under this much free space, an I/O error in WAL mode is a full disk
# (SQLite reports a failed write to the -wal/-shm files as a plain I/O error, not SQLITE_FULL)


def _low_on_space(path) -> bool:
    import shutil

    if not path or str(path) == ":memory:":
        return False
    try:
        return shutil.disk_usage(Path(path).resolve().parent).free < LOW_SPACE_BYTES
    except OSError:
        return False


def storage_error(err: BaseException, path: str | Path | None = None) -> StorageError | None:
    """A one-line StorageError for a SQLite or file-system failure (None when `err` is neither).

    `path`: the database, when the failure is the database's. Nothing is lost in any of these
    cases: a failed write rolls its transaction back.
    """
    if isinstance(err, StorageError):
        return err
    where = str(path) if path else "the database"
    if isinstance(err, sqlite3.Error):
        name = getattr(err, "sqlite_errorname", "") or ""
        text = str(err)
        if name == "SQLITE_NOTADB" or "file is not a database" in text:
            return NotADatabase(f"{where} is not a PivotTrace database (SQLite cannot read it). Give "
                                "--db the path of a PivotTrace database, or a new file name to start one.")
        if name == "SQLITE_FULL" or "disk is full" in text:
            return StorageFull(f"The disk holding {where} is full; nothing was written. Free some space "
                               "and run the command again.")
        if name.startswith("SQLITE_READONLY") or "readonly database" in text:
            return ReadOnlyStorage(f"{where} is read-only; nothing was written. Check the permissions of "
                                   "the file and its folder, or give --db a writable place.")
        if name.startswith("SQLITE_CANTOPEN") or "unable to open database" in text:
            return ReadOnlyStorage(f"Cannot open {where}: check that its folder exists and that you may "
                                   "write there (SQLite also writes -wal and -shm files beside it).")
        if name in ("SQLITE_BUSY", "SQLITE_LOCKED") or "database is locked" in text:
            return DatabaseBusy(f"{where} stayed locked by another process for too long; wait for it "
                                "to finish and run the command again.")
        if name == "SQLITE_CORRUPT" or "malformed" in text:
            return NotADatabase(f"{where} is damaged (SQLite: {text}). Restore it from a backup.")
        if (name.startswith("SQLITE_IOERR") or "disk I/O error" in text) and _low_on_space(path):
            return StorageFull(f"The disk holding {where} is full; nothing was written. Free some space "
                               "and run the command again.")
        if name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
            return StorageError(f"Reading or writing {where} failed (SQLite: {text}); check the disk "
                                "and run the command again.")
        return None
    if isinstance(err, OSError):
        target = err.filename or where
        if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
            return StorageFull(f"The disk holding {target} is full. Free some space and run the "
                               "command again.")
        if err.errno in _READ_ONLY_ERRNOS:
            folder = target if Path(target).is_dir() else Path(target).parent
            return CannotWriteFile(f"Cannot write in {folder}: the location is read-only. Check the "
                                   "permissions, or choose another folder.")
        if err.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            return CannotWriteFile(f"Cannot write {target}: a part of that path is a file, not a "
                                   "folder (or the other way round). Choose another path.")
        if err.errno == errno.ENOENT:
            return CannotWriteFile(f"{target} does not exist. Check the path.")
        return CannotWriteFile(f"Cannot read or write {target}: {err.strerror or err}.")
    return None


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
        "arrays": bytes,  # compressed npz: entropy [L,S], segment summary (encode_arrays), ...
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
    """Trace claims: a trace run leases the problems it is tracing, so two runs at once never
    trace the same problem (claim_problems)."""
    db["trace_claims"].create({
        "problem_id": str, "model_id": str, "run_id": str, "host": str, "pid": int, "expires_at": float,
    }, pk=("problem_id", "model_id"))
    db["trace_claims"].create_index(["run_id"])


def _migration_7(db: sqlite_utils.Database) -> None:
    """Rollouts sampled elsewhere (import-rollouts): K completions per (problem, checkpoint), kept until
    `analyse` turns the first into a trace and the rest into its samples."""
    db["rollouts"].create({
        "problem_id": str, "model_id": str, "idx": int,  # idx: file order within the group
        "prompt": str,  # the prompt the model saw: text, or JSON chat messages
        "prompt_is_messages": int, "completion": str, "score": float, "step": int,
        "source": str, "line": int, "created_at": float,
    }, pk=("problem_id", "model_id", "idx"))
    db["rollouts"].create_index(["model_id"])


def _migration_8(db: sqlite_utils.Database) -> None:
    """Double labelling for agreement: the overlap share a lead sets (append-only, newest in
    force) and the reviews in which a lead settles a disagreement with a label of their own."""
    db["overlap_settings"].create({"id": int, "share": float, "set_by": str, "created_at": float}, pk="id")
    db["reviews"].create({"id": int, "problem_id": str, "lead": str, "label_id": int, "created_at": float},
                         pk="id")
    db["reviews"].create_index(["problem_id"])
    db["reviews"].create_index(["label_id"])  # "is this label a review?", asked per label


def _migration_9(db: sqlite_utils.Database) -> None:
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


def _migration_10(db: sqlite_utils.Database) -> None:
    """Each route carries its uncertainty's credible interval (issue 10): the posterior's
    equal-tailed interval of P(majority wrong), NULL in rows routed before it."""
    db["routes"].add_column("u_low", float)
    db["routes"].add_column("u_high", float)


MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5,
              _migration_6, _migration_7, _migration_8, _migration_9, _migration_10]  # index i upgrades user_version i -> i+1; append, never edit


def open_db(path: str | Path | None = None, *, create: bool = True) -> sqlite_utils.Database:
    """Open (and create or migrate) the database. Safe to call from many processes at once.

    With `create=False` a missing file is a NoDatabase error, not a new empty database (for
    commands that only read). SQLite and file-system failures become StorageError lines.
    """
    path = str(path or default_db_path())
    try:
        return _open_db(path, create=create)
    except (sqlite3.Error, OSError) as err:
        translated = storage_error(err, path)
        if translated is None:
            raise
        raise translated from err


def _connect(path: str) -> sqlite3.Connection:
    """The one place a connection is made (tests inject SQLite failures here)."""
    return sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)


def _open_db(path: str, *, create: bool) -> sqlite_utils.Database:
    if path != ":memory:":
        if Path(path).is_dir():
            raise NotADatabase(f"{path} is a folder; give --db a database file inside it "
                               f"(e.g. {Path(path) / DEFAULT_DB}).")
        if not create and not Path(path).exists():
            raise NoDatabase(f"No database at {path}. Create one with `pivottrace ingest` or "
                             "`pivottrace demo`, or point --db (or $PIVOTTRACE_DB) at yours.")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path)
    try:
        return _prepare(conn, path)
    except BaseException:
        conn.close()
        raise


def _prepare(conn: sqlite3.Connection, path: str) -> sqlite_utils.Database:
    """Check that the file is a PivotTrace database, set the connection up and migrate it."""
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.create_function("fold", 1, _fold, deterministic=True)
    db = sqlite_utils.Database(conn)
    version = conn.execute("PRAGMA user_version").fetchone()[0]  # reads the header: not a database fails here
    if version > len(MIGRATIONS):
        raise NotADatabase(f"{path} was written by a newer PivotTrace (schema {version}; this one "
                           f"knows {len(MIGRATIONS)}). Upgrade PivotTrace to open it.")
    if version == 0 and conn.execute("select count(*) from sqlite_master where name not like "
                                     "'sqlite_%'").fetchone()[0]:
        raise NotADatabase(f"{path} is an SQLite database of another program, not a PivotTrace "
                           "database; give --db another file.")
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
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if conn.in_transaction:  # SQLite has already rolled back after some errors (a full disk)
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")
    except sqlite3.Error as err:  # a full disk, a read-only file, a lock held too long: one clear line
        translated = storage_error(err, _db_file_or_none(db))
        if translated is None:
            raise
        raise translated from err


def _db_file_or_none(db: sqlite_utils.Database) -> str | None:
    try:
        return next((path for _, name, path in db.execute("PRAGMA database_list") if name == "main" and path), None)
    except sqlite3.Error:
        return None


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

SEGMENT_TOP_K = 16  # segments kept per step of the layer-mean segment attention (the Inspect page's bar
# chart): the prompt, the step itself, the last steps and the few far-back steps it looks at. On random-
# token chains of 2k/8k/16k tokens (bench/long_trace.py) they hold 89/78/66 % of a step's mass on average;
# the rest is spread thin over hundreds of steps, and the per-layer buckets keep all of it (as "earlier").
SEGMENT_BUCKETS = ("prompt", "earlier", "previous", "current")  # per-layer summary of m[l, s]: steps 0..s-2, s-1, s


def summarise_segments(mass: np.ndarray) -> dict[str, np.ndarray]:
    """m [L, S, S+1] -> what is stored of it, O(L*S) and not O(L*S^2):
    segment_buckets [L, S, 4] float16: per layer, the mass on the prompt, the earlier steps (0..s-2),
        the previous step and the step itself (SEGMENT_BUCKETS);
    segment_top_index [S, K] int32 / segment_top_mass [S, K] float16: the SEGMENT_TOP_K largest
        segments of the layer-mean m.mean(0)[s] (0 prompt, 1+j step j), largest first.
    temporal_change and consistency are computed from the full m before it is summarised.
    """
    mass = np.asarray(mass, dtype=np.float64)
    n_layers, n_steps, n_segments = mass.shape
    steps = np.arange(n_steps)
    cumulative = np.cumsum(mass, axis=-1)  # [L, S, S+1]
    current = mass[:, steps, steps + 1]  # [L, S]
    previous = np.where(steps > 0, mass[:, steps, np.maximum(steps, 1)], 0.0)  # [L, S] step s-1 is segment s
    earlier = cumulative[:, steps, steps + 1] - mass[:, :, 0] - current - previous  # [L, S]
    buckets = np.stack([mass[:, :, 0], np.clip(earlier, 0.0, None), previous, current], axis=-1)  # [L, S, 4]
    mean = mass.mean(0)  # [S, S+1]
    k = min(SEGMENT_TOP_K, n_segments)
    top = np.argsort(-mean, axis=-1, kind="stable")[:, :k]  # [S, k]
    return {"segment_buckets": buckets.astype(np.float16), "segment_top_index": top.astype(np.int32),
            "segment_top_mass": np.take_along_axis(mean, top, axis=-1).astype(np.float16)}


def expand_segments(top_index: np.ndarray, top_mass: np.ndarray) -> np.ndarray:
    """The stored top-K back to a dense layer-mean segment attention [1, S, S+1] (float32; the
    segments not kept are 0). Only for one trace at a time (the Inspect page)."""
    n_steps = top_index.shape[0]
    dense = np.zeros((1, n_steps, n_steps + 1), dtype=np.float32)
    np.put_along_axis(dense[0], top_index.astype(np.int64), top_mass.astype(np.float32), axis=-1)
    return dense


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Per-step arrays -> compressed npz bytes: float32, except segment_attention [L, S, S+1], which is
    stored as its O(L*S) summary (summarise_segments) so a trace's size grows with its steps, not steps^2."""
    stored = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if k != "segment_attention"}
    if "segment_attention" in arrays:
        stored.update(summarise_segments(arrays["segment_attention"]))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **stored)
    return buffer.getvalue()


def decode_arrays(blob: bytes | None, *, dense_segments: bool = True) -> dict[str, np.ndarray]:
    """npz bytes -> arrays. With `dense_segments`, a summarised segment attention comes back as the dense
    layer mean `segment_attention` [1, S, S+1] (expand_segments); traces stored before the summary keep
    their full [L, S, S+1]."""
    if not blob:
        return {}
    with np.load(io.BytesIO(blob)) as data:
        arrays = {k: data[k] for k in data.files}
    if "segment_top_index" in arrays:
        arrays["segment_buckets"] = arrays["segment_buckets"].astype(np.float32)
        if dense_segments:
            arrays["segment_attention"] = expand_segments(arrays["segment_top_index"], arrays["segment_top_mass"])
    return arrays


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


def save_traces(db: sqlite_utils.Database, model_id: str, results) -> int:
    """Write many (problem_id, ProblemTrace) in one transaction (a distributed run's driver batches);
    a trace already there is replaced, never doubled. Returns how many were written."""
    count = 0
    with immediate(db):
        for problem_id, result in results:
            save_trace(db, problem_id, model_id, result)
            count += 1
    return count


def save_trace(db: sqlite_utils.Database, problem_id: str, model_id: str, result) -> bool:
    """Write one ProblemTrace (trace + samples) in its own transaction: all of it or nothing.

    A trace that replaces one with other answers (greedy or sampled) makes the problem's features
    stale: they are deleted in the same transaction, so the next recalibration rescores it
    (see stale_features). Returns True in that case.
    """
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
    key = [problem_id, model_id]
    with immediate(db):
        before = db.execute("select answer from traces where problem_id = ? and model_id = ?", key).fetchone()
        changed = before is not None and (
            before[0] != trace.answer or sample_answers(db, problem_id, model_id) != list(result.sample_answers))
        db.execute("delete from samples where problem_id = ? and model_id = ?", key)  # K may differ
        db["traces"].insert(row, replace=True)
        db["samples"].insert_all(samples, replace=True)
        if changed:
            db.execute("delete from features where problem_id = ? and model_id = ?", key)
    return changed


def stale_features(db: sqlite_utils.Database, model_id: str) -> int:
    """How many of the model's traces have no feature row (new, or re-traced with other answers)."""
    traces = db.execute("select count(*) from traces where model_id = ?", [model_id]).fetchone()[0]
    features = db.execute("select count(*) from features where model_id = ?", [model_id]).fetchone()[0]
    return max(traces - features, 0)


# --------------------------------------------------------------------------- trace claims

TRACE_CLAIM_MINUTES = 30  # a claim outlives a crashed run by at most this; a live run renews it every batch


def _host() -> str:
    import socket

    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    """Whether a process of this host runs with that pid (a zombie, exited but not yet reaped, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def claim_problems(db: sqlite_utils.Database, model_id: str, run_id: str, *, n: int,
                   source: str | None = None, lease_minutes: float = TRACE_CLAIM_MINUTES) -> list[dict]:
    """Claim up to `n` problems with no trace for `model_id` that no other live run holds, and
    renew this run's claims. Atomic across processes (BEGIN IMMEDIATE). A claim ends when its run
    releases it (release_claims), when it expires, or at once when its process, on this host,
    is gone (a crash)."""
    stamp = now()
    host = _host()
    with immediate(db):
        db.execute("delete from trace_claims where expires_at < ?", [stamp])
        for pid in {row[0] for row in db.execute(
                "select distinct pid from trace_claims where host = ? and run_id != ?", [host, run_id])}:
            if not pid_alive(pid):
                db.execute("delete from trace_claims where host = ? and pid = ?", [host, pid])
        db.execute("update trace_claims set expires_at = ? where run_id = ?", [stamp + 60 * lease_minutes, run_id])
        sql = ("select p.id, p.text from problems p where not exists (select 1 from traces t "
               "where t.problem_id = p.id and t.model_id = ?) and not exists (select 1 from trace_claims c "
               "where c.problem_id = p.id and c.model_id = ?)")
        params: list = [model_id, model_id]
        if source:
            sql += " and p.source = ?"
            params.append(source)
        rows = list(db.query(sql + " order by p.created_at, p.rowid limit ?", params + [int(n)]))
        db.conn.executemany(
            "insert into trace_claims (problem_id, model_id, run_id, host, pid, expires_at) "
            "values (?, ?, ?, ?, ?, ?)",
            [(row["id"], model_id, run_id, host, os.getpid(), stamp + 60 * lease_minutes) for row in rows])
    return rows


def release_claims(db: sqlite_utils.Database, run_id: str) -> None:
    with immediate(db):
        db.execute("delete from trace_claims where run_id = ?", [run_id])


def claimed_problems(db: sqlite_utils.Database, model_id: str | None = None) -> list[dict]:
    sql, params = "select * from trace_claims", []
    if model_id:
        sql += " where model_id = ?"
        params.append(model_id)
    return list(db.query(sql + " order by problem_id", params))


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
        row["arrays"] = decode_arrays(row["arrays"], dense_segments=False)  # scoring reads no segment attention
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


def traced_with_gold(db: sqlite_utils.Database, model_id: str | None = None) -> int:
    """Problems traced by `model_id` (default: the newest model) that have a gold answer: the pool
    an evaluation can use. Only the count leaves the store."""
    model_id = model_id or latest_model_id(db)
    if model_id is None:
        return 0
    return db.execute("select count(*) from traces t join problems p on p.id = t.problem_id "
                      "where t.model_id = ? and p.gold is not null and p.gold != ''", [model_id]).fetchone()[0]


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


def routing_unfinished(db: sqlite_utils.Database, version: dict) -> bool:
    """True for a router version whose routes were never written: a crash between the two, from
    before pipeline.route wrote them in one transaction (its `counts` are written with them)."""
    if version.get("counts") is not None:
        return False
    return db.execute("select 1 from routes where router_version = ? limit 1", [version["id"]]).fetchone() is None


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
                       uncertainty, value, router_version: int, *, interval=None) -> int:
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
    if interval is None:
        low = high = [None] * n
    else:
        low, high = (np.asarray(bound, dtype=np.float64).tolist() for bound in interval)
        if not len(low) == len(high) == n:
            raise ValueError("save_route_columns needs an interval of the pool's length.")
    stamp = now()
    upsert = ("insert into routes (problem_id, model_id, route, uncertainty, value, router_version, "
              "updated_at, u_low, u_high) values (?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict (problem_id) do update set "
              "model_id = excluded.model_id, route = excluded.route, uncertainty = excluded.uncertainty, "
              "value = excluded.value, router_version = excluded.router_version, "
              "updated_at = excluded.updated_at, u_low = excluded.u_low, u_high = excluded.u_high")

    def rows(indexes):
        return [(problem_ids[i], model_ids[i], routes[i], uncertainty[i], value[i], router_version, stamp,
                 low[i], high[i]) for i in indexes]

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
                                "updated_at = ?, u_low = ?, u_high = ? where problem_id = ? and route = ?",
                                [(uncertainty[i], value[i], router_version, stamp, low[i], high[i],
                                  problem_ids[i], routes[i]) for i in chunk])
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
    """(problem_id, annotator) of unexpired leases whose holder has no verdict in force on the
    problem yet (an unlabelled problem, or an overlap item waiting for their second label),
    oldest first: each of them may still spend one label."""
    return db.execute(
        "select a.problem_id, a.annotator from assignments a join problems p on p.id = a.problem_id "
        "where a.expires_at > ? and (p.verdict is null or not exists (select 1 from labels l "
        f"where l.problem_id = a.problem_id and l.annotator = a.annotator and l.verdict in ({_VERDICT_LIST}) "
        "and not exists (select 1 from labels u where u.undoes = l.id))) "
        "order by a.leased_at, a.rowid", [stamp]).fetchall()


def _room_for_lease(db, stamp: float) -> bool:
    room = _budget_room(db, stamp)
    return room is None or room > 0


_VERDICT_LIST = ", ".join(f"'{v}'" for v in VERDICTS)


def _budget_room(db, stamp: float) -> int | None:
    """Labels the budget still allows beyond those spent and those leased; None without a budget."""
    row = db.execute("select total from budgets order by id desc limit 1").fetchone()
    if row is None:
        return None
    return row[0] - labels_spent(db) - len(_active_leases(db, stamp))


INITIAL_BUDGET_ROLES = ("lead", "researcher")  # those who may start the demo, which sets one


def set_initial_budget(db: sqlite_utils.Database, *, total: int, set_by: str, by) -> bool:
    """Set a starting budget (e.g. the demo's) only where no budget was ever set: it never
    overrides a lead's. `by` (a lead or researcher starting the demo, or the local operator) is
    who acts; the change is audited. Returns whether it was set."""
    if int(total) < 0:
        raise StoreError("Budget must not be negative.")
    with immediate(db):
        if db.execute("select 1 from budgets limit 1").fetchone():
            return False
        actor = _actor(db, by)
        if not isinstance(by, LocalOperator) and user_role(db, by) not in INITIAL_BUDGET_ROLES:
            raise PermissionDenied(f"{by!r} is a {user_role(db, by)}; only leads and researchers start the demo.")
        db["budgets"].insert({"total": int(total), "cost_per_label": 0.0, "set_by": set_by, "created_at": now()})
        _audit(db, actor=actor, action="budget", subject=set_by, before=None, after=_budget_text(total, 0.0))
    return True


def budget_set_by(db: sqlite_utils.Database) -> str | None:
    """Who set the budget in force (a lead's name, or "demo"); None when none was set."""
    row = db.execute("select set_by from budgets order by id desc limit 1").fetchone()
    return row[0] if row else None


def labels_spent(db: sqlite_utils.Database) -> int:
    """Labels that spend budget: one per labelled problem, plus each second label of an overlap
    item (an item labelled by two annotators counts twice)."""
    first = db.execute("select count(*) from problems where verdict is not null").fetchone()[0]
    return first + second_labels_spent(db)


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
    route = db.execute("select route, uncertainty, value, model_id, router_version, u_low, u_high from routes "
                       "where problem_id = ?", [problem_id]).fetchone()
    model_id = route[3] if route else None
    features = list(db.query("select * from features where problem_id = ? and model_id = ?",
                             [problem_id, model_id]))
    return {
        "problem_id": problem_id, "text": problem["text"], "source": problem["source"],
        "route": route[0] if route else None, "uncertainty": route[1] if route else None,
        "value": route[2] if route else None, "model_id": model_id,
        "router_version": route[4] if route else None,
        "uncertainty_interval": (route[5], route[6]) if route and route[5] is not None else None,
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
            _refresh_verdict(db, problem_id)  # the newest label still in force (a second label's undo keeps the first)
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
        "select p.id as problem_id, p.text, p.source, p.verdict, r.route, r.uncertainty, r.u_low, r.u_high, "
        "r.value, r.model_id, f.pivot_density, f.n_pivots, f.n_steps, f.vote_share, f.majority_answer, "
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


# --------------------------------------------------------------------------- rollouts sampled elsewhere

def problem_index(db: sqlite_utils.Database) -> list[dict]:
    """Every problem's id and text (import-rollouts matches prompts against them)."""
    return list(db.query("select id, text from problems order by rowid"))


def problems_with_rollouts(db: sqlite_utils.Database, model_id: str) -> set[str]:
    return {r[0] for r in db.execute("select distinct problem_id from rollouts where model_id = ?", [model_id])}


def save_rollouts(db: sqlite_utils.Database, rows: list[dict]) -> int:
    """Insert rollout rows (one transaction); rows already there are kept as they are. Returns rows added."""
    stamp = now()
    for row in rows:
        row.setdefault("created_at", stamp)
    with immediate(db):
        before = db["rollouts"].count
        db["rollouts"].insert_all(rows, ignore=True, batch_size=1000)
        return db["rollouts"].count - before


def rollout_models(db: sqlite_utils.Database) -> list[str]:
    """Model ids with imported rollouts, oldest import first."""
    return [r[0] for r in db.execute("select model_id from rollouts group by model_id order by min(created_at)")]


def traced_problem_ids(db: sqlite_utils.Database, model_id: str, *, limit: int | None = None) -> list[str]:
    return [r[0] for r in db.execute("select problem_id from traces where model_id = ? order by rowid limit ?",
                                     [model_id, -1 if limit is None else int(limit)])]


def model_spec(db: sqlite_utils.Database, model_id: str) -> str | None:
    row = db.execute("select spec from models where id = ?", [model_id]).fetchone()
    return row[0] if row else None


def pending_rollouts(db: sqlite_utils.Database, model_id: str, *, limit: int | None = None) -> list[dict]:
    """Problems with rollouts of this model and no trace yet (what a resumed analysis still has to do),
    oldest import first: [{problem_id, text, prompt (text or messages), completions [K]}]."""
    sql = ("select r.problem_id, p.text, r.prompt, r.prompt_is_messages, r.completion from rollouts r "
           "join problems p on p.id = r.problem_id where r.model_id = ? and not exists (select 1 from traces t "
           "where t.problem_id = r.problem_id and t.model_id = r.model_id) order by r.created_at, r.rowid")
    groups: dict[str, dict] = {}
    for row in db.query(sql, [model_id]):
        group = groups.get(row["problem_id"])
        if group is None:
            if limit is not None and len(groups) >= limit:
                continue
            prompt = json.loads(row["prompt"]) if row["prompt_is_messages"] else row["prompt"]
            group = groups[row["problem_id"]] = {"problem_id": row["problem_id"], "text": row["text"],
                                                 "prompt": prompt, "completions": []}
        group["completions"].append(row["completion"])
    return list(groups.values())


# --------------------------------------------------------------------------- overlap: two labels on one item

OVERLAP_HASH_SPAN = 16 ** 8  # the first 8 hex digits of a sha256 as a fraction in [0, 1)


def _refresh_verdict(db, problem_id: str) -> None:
    """problems.verdict := the newest label in force on the problem (None when none is left)."""
    db.execute(f"update problems set verdict = (select f.verdict from ({labels_not_undone_sql(VERDICTS)}) f "
               "where f.problem_id = ? order by f.id desc limit 1) where id = ?", [problem_id, problem_id])


def set_overlap_share(db: sqlite_utils.Database, *, user, share: float) -> None:
    """A lead (or the local operator) sets the share of annotate picks that a second, different
    annotator also labels. Audited."""
    if not 0.0 <= float(share) <= 1.0:
        raise StoreError("The overlap share must be between 0 and 1 (e.g. 0.1 for 10 %).")
    with immediate(db):
        actor = _actor(db, user, "lead")
        before = db.execute("select share from overlap_settings order by id desc limit 1").fetchone()
        db["overlap_settings"].insert({"share": float(share), "set_by": actor, "created_at": now()})
        _audit(db, actor=actor, action="overlap share", subject=None,
               before=None if before is None else f"{before[0]:g}", after=f"{float(share):g}")


def overlap_share(db: sqlite_utils.Database) -> float:
    """The overlap share in force (0 until a lead sets one)."""
    row = db.execute("select share from overlap_settings order by id desc limit 1").fetchone()
    return float(row[0]) if row else 0.0


def is_overlap_pick(problem_id: str, share: float) -> bool:
    """Whether an item is among the `share` of items labelled twice. A hash of the id, not the
    router's value or a random draw: a uniform sample of the picks, the same in every process and
    after every re-route, so raising the share only adds items."""
    import hashlib

    point = int(hashlib.sha256(str(problem_id).encode("utf-8")).hexdigest()[:8], 16) / OVERLAP_HASH_SPAN
    return point < float(share)


def verdicts_by_annotator(db: sqlite_utils.Database) -> list[dict]:
    """Each annotator's newest verdict in force per problem (a lead's review label left out):
    {label_id, problem_id, annotator, verdict, gold_answer, shown_answer, created_at}, oldest first."""
    return list(db.query(
        "select l.id as label_id, l.problem_id, l.annotator, l.verdict, l.gold_answer, l.shown_answer, "
        f"l.created_at from labels l join ({_NEWEST_PER_ANNOTATOR}) m on m.id = l.id order by l.id"))


# the id of each annotator's newest verdict in force per problem, a lead's review label left out
_NEWEST_PER_ANNOTATOR = (f"select max(f.id) as id from ({labels_not_undone_sql(VERDICTS)}) f "
                         "where not exists (select 1 from reviews r where r.label_id = f.id) "
                         "group by f.problem_id, f.annotator")


def _labellers(db) -> dict[str, list[str]]:
    """{problem_id: annotators with a verdict in force on it, first labeller first}."""
    out: dict[str, list[str]] = {}
    for row in verdicts_by_annotator(db):
        names = out.setdefault(row["problem_id"], [])
        if row["annotator"] not in names:
            names.append(row["annotator"])
    return out


def second_labels_spent(db: sqlite_utils.Database) -> int:
    """Verdicts in force beyond the first on a problem (a lead's review label is not one)."""
    return db.execute(f"select count(*) - count(distinct l.problem_id) from labels l "
                      f"join ({_NEWEST_PER_ANNOTATOR}) m on m.id = l.id").fetchone()[0]


def _waiting_second_label(db, annotator: str, stamp: float) -> list[str]:
    """Overlap picks with one labeller (not `annotator`), nobody else leasing them and not
    skipped by `annotator`: best router value first."""
    share = overlap_share(db)
    if share <= 0:
        return []
    held = {pid for pid, who in db.execute(
        "select problem_id, annotator from assignments where expires_at > ?", [stamp]) if who != annotator}
    skipped = {r[0] for r in db.execute("select problem_id from skips where annotator = ?", [annotator])}
    open_items = [pid for pid, names in _labellers(db).items()
                  if len(names) == 1 and names[0] != annotator and pid not in held and pid not in skipped
                  and is_overlap_pick(pid, share)]
    if not open_items:
        return []
    value = dict(db.execute("select problem_id, coalesce(value, 0) from routes where problem_id in "
                            f"({', '.join('?' for _ in open_items)})", open_items).fetchall())
    return sorted(open_items, key=lambda pid: -value.get(pid, 0.0))


def next_item_with_overlap(db: sqlite_utils.Database, annotator: str, *,
                           lease_minutes: float = LEASE_MINUTES) -> dict | None:
    """next_item, with overlap: an annotator's live lease first; then an overlap pick waiting for
    a second label from someone who did not label it (while the budget lasts); then next_item.
    The returned dict has `second_label` True for an overlap item (save it with save_second_label).
    Only known users who may label get items; a second-label lease is taken only while the budget
    has room beyond the labels spent and the items leased, like next_item's."""
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        held = db.execute("select a.problem_id, p.verdict from assignments a join problems p on "
                          "p.id = a.problem_id where a.annotator = ? and a.expires_at > ? "
                          "order by a.leased_at desc limit 1", [annotator, stamp]).fetchone()
        problem_id = None
        if held and held[1] is not None and annotator not in _labellers(db).get(held[0], [annotator]):
            problem_id = held[0]
        elif held is None and overlap_share(db) > 0 and _room_for_lease(db, stamp):  # leases reserve budget
            waiting = _waiting_second_label(db, annotator, stamp)
            problem_id = waiting[0] if waiting else None
        if problem_id is not None:
            db.execute("insert or replace into assignments (problem_id, annotator, leased_at, expires_at) "
                       "values (?, ?, ?, ?)", [problem_id, annotator, stamp, stamp + 60 * lease_minutes])
            return {**queue_item(db, problem_id), "second_label": True}
    item = next_item(db, annotator, lease_minutes=lease_minutes)
    return None if item is None else {**item, "second_label": False}


def save_second_label(db: sqlite_utils.Database, *, problem_id: str, annotator: str, verdict: str,
                      gold_answer: str | None = None, shown_answer: str | None = None,
                      seconds: float | None = None) -> int:
    """Append the second label of an overlap item: refused for anyone who labelled it already,
    when another annotator holds the lease, or when the item is not an overlap pick waiting for
    one. The newest verdict is the one in force until a lead reviews a disagreement. Like
    save_label: only a known user who may label, under their own unexpired lease, and within the
    budget (spent never passes the total)."""
    if verdict not in VERDICTS + ("skip",):
        raise InvalidLabel(f"Unknown verdict {verdict!r}.")
    if verdict == "wrong" and not gold_answer:
        raise InvalidLabel("A 'wrong' label needs the gold answer.")
    stamp = now()
    with immediate(db):
        _labeller(db, annotator)
        names = _labellers(db).get(problem_id, [])
        if annotator in names:
            raise LeaseError("You labelled this problem already; a second label must come from someone else.")
        if not _holds_lease(db, problem_id, annotator, stamp):
            holder = _lease_holder(db, problem_id, stamp)
            if holder is not None and holder != annotator:
                raise LeaseError(f"{holder} is labelling this problem right now.")
            raise LeaseError("You hold no lease on this problem (it expired, or a budget change released it); "
                             "take the next item from the queue.")
        if len(names) != 1 or not is_overlap_pick(problem_id, overlap_share(db)):
            raise LeaseError("This problem is not waiting for a second label.")
        if verdict != "skip":
            budget = db.execute("select total from budgets order by id desc limit 1").fetchone()
            if budget is not None and labels_spent(db) >= budget[0]:
                raise BudgetSpent("The label budget is spent; a lead can raise it on the Budget page.")
        version = db.execute("select router_version from routes where problem_id = ?", [problem_id]).fetchone()
        label_id = db["labels"].insert({
            "problem_id": problem_id, "annotator": annotator, "verdict": verdict,
            "gold_answer": gold_answer, "shown_answer": shown_answer, "seconds": seconds,
            "created_at": stamp, "undoes": None, "router_version": version[0] if version else None,
        }).last_pk
        if verdict == "skip":
            db.execute("insert or replace into skips values (?, ?, ?)", [problem_id, annotator, stamp])
        else:
            _refresh_verdict(db, problem_id)
        db.execute("delete from assignments where problem_id = ?", [problem_id])
    return label_id


def reviews(db: sqlite_utils.Database) -> list[dict]:
    """Reviews whose label is in force (not undone), oldest first: {problem_id, lead, label_id, created_at}."""
    return list(db.query("select r.problem_id, r.lead, r.label_id, r.created_at from reviews r where not exists "
                         "(select 1 from labels u where u.undoes = r.label_id) order by r.id"))


def resolve_review(db: sqlite_utils.Database, *, lead: str, problem_id: str, verdict: str,
                   gold_answer: str | None = None, shown_answer: str | None = None) -> int:
    """A lead settles a disagreement: their verdict is appended as the label in force (it spends
    no budget and is left out of agreement) and the review is recorded, with the change of the
    verdict in force in the audit trail. Returns the label id."""
    if verdict not in VERDICTS:
        raise StoreError(f"Unknown verdict {verdict!r}.")
    if verdict == "wrong" and not gold_answer:
        raise StoreError("A 'wrong' label needs the gold answer.")
    stamp = now()
    with immediate(db):
        actor = _actor(db, lead, "lead")
        if len(_labellers(db).get(problem_id, [])) < 2:
            raise StoreError("Only a problem labelled by two annotators can be reviewed.")
        before = db.execute("select verdict from problems where id = ?", [problem_id]).fetchone()
        label_id = db["labels"].insert({
            "problem_id": problem_id, "annotator": actor, "verdict": verdict, "gold_answer": gold_answer,
            "shown_answer": shown_answer, "seconds": None, "created_at": stamp, "undoes": None,
            "router_version": None}).last_pk
        db["reviews"].insert({"problem_id": problem_id, "lead": actor, "label_id": label_id, "created_at": stamp})
        _refresh_verdict(db, problem_id)
        _audit(db, actor=actor, action="review", subject=problem_id, before=before[0] if before else None,
               after=verdict if verdict != "wrong" else f"wrong (gold {gold_answer})")
    return label_id
