"""The layers the README promises, read from the source with `ast` (as import-linter or pytest-archon do).

Rules, each checked over every module of `pivottrace/` (views/ included), `pages/*.py` and `app.py`:

1. Pages and `app.py` import nothing from `pivottrace` but `views` and `charts`.
2. Only `store.py` runs SQL. A module "runs SQL" when it does any of:
   - imports `sqlite3` or `sqlite_utils`;
   - calls a method named `execute`, `executemany`, `executescript`, `query` or `table` (the
     sqlite3 / sqlite-utils ways in; nothing else in the package uses these names);
   - subscripts a name called `db`, `conn`, `connection` or `database` with a string, e.g.
     `db["problems"]` (a sqlite-utils table);
   - holds a string literal that reads as SQL: it starts with a statement keyword (select,
     insert, update, delete, create, drop, alter, begin, with, replace) and later has a clause
     keyword (from, into, set, table, index, view, where, values, select, transaction, ...), or
     it is a `pragma <name>`. Plain messages such as "Update the budget" do not count.
3. Only `trace.py` imports torch or transformers. And the Streamlit process (`app.py`, pages,
   `views/`, `charts.py`) does not import `trace` either, not even inside a function (the
   Inspect page's live trace runs in a worker job); a subprocess check confirms that importing
   views and charts loads no torch.
4. `store.py` imports no pipeline stage: from the package it may import only `records` (plain
   data: result records, FeatureTable, column names) and `vocab` (the route and verdict names).

Each checker is also run on a small bad example, so the test can fail.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pivottrace"

PAGE_IMPORTS = {"pivottrace.views", "pivottrace.charts"}
SQL_METHODS = {"execute", "executemany", "executescript", "query", "table"}
DB_NAMES = {"db", "conn", "connection", "database"}
SQL_MODULES = {"sqlite3", "sqlite_utils"}
# A statement keyword first, then a clause keyword later on (so "Update the budget" in a message
# is not SQL), or a pragma.
SQL_LITERAL = re.compile(
    r"^\s*(?:(?:select|insert|update|delete|create|drop|alter|begin|with|replace)\s.*?"
    r"\b(?:from|into|set|table|index|view|where|values|select|transaction|immediate|deferred|exclusive)\b"
    r"|pragma\s+\w+)", re.IGNORECASE | re.DOTALL)
TORCH_MODULES = {"torch", "transformers"}
STORE_MAY_IMPORT = {"pivottrace.records", "pivottrace.vocab"}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def app_modules() -> list[Path]:
    return sorted((ROOT / "pages").glob("*.py")) + [ROOT / "app.py"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, module: str, *, is_package: bool = False):
    """(absolute module imported, enclosing function name or None, line) for every import, with
    `from x import y` also yielding `x.y` (y may be a submodule) and relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]

    def walk(node, function):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield alias.name, function, child.lineno
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    source = ".".join(base + ([child.module] if child.module else []))
                else:
                    source = child.module or ""
                yield source, function, child.lineno
                for alias in child.names:
                    yield f"{source}.{alias.name}", function, child.lineno
            yield from walk(child, inner)

    yield from walk(tree, None)


def _parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports_of(path: Path):
    return imports(_parse(path), _module_name(path), is_package=path.name == "__init__.py")


def _is(name: str, modules) -> bool:
    return any(name == m or name.startswith(m + ".") for m in modules)


# --------------------------------------------------------------------------- checkers

def page_violations(tree: ast.AST, module: str = "pages.page") -> list[str]:
    out = []
    for name, _, line in imports(tree, module):
        if name == "pivottrace":
            continue  # `from pivottrace import x` is judged by its `pivottrace.x`
        if _is(name, {"pivottrace"}) and not _is(name, PAGE_IMPORTS):
            out.append(f"line {line}: imports {name}")
    return out


def sql_violations(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is(a.name, SQL_MODULES) for a in node.names):
            out.append(f"line {node.lineno}: imports {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.ImportFrom) and node.module and _is(node.module, SQL_MODULES):
            out.append(f"line {node.lineno}: imports from {node.module}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_METHODS:
            out.append(f"line {node.lineno}: calls .{node.func.attr}(")
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in DB_NAMES
              and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
            out.append(f"line {node.lineno}: table access {node.value.id}[{node.slice.value!r}]")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_LITERAL.match(node.value):
            out.append(f"line {node.lineno}: SQL literal {node.value[:40]!r}")
    return out


def torch_violations(tree: ast.AST, module: str) -> list[str]:
    return [f"line {line}: imports {name}" for name, _, line in imports(tree, module) if _is(name, TORCH_MODULES)]


def trace_violations(tree: ast.AST, module: str) -> list[str]:
    return [f"line {line}: imports {name} in {function or 'module scope'}"
            for name, function, line in imports(tree, module) if _is(name, {"pivottrace.trace"})]


def store_violations(tree: ast.AST) -> list[str]:
    return [f"line {line}: imports {name}" for name, _, line in imports(tree, "pivottrace.store")
            if name != "pivottrace" and _is(name, {"pivottrace"}) and not _is(name, STORE_MAY_IMPORT)]


# --------------------------------------------------------------------------- the rules on the code

def test_pages_import_only_views_and_charts():
    bad = {_rel(p): v for p in app_modules() if (v := page_violations(_parse(p), _module_name(p)))}
    assert not bad, f"pages and app.py may import only pivottrace.views and pivottrace.charts: {bad}"


def test_only_store_runs_sql():
    bad = {_rel(p): v for p in package_modules() + app_modules()
           if p != PACKAGE / "store.py" and (v := sql_violations(_parse(p)))}
    assert not bad, f"SQL outside store.py (add a named store function instead): {bad}"


def test_only_trace_imports_torch_or_transformers():
    bad = {_rel(p): v for p in package_modules() + app_modules()
           if p != PACKAGE / "trace.py" and (v := torch_violations(_parse(p), _module_name(p)))}
    assert not bad, f"torch/transformers imported outside trace.py: {bad}"


def test_the_streamlit_process_never_imports_trace():
    streamlit_side = app_modules() + sorted((PACKAGE / "views").glob("*.py")) + [PACKAGE / "charts.py"]
    bad = {_rel(p): v for p in streamlit_side if (v := trace_violations(_parse(p), _module_name(p)))}
    assert not bad, f"the app process imports trace.py (torch); run the model in a jobs.py worker: {bad}"


def test_importing_views_and_charts_loads_no_torch():
    code = ("import sys; import pivottrace.views, pivottrace.charts; "
            "print(sorted(m for m in ('torch', 'transformers', 'pivottrace.trace') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_store_imports_no_pipeline_stage():
    bad = store_violations(_parse(PACKAGE / "store.py"))
    assert not bad, f"store.py may import only {sorted(STORE_MAY_IMPORT)} from the package: {bad}"


# --------------------------------------------------------------------------- the checkers can fail

@pytest.mark.parametrize("source, bad", [
    ("from pivottrace import store, views", True),
    ("import pivottrace.jobs", True),
    ("from pivottrace.store import open_db", True),
    ("from pivottrace.views import md", False),
    ("from pivottrace import charts, views\nimport streamlit as st", False),
])
def test_page_checker(source, bad):
    assert bool(page_violations(ast.parse(source))) == bad


@pytest.mark.parametrize("source", [
    "db.execute('x')",
    "rows = list(db.query(sql))",
    "n = db['problems'].count",
    "import sqlite3",
    "from sqlite_utils import Database",
    "SQL = 'SELECT id FROM problems'",
    "def f():\n    return '''\n    update labels set verdict = 1'''",
    "rows = run('PRAGMA database_list')",
    "BEGIN = 'BEGIN IMMEDIATE'",
])
def test_sql_checker_catches(source):
    assert sql_violations(ast.parse(source))


def test_sql_checker_passes_plain_code():
    assert not sql_violations(ast.parse("rows = store.users(db)\nx = data['key']\nmsg = 'Selected 3 items'\n"
                                      "hint = 'Update the budget on the Budget page'\nw = 'With no pool, nothing to do'"))


def test_torch_and_trace_checkers():
    assert torch_violations(ast.parse("import torch.nn as nn"), "pivottrace.x")
    assert torch_violations(ast.parse("from transformers import AutoModel"), "pivottrace.x")
    relative = ast.parse("def f():\n    from ..trace import Tracer\n")
    assert trace_violations(relative, "pivottrace.views.inspect")
    assert not trace_violations(ast.parse("from .. import jobs\n"), "pivottrace.views.inspect")


def test_store_checker():
    assert store_violations(ast.parse("from .features import FeatureTable"))
    assert store_violations(ast.parse("from . import pipeline"))
    assert not store_violations(ast.parse("from .records import FeatureTable\nimport numpy as np"))


# ------------------------------------------------------------------ one source for the route names

def route_list_violations(tree: ast.AST) -> list[str]:
    """Collection literals (tuple, list, set, dict keys) naming two or more routes: a copy of
    vocab.ROUTES that would drift from it."""
    from pivottrace.vocab import ROUTES

    bad = []
    for node in ast.walk(tree):
        items = node.keys if isinstance(node, ast.Dict) else node.elts if isinstance(
            node, (ast.Tuple, ast.List, ast.Set)) else []
        named = [i.value for i in items if isinstance(i, ast.Constant) and i.value in ROUTES]
        if len(named) >= 2:
            bad.append(f"line {node.lineno}: {named}")
    return bad


def test_pages_views_and_charts_take_the_routes_from_vocab():
    modules = app_modules() + sorted((PACKAGE / "views").glob("*.py")) + [PACKAGE / "charts.py"]
    bad = {_rel(p): v for p in modules if (v := route_list_violations(_parse(p)))}
    assert not bad, f"hard-coded route lists (use vocab.ROUTES / views.ROUTE_CHOICES): {bad}"
    assert route_list_violations(ast.parse('ROUTES = ("annotate", "self_train")'))
    assert route_list_violations(ast.parse('COLOURS = {"low_priority": 1, "deferred": 2}'))
    assert not route_list_violations(ast.parse('x = ("annotate", "accept")'))
