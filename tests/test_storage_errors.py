"""Storage failures (issue 13): each is one `Error: ...` line that says what to do, with its own
exit code, and no traceback unless --debug. Disk-full and read-only are real SQLite errors,
injected where store.py makes its connection (a page cap, a query-only connection)."""

import errno
import json
import os
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from pivottrace import store
from pivottrace.cli import app
from pivottrace.datasets import demo_problems
from pivottrace.synthetic import synthetic_trace

from conftest import build_app_db, lease_and_label


def run(*args, env=None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.output


def assert_one_error_line(output: str, *words: str):
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    for word in words:
        assert word in errors[0], errors[0]


def pool(tmp_path, n: int, name: str = "pool.jsonl", width: int = 300):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"question": f"Problem {i}: " + "word " * width}) + "\n"
                            for i in range(n)))
    return path


def test_a_file_that_is_not_a_database(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello, this is not sqlite\n" * 50)
    for command in (["status"], ["ingest", pool(tmp_path, 1)], ["route"], ["users", "add", "ann"]):
        code, output = run(*command, "--db", notes)
        assert code == store.NotADatabase.exit_code == 3
        assert_one_error_line(output, "is not a PivotTrace database", "--db")
    assert notes.read_text() == "hello, this is not sqlite\n" * 50  # untouched


def test_another_programs_sqlite_database_is_left_alone(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("create table invoices (id integer primary key)")
    code, output = run("ingest", pool(tmp_path, 1), "--db", other)
    assert code == 3
    assert_one_error_line(output, "another program")
    tables = {r[0] for r in sqlite3.connect(other).execute("select name from sqlite_master")}
    assert tables == {"invoices"}


def test_status_of_a_new_path_creates_nothing(tmp_path):
    new = tmp_path / "sub" / "fresh.db"
    code, output = run("status", "--db", new)
    assert code == store.NoDatabase.exit_code == 6
    assert_one_error_line(output, "No database at", "pivottrace ingest")
    assert not new.exists() and not new.parent.exists()
    code, _ = run("ingest", pool(tmp_path, 2), "--db", new)  # a command that adds data may create it
    assert code == 0 and new.exists()


def cap_pages(monkeypatch, extra_pages: int = 0):
    """Every new connection may grow its database by `extra_pages` pages only: SQLite's own
    SQLITE_FULL, as on a full disk."""
    real = store._connect

    def capped(path):
        conn = real(path)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")
        return conn
    monkeypatch.setattr(store, "_connect", capped)


def test_full_disk_on_ingest_route_and_users_add(tmp_path, monkeypatch):
    path = tmp_path / "app.db"
    db = build_app_db(path, n_problems=12)
    rng = np.random.default_rng(1)
    new = demo_problems(30, seed=7)  # traced but not routed yet: routing them needs new pages
    store.insert_problems(db, new)
    for problem in new:
        store.save_trace(db, problem.id, "synth", synthetic_trace(problem, rng))
    db.execute("VACUUM")
    before = sqlite3.connect(path).execute("select count(*) from problems").fetchone()[0]
    cap_pages(monkeypatch)
    big = pool(tmp_path, 2000)
    for command in (("ingest", big), ("route",), ("users", "add", "cy", "--no-password", "--email", "c" * 5000 + "@example.org")):
        code, output = run(*command, "--db", path)
        assert code == store.StorageFull.exit_code == 5, (command, output)
        assert_one_error_line(output, "is full", "Free some space")
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    assert conn.execute("select count(*) from problems").fetchone()[0] == before  # nothing half-written
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_read_only_database(tmp_path, monkeypatch):
    path = tmp_path / "app.db"
    store.open_db(path)
    real = store._connect

    def read_only(p):
        conn = real(p)
        conn.execute("PRAGMA query_only = 1")
        return conn
    monkeypatch.setattr(store, "_connect", read_only)
    code, output = run("ingest", pool(tmp_path, 3), "--db", path)
    assert code == store.ReadOnlyStorage.exit_code == 4
    assert_one_error_line(output, "read-only", "permissions")


def test_debug_shows_the_traceback(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database")
    code, output = run("--debug", "status", "--db", notes)
    assert code == 3 and "Traceback" in output and "Error: " in output


def test_export_under_a_file_and_into_a_read_only_folder(tmp_path, monkeypatch):
    path = tmp_path / "app.db"
    db = build_app_db(path, n_problems=12)
    for row in list(db.query("select problem_id from routes where route = 'annotate' limit 3")):
        lease_and_label(db, row["problem_id"], "ann", "correct", shown_answer="1")
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("x")
    code, output = run("export", "-f", "trl", "-o", a_file / "out.jsonl", "--db", path)
    assert code == store.CannotWriteFile.exit_code == 7
    assert_one_error_line(output, "a_file.txt", "not a folder")

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes anywhere: the OS refuses the rename instead
        def refuse(src, dst, *args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        monkeypatch.setattr(os, "replace", refuse)
    code, output = run("export", "-f", "trl", "-o", locked / "out.jsonl", "--db", path)
    monkeypatch.undo()
    locked.chmod(0o755)
    assert code == 7
    assert_one_error_line(output, str(locked), "read-only", "permissions")
    assert not list(locked.iterdir())  # no temporary file left behind


def test_an_unexpected_error_is_one_line_too(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something odd")
    monkeypatch.setattr(store, "status", broken)
    store.open_db(tmp_path / "s.db")
    code, output = run("status", "--db", tmp_path / "s.db")
    assert code == 1
    assert_one_error_line(output, "RuntimeError", "--debug")


def test_writes_outside_the_cli_raise_a_storage_error_too(tmp_path, monkeypatch):
    """The app and background jobs call store directly: their writes fail as one clear line too."""
    path = tmp_path / "app.db"
    store.open_db(path)
    cap_pages(monkeypatch)
    db = store.open_db(path)
    with pytest.raises(store.StorageFull, match="is full"):
        store.insert_problems(db, demo_problems(500, seed=3))
    monkeypatch.undo()
    assert store.open_db(path)["problems"].count == 0


def test_the_app_on_a_file_that_is_not_a_database_shows_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    notes = tmp_path / "notes.txt"
    notes.write_text("not a database")
    monkeypatch.setenv("PIVOTTRACE_DB", str(notes))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120).run()
    assert not at.exception
    assert [e.value for e in at.error] and "is not a PivotTrace database" in at.error[0].value
    assert notes.read_text() == "not a database"


def test_the_pool_page_upload_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    from pivottrace import views

    path = tmp_path / "app.db"
    store.open_db(path)
    cap_pages(monkeypatch)
    db = store.open_db(path)
    data = b"".join(json.dumps({"question": f"Problem {i}: " + "word " * 300}).encode() + b"\n" for i in range(300))
    with pytest.raises(views.InvalidInput, match="is full.*Free some space"):
        views.ingest_upload(db, data, "pool.jsonl")
