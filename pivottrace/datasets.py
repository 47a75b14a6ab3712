"""Read problem pools from JSONL / CSV / Parquet, and generate the built-in demo problems.

Input: a file path (or nothing, for the demo). Output: `Problem` rows with content-hash ids and
the gold answer kept apart, plus a `RejectedRow` for each malformed row with its line number.
It does not write to the database (see store.py) and never looks at a model.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from .answers import extract_gold

MAX_TEXT_CHARS = 20_000  # longest problem we accept; GSM8K's longest is ~1k, MATH's ~4k
MAX_ANSWER_CHARS = 20_000  # longest answer/solution field; worked solutions in GSM8K and MATH are a few
# thousand characters at most, and a longer one is a pasted document, not an answer
QUESTION_FIELDS = ("question", "problem", "prompt", "input", "query")
ANSWER_FIELDS = ("answer", "solution", "gold", "target", "output")
BOM = "\ufeff"  # Excel and Notepad put one before UTF-8 text; it is not part of the first row
CSV_FIELD_LIMIT = 2 * max(MAX_TEXT_CHARS, MAX_ANSWER_CHARS)  # the csv module's own cap on a field: it
# also bounds how far a quote left open can run before the record is rejected and reading resumes
POOL_SUFFIXES = ".jsonl, .ndjson, .json, .csv, .tsv or .parquet"


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
    line: int  # 1-based line (JSONL/CSV/JSON) or row (Parquet) number where the row starts
    reason: str
    item: int | None = None  # 1-based item of a JSON array (several may share a line)

    @property
    def where(self) -> str:
        return f"line {self.line}" + ("" if self.item is None else f", item {self.item}")


@dataclass
class LoadResult:
    """What a pool file held. Every row is accounted for: `rows == loaded + len(rejected) + blank`.

    A row is a line of JSONL, a record of CSV/TSV (the header not counted; a quoted field may
    span lines), an item of a JSON array, a row of Parquet.
    """

    problems: list[Problem]  # distinct problems (a text repeated in the file loads once)
    rejected: list[RejectedRow]
    rows: int = 0
    loaded: int = 0  # rows that became a problem, repeats within the file included
    blank: int = 0  # empty lines, skipped

    @property
    def repeats(self) -> int:
        return self.loaded - len(self.problems)


def problem_id(text: str) -> str:
    """Content hash: the same text (modulo whitespace) always gets the same id."""
    normalised = re.sub(r"\s+", " ", text).strip()
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


def _pick(row: dict, chosen: str | None, candidates: tuple[str, ...]) -> str | None:
    if chosen:
        return chosen if chosen in row else None
    return next((name for name in candidates if name in row), None)


def _unicode_problem(name: str, text: str) -> str | None:
    """Why `text` cannot be stored as UTF-8 (a lone surrogate such as "\\ud800", or an invalid
    byte kept as one), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        what = "an invalid UTF-8 byte" if "\udc80" <= bad <= "\udcff" else "a lone surrogate"
        return f"field {name!r} holds {what} ({bad!r}) at character {err.start + 1}"
    return None


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
    problem = _unicode_problem(qname, text)
    if problem:
        return RejectedRow(line, problem)
    aname = _pick(row, answer_field, ANSWER_FIELDS)
    raw_answer = row.get(aname) if aname else None
    if raw_answer is not None:
        if isinstance(raw_answer, (dict, list, tuple, set, bytes)):
            return RejectedRow(line, f"field {aname!r} is not text or a number")
        raw_answer = str(raw_answer)
        if len(raw_answer) > MAX_ANSWER_CHARS:
            return RejectedRow(line, f"answer is {len(raw_answer):,} characters; the limit is "
                                     f"{MAX_ANSWER_CHARS:,}")
        problem = _unicode_problem(aname, raw_answer)
        if problem:
            return RejectedRow(line, problem)
    return Problem(problem_id(text), text, source, extract_gold(raw_answer))


def read_pool(path: str | Path, *, question_field: str | None = None,
              answer_field: str | None = None, source: str | None = None) -> LoadResult:
    """Read a pool. Good rows load even when others are rejected; duplicates within the file collapse."""
    path = Path(path)
    if path.is_dir():
        raise PoolFormatError(f"{path} is a folder; give the pool file inside it ({POOL_SUFFIXES}).")
    if not path.exists():
        raise PoolFormatError(f"No such file: {path}")
    if not path.is_file():
        raise PoolFormatError(f"{path} is not a regular file; give a {POOL_SUFFIXES} file.")
    source = source or path.stem
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet"):
        raise PoolFormatError(f"Unknown pool format {suffix!r}: use {POOL_SUFFIXES}")
    return _collect(read_rows(path), source, question_field, answer_field)


def read_rows(path: Path):
    """(line, row | RejectedRow | BLANK[, item]) for every row of a JSONL / NDJSON / JSON array /
    CSV / TSV / Parquet file: the one reader behind pools and rollout files."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_rows(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise PoolFormatError(f"Cannot read {path}: {err.strerror or err}") from err
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") and b"\x00" in data[2:256]:  # a UTF-16 BOM, then
        # text with a zero byte in every ASCII character (two stray bytes alone are one bad row)
        raise PoolFormatError(f"{path} is UTF-16 text; save it as UTF-8 and ingest it again.")
    if suffix in (".csv", ".tsv"):
        return _csv_rows(data, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json" and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return _json_array_rows(data)
    return _jsonl_rows(data)

def read_pool_bytes(data: bytes, filename: str, **options) -> LoadResult:
    """Same as read_pool, for an uploaded file's bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(filename).name
        path.write_bytes(data)
        options.setdefault("source", Path(filename).stem)
        return read_pool(path, **options)


BLANK = object()  # a row reader's mark for an empty line


def _collect(rows, source, question_field, answer_field) -> LoadResult:
    """Turn (line, row | RejectedRow | BLANK) pairs into problems, counting every row."""
    problems: dict[str, Problem] = {}
    result = LoadResult([], [])
    for line, row, *item in rows:  # array readers add the item number
        result.rows += 1
        if row is BLANK:
            result.blank += 1
            continue
        if not isinstance(row, RejectedRow):
            row = _to_problem(row, line, source, question_field, answer_field)
        if isinstance(row, RejectedRow):
            row.item = item[0] if item else None
            result.rejected.append(row)
        else:
            result.loaded += 1
            problems.setdefault(row.id, row)
    result.problems = list(problems.values())
    return result


def _json_error(err: json.JSONDecodeError) -> str:
    message = re.sub(r"\s+at$", "", err.msg)  # "Invalid control character at": the column follows
    return f"bad JSON: {message} at column {err.colno}"


def _parse_json(text: str, line: int):
    """One JSON value, or a RejectedRow saying why not (syntax, nesting, huge numbers)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        return RejectedRow(line, _json_error(err))
    except RecursionError:  # the C parser guards its depth with the recursion limit
        return RejectedRow(line, "JSON nested too deeply (a row is one flat object)")
    except ValueError as err:  # e.g. an integer of more than 4,300 digits
        return RejectedRow(line, f"bad JSON: {err}")


def _jsonl_rows(data: bytes):
    """JSONL / NDJSON: one object per line, each line decoded and parsed on its own."""
    if data.startswith(BOM.encode("utf-8")):
        data = data[len(BOM.encode("utf-8")):]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start another
    for line_no, raw in enumerate(lines, start=1):
        if not raw.strip():
            yield line_no, BLANK
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            yield line_no, RejectedRow(line_no, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at "
                                                f"column {err.start + 1})")
            continue
        yield line_no, _parse_json(text, line_no)


_INVALID_BYTE = re.compile("[\udc80-\udcff]")  # an undecodable byte, kept by errors="surrogateescape"


def _invalid_byte(text: str) -> str | None:
    match = _INVALID_BYTE.search(text)
    if match is None:
        return None
    return f"not valid UTF-8 (byte 0x{ord(match.group()) - 0xdc00:02x})"


def _json_array_rows(data: bytes):
    """A .json file holding one array of objects: each item is a row, numbered by the line it
    starts on. A syntax error ends the array (nothing after it can be located)."""
    text = data.decode("utf-8", errors="surrogateescape").removeprefix(BOM)
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"[ \t\r\n]*")
    position = whitespace.match(text, text.index("[") + 1).end()
    counted, line = 0, 1  # newlines before `counted`, kept up to date as the reader moves on

    def line_at(index: int) -> int:
        nonlocal counted, line
        line += text.count("\n", counted, index)
        counted = index
        return line

    if text.startswith("]", position):
        return
    item = 0
    while True:
        item += 1
        line = line_at(position)
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            yield line, RejectedRow(line, _json_error(err) + "; the rest of the array cannot be read"), item
            return
        except (RecursionError, ValueError) as err:
            reason = "JSON nested too deeply" if isinstance(err, RecursionError) else f"bad JSON: {err}"
            yield line, RejectedRow(line, reason + "; the rest of the array cannot be read"), item
            return
        bad = _invalid_byte(text[position:end])
        yield line, (RejectedRow(line, bad) if bad else value), item
        position = whitespace.match(text, end).end()
        if text.startswith(",", position):
            position = whitespace.match(text, position + 1).end()
        elif text.startswith("]", position):
            tail = text[position + 1:].strip()
            if tail:
                tail_line = line_at(position)
                yield tail_line, RejectedRow(tail_line, "text after the end of the JSON array"), item + 1
            return
        else:
            line = line_at(position)
            yield line, RejectedRow(line, "bad JSON: expected ',' or ']' after an item; "
                                          "the rest of the array cannot be read"), item + 1
            return


_PHYSICAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _csv_rows(data: bytes, delimiter: str):
    """CSV/TSV through the csv module in strict mode. A record the module cannot close (an
    unbalanced quote) is rejected by the line it starts on and reading resumes on the next line,
    so one stray quote never swallows the rest of the file. Bytes that are not UTF-8 reject only
    the record holding them."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    text = data.decode("utf-8", errors="surrogateescape").removeprefix(BOM)
    lines = _PHYSICAL_LINE.findall(text)
    header: list[str] | None = None
    start = 0  # index of the physical line a fresh reader starts on
    while start < len(lines):
        reader = csv.reader((lines[i] for i in range(start, len(lines))), delimiter=delimiter, strict=True)
        done = 0  # physical lines this reader has finished
        try:
            for cells in reader:
                line, done = start + done + 1, reader.line_num
                if not cells:
                    yield line, BLANK
                elif header is None:
                    header = [name.strip() for name in cells]
                elif _invalid_byte(delimiter.join(cells)):
                    yield line, RejectedRow(line, _invalid_byte(delimiter.join(cells)))
                elif len(cells) > len(header):
                    yield line, RejectedRow(line, f"{len(cells) - len(header)} more cells than the "
                                                  "header has columns")
                else:
                    yield line, dict(zip(header, cells + [None] * (len(header) - len(cells))))
            return
        except csv.Error as err:
            line = start + done + 1
            if header is None:
                raise PoolFormatError(f"The CSV header on line {line} cannot be read: {err}.") from None
            yield line, RejectedRow(line, f"bad CSV: {err} (is a quote left open?); read again from "
                                          f"line {line + 1}")
            start = line  # the next physical line, 0-based


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


def with_every_step_count(problems: list[Problem], *, seed: int = 0,
                          mix: tuple[float, ...] = DEMO_STEP_MIX) -> list[Problem]:
    """The same number of demo problems, with at least one of every step count the mix allows: a
    missing count replaces the last problem of the most common one (a 40-problem draw at 5 % per
    long count lacks them now and then, and the Inspect page then has only short chains). A pool
    that has every count already comes back unchanged."""
    counts = {k: 0 for k in range(1, len(mix) + 1) if mix[k - 1] > 0}
    for p in problems:
        counts[p.meta.get("steps", 0)] = counts.get(p.meta.get("steps", 0), 0) + 1
    missing = [k for k in sorted(counts) if counts[k] == 0]
    if not missing or len(problems) < len(counts):
        return list(problems)
    rng = random.Random(f"{seed}:every-step-count")  # its own stream: the main draw stays as it was
    out = list(problems)
    taken = {p.id for p in out}
    for steps in missing:
        common = max(counts, key=lambda k: counts[k])
        index = max(i for i, p in enumerate(out) if p.meta.get("steps") == common)
        problem = demo_problem(rng, steps)
        while problem.id in taken:
            problem = demo_problem(rng, steps)
        taken.add(problem.id)
        out[index] = problem
        counts[common] -= 1
        counts[steps] += 1
    return out


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

