"""Read problem pools from JSONL / CSV / Parquet, and generate the built-in demo problems.

Input: a file path (or nothing, for the demo). Output: `Problem` rows with content-hash ids and
the gold answer kept apart, plus a `RejectedRow` for each malformed row with its line number.
It does not write to the database (see store.py) and never looks at a model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .answers import extract_gold

MAX_TEXT_CHARS = 20_000  # longest problem we accept; GSM8K's longest is ~1k, MATH's ~4k
QUESTION_FIELDS = ("question", "problem", "prompt", "input", "query")
ANSWER_FIELDS = ("answer", "solution", "gold", "target", "output")


class PoolFormatError(ValueError):
    """The pool file cannot be read at all (unknown extension, unreadable file)."""


@dataclass
class Problem:
    """One unlabeled problem. `gold` is hidden from routing; only the evaluation reads it."""

    id: str  # content hash of the normalised text (16 hex chars)
    text: str
    source: str
    gold: str | None = None  # extracted final answer, e.g. "18"
    meta: dict = field(default_factory=dict)


@dataclass
class RejectedRow:
    line: int  # 1-based line (JSONL/CSV) or row (Parquet) number
    reason: str


@dataclass
class LoadResult:
    problems: list[Problem]
    rejected: list[RejectedRow]


def problem_id(text: str) -> str:
    """Content hash: the same text (modulo whitespace) always gets the same id."""
    normalised = re.sub(r"\s+", " ", text).strip()
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def _pick(row: dict, chosen: str | None, candidates: tuple[str, ...]) -> str | None:
    if chosen:
        return chosen if chosen in row else None
    return next((name for name in candidates if name in row), None)


def _to_problem(row, line: int, source: str, question_field, answer_field) -> Problem | RejectedRow:
    if not isinstance(row, dict):
        return RejectedRow(line, "row is not an object with named fields")
    qname = _pick(row, question_field, QUESTION_FIELDS)
    if qname is None:
        wanted = question_field or "/".join(QUESTION_FIELDS)
        return RejectedRow(line, f"missing question field ({wanted})")
    text = row[qname]
    if not isinstance(text, str):
        return RejectedRow(line, f"field {qname!r} is not text")
    text = text.strip()
    if not text:
        return RejectedRow(line, f"field {qname!r} is empty")
    if len(text) > MAX_TEXT_CHARS:
        return RejectedRow(line, f"text is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    aname = _pick(row, answer_field, ANSWER_FIELDS)
    raw_answer = row.get(aname) if aname else None
    gold = extract_gold(None if raw_answer is None else str(raw_answer))
    return Problem(problem_id(text), text, source, gold)


def read_pool(path: str | Path, *, question_field: str | None = None,
              answer_field: str | None = None, source: str | None = None) -> LoadResult:
    """Read a pool. Good rows load even when others are rejected; duplicates within the file collapse."""
    path = Path(path)
    if not path.is_file():
        raise PoolFormatError(f"No such file: {path}")
    source = source or path.stem
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = _jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise PoolFormatError(f"Unknown pool format {suffix!r}: use .jsonl, .csv, .tsv or .parquet")
    return _collect(rows, source, question_field, answer_field)


def read_pool_bytes(data: bytes, filename: str, **options) -> LoadResult:
    """Same as read_pool, for an uploaded file's bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(filename).name
        path.write_bytes(data)
        options.setdefault("source", Path(filename).stem)
        return read_pool(path, **options)


def _collect(rows, source, question_field, answer_field) -> LoadResult:
    problems: dict[str, Problem] = {}
    rejected: list[RejectedRow] = []
    for line, row in rows:
        if isinstance(row, RejectedRow):
            rejected.append(row)
            continue
        result = _to_problem(row, line, source, question_field, answer_field)
        if isinstance(result, RejectedRow):
            rejected.append(result)
        else:
            problems.setdefault(result.id, result)
    return LoadResult(list(problems.values()), rejected)


def _jsonl_rows(path: Path):
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                yield line_no, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield line_no, RejectedRow(line_no, "not valid UTF-8")
            except json.JSONDecodeError as err:
                yield line_no, RejectedRow(line_no, f"bad JSON: {err.msg} at column {err.colno}")


def _csv_rows(path: Path, delimiter: str):
    csv.field_size_limit(10 * MAX_TEXT_CHARS * 100)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PoolFormatError(f"{path} is not UTF-8 text: {err}") from err
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        line = reader.line_num
        if None in row:  # more cells than header columns
            yield line, RejectedRow(line, f"{len(row[None])} more cells than the header has columns")
            continue
        yield line, row


def _parquet_rows(path: Path):
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise PoolFormatError(f"Cannot read Parquet file {path}: {err}") from err
    for index, row in enumerate(table.to_pylist(), start=1):
        yield index, row


# --------------------------------------------------------------------------- demo generator

_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Luca"]
_ITEMS = [("apples", "apple"), ("marbles", "marble"), ("stickers", "sticker"), ("books", "book"),
          ("pencils", "pencil"), ("cookies", "cookie"), ("shells", "shell"), ("cards", "card")]


def _step_add(rng, name, item, value):
    extra = rng.randint(2, 9)
    wording = rng.choice([
        "Then {n} finds {x} more {i}.",
        "After that, a friend gives {n} {x} {i}.",
        "{n} buys {x} more {i}.",
    ])
    return value + extra, wording.format(n=name, x=extra, i=item)


def _step_sub(rng, name, item, value):
    if value < 3:
        return _step_add(rng, name, item, value)
    lost = rng.randint(1, min(9, value - 1))
    wording = rng.choice([
        "Then {n} gives away {x} {i}.",
        "{n} loses {x} of the {i}.",
        "Next, {n} uses {x} {i}.",
    ])
    return value - lost, wording.format(n=name, x=lost, i=item)


def _step_mul(rng, name, item, value):
    if value > 12:
        return _step_add(rng, name, item, value)
    factor = rng.randint(2, 4)
    wording = rng.choice([
        "Then the number of {i} {n} has becomes {x} times as many.",
        "{n} then multiplies the pile of {i} by {x}.",
    ])
    return value * factor, wording.format(n=name, x=factor, i=item)


def demo_problem(rng: random.Random, steps: int) -> Problem:
    """One arithmetic word problem with `steps` operations (1-4) and its exact answer."""
    name = rng.choice(_NAMES)
    item = rng.choice(_ITEMS)[0]
    value = rng.randint(2, 9) if steps == 1 else rng.randint(3, 15)
    opening = rng.choice([
        "{n} has {v} {i}.",
        "{n} starts the day with {v} {i}.",
        "There are {v} {i} in {n}'s bag.",
    ]).format(n=name, v=value, i=item)
    sentences = [opening]
    operations = [_step_add, _step_sub] if steps <= 2 else [_step_add, _step_sub, _step_mul]
    for _ in range(steps):
        value, sentence = rng.choice(operations)(rng, name, item, value)
        sentences.append(sentence)
    question = rng.choice([
        "How many {i} does {n} have now?",
        "How many {i} does {n} have in the end?",
        "What is the number of {i} {n} has at the end?",
    ]).format(n=name, i=item)
    text = " ".join(sentences + [question])
    return Problem(problem_id(text), text, "demo", str(value), {"steps": steps})


DEMO_STEP_MIX = (0.8, 0.1, 0.05, 0.05)  # share of 1-, 2-, 3- and 4-step problems. The embedded model gets
# about a third of one-step problems right and almost no longer ones (README), so most are one-step


def demo_problems(n: int = 40, *, seed: int = 0, mix: tuple[float, ...] = DEMO_STEP_MIX) -> list[Problem]:
    """`n` distinct demo problems, deterministic for a seed, with a mix of 1-4 step problems."""
    rng = random.Random(seed)
    problems: dict[str, Problem] = {}
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError("demo generator cannot produce that many distinct problems")
        steps = rng.choices(range(1, len(mix) + 1), weights=mix)[0]
        problem = demo_problem(rng, steps)
        problems.setdefault(problem.id, problem)
    return list(problems.values())


def spread_by_steps(problems: list[Problem]) -> list[Problem]:
    """The same problems, round-robin over their step counts (1, 2, 3, 4, 1, 2, ...; each count's
    problems in their order), so that a handful from the front covers every difficulty."""
    seen: dict = {}
    rank = []
    for index, problem in enumerate(problems):
        steps = problem.meta.get("steps", 0)
        seen[steps] = seen.get(steps, 0) + 1
        rank.append((seen[steps], steps, index))
    return [problems[index] for *_, index in sorted(rank)]

