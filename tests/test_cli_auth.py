"""The CLI's user and budget commands: passwords asked for or read from stdin, never on the
command line; every change made as the local operator and audited as such; the app's address."""

import getpass

import pytest
from typer.testing import CliRunner

from pivottrace import auth, store
from pivottrace.cli import app, is_loopback

runner = CliRunner()
PASSWORD = "a long enough secret"


def cli(db_path, *args, stdin: str | None = None):
    return runner.invoke(app, [*args, "--db", str(db_path)], input=stdin)


def test_users_add_reads_the_password_from_stdin_and_refuses_a_second_add(tmp_path):
    path = tmp_path / "u.db"
    result = cli(path, "users", "add", "lee", "--role", "lead", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "local operator" in result.output
    db = store.open_db(path)
    assert auth.sign_in(db, "lee", PASSWORD).identity.is_lead
    again = cli(path, "users", "add", "lee", "--role", "annotator", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.exit_code == 1 and "already exists" in again.output
    assert store.user_role(db, "lee") == "lead"
    short = cli(path, "users", "add", "ann", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and "at least 8" in short.output and store.user_role(db, "ann") is None


def test_users_add_asks_twice_at_a_prompt(tmp_path, monkeypatch):
    answers = iter([PASSWORD, PASSWORD + "typo"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    result = cli(tmp_path / "p.db", "users", "add", "ann")
    assert result.exit_code == 1 and "differ" in result.output
    answers = iter([PASSWORD, PASSWORD])
    assert cli(tmp_path / "p.db", "users", "add", "ann").exit_code == 0
    assert auth.sign_in(store.open_db(tmp_path / "p.db"), "ann", PASSWORD).identity.role == "annotator"


def test_budget_and_roles_from_the_cli_are_the_local_operators_and_audited(tmp_path):
    path = tmp_path / "b.db"
    assert cli(path, "users", "add", "lee", "--role", "lead", "--no-password", "--email", "lee@example.org").exit_code == 0
    assert cli(path, "budget", "set", "50", "--cost", "2").exit_code == 0
    demote = cli(path, "users", "role", "lee", "annotator")
    assert demote.exit_code == 1 and "last lead" in demote.output
    assert cli(path, "budget", "set", "50", "--user", "lee").exit_code != 0  # no "--user": nobody to impersonate
    db = store.open_db(path)
    me = f"local:{getpass.getuser()}"
    assert [(r["actor"], r["action"], r["after"]) for r in reversed(store.audit_trail(db))] == [
        (me, "user added", "lead"), (me, "email", "lee@example.org"), (me, "budget", "50 labels at 2 per label")]
    listing = cli(path, "users", "list")
    assert listing.output.split() == ["lee", "lead", "lee@example.org", "-"]
    assert "budget" in cli(path, "audit").output


@pytest.mark.parametrize("address, local", [("127.0.0.1", True), ("127.0.1.1", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                            ("example.org", False)])
def test_only_loopback_addresses_count_as_local(address, local):
    assert is_loopback(address) is local
