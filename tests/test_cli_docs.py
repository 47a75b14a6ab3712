"""Every `pivottrace` command and every one of its options is documented in the README (as
sqlite-utils checks its CLI reference): a command or flag added without a word for users fails here."""
import re
from pathlib import Path

import pytest
import typer

from pivottrace.cli import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(command, prefix=()):
    """(command words, [--long option names]) for every leaf command of the CLI."""
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, prefix + (name,))
        return
    options = sorted({name for param in command.params if getattr(param, "opts", None)
                      for name in (*param.opts, *getattr(param, "secondary_opts", ()))
                      if name.startswith("--") and name != "--help"})
    yield " ".join(prefix), options


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_the_cli_has_the_commands_we_expect_to_document():
    names = {name for name, _ in COMMANDS}
    assert {"ingest", "trace", "route", "export", "eval", "users add", "budget set"} <= names


def reference_row(name: str) -> str | None:
    """The README's command-reference table row for `pivottrace NAME`, or None."""
    match = re.search(rf"^\| `pivottrace {re.escape(name)}` \|.*$", README, re.M)
    return match.group(0) if match else None


@pytest.mark.parametrize("name,options", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_and_option_is_in_the_readme(name, options):
    row = reference_row(name)
    assert row is not None, f"`pivottrace {name}` has no row in README.md's command reference"
    missing = [option for option in options if not re.search(rf"`{re.escape(option)}[`= \[]", row)]
    assert not missing, f"`pivottrace {name}` options missing from its README row: {', '.join(missing)}"


def test_the_reference_names_no_command_that_does_not_exist():
    documented = set(re.findall(r"^\| `pivottrace ([a-z -]+)` \|", README, re.M))
    assert documented <= {name for name, _ in COMMANDS}
