"""Property-based fuzzing of ingest (issue 13), with hypothesis: over generated JSONL, CSV and
JSON-array files mixing good rows with hostile ones, reading never raises, every row is
loaded, rejected or blank, and every good row loads. A few seconds of CI in all."""

import csv
import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pivottrace.datasets import MAX_TEXT_CHARS, problem_id, read_pool_bytes

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TEXT = st.text(max_size=60)  # any Unicode scalar, control characters, bidi marks and all
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


def is_good(question) -> bool:
    return isinstance(question, str) and bool(question.strip()) and len(question.strip()) <= MAX_TEXT_CHARS


GOOD_ROW = st.builds(lambda q, a: {"question": q, "answer": a}, TEXT.filter(is_good), TEXT | st.integers())
HOSTILE_LINE = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),  # any bytes, invalid UTF-8 included
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),  # valid JSON that may or may not be a row
    st.integers(1, 5000).map(lambda n: b"[" * n),  # deep nesting
    st.just(b'{"question": "lone \\ud800 surrogate"}'),
    st.just(b'{"question": "x", "answer": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
    st.sampled_from([b"", b"   ", b"\t\r"]),  # blank
)
LINE = st.one_of(GOOD_ROW.map(lambda row: json.dumps(row, ensure_ascii=False).encode()), HOSTILE_LINE)


def accounted(result) -> None:
    assert result.rows == result.loaded + len(result.rejected) + result.blank
    assert len({(r.line, r.item) for r in result.rejected}) == len(result.rejected)


@FUZZ
@given(st.lists(LINE, max_size=40), st.booleans(), st.booleans())
def test_jsonl_every_line_accounted_for(lines, bom, final_newline):
    data = (b"\xef\xbb\xbf" if bom else b"") + b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    result = read_pool_bytes(data, "fuzz.jsonl")
    accounted(result)
    body = data.removeprefix(b"\xef\xbb\xbf")
    assert result.rows == body.count(b"\n") + (not body.endswith(b"\n") and body != b"")  # one row a line
    loaded = {p.id for p in result.problems}
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except Exception:
            continue
        if isinstance(row, dict) and set(row) == {"question", "answer"} and is_good(row["question"]) \
                and isinstance(row["answer"], (str, int)):
            assert problem_id(row["question"].strip()) in loaded, (number, line)


CELL = st.text(max_size=40)
OPEN_QUOTE = b'"an open quote, never closed'
BAD_CSV_LINE = st.sampled_from([OPEN_QUOTE, b'"quoted"tail,1', b"bad \xff byte,2",
                                b"too,many,cells,here", b""])


@FUZZ
@given(st.lists(st.one_of(st.tuples(CELL, CELL), BAD_CSV_LINE), max_size=30), st.booleans())
def test_csv_good_rows_load_and_bad_lines_stay_local(rows, bom):
    chunks = [b"\xef\xbb\xbf" if bom else b"", b"question,answer\r\n"]
    good = []
    for row in rows:
        if row == OPEN_QUOTE:
            # CSV cannot tell a quote left open from a field running over lines until it meets
            # the next quote, so the rows after it may be read into that field (or rejected);
            # the example tests pin the common cases, here only the accounting holds
            chunks.append(row + b"\r\n")
            break
        if isinstance(row, tuple):
            buffer = io.StringIO()
            csv.writer(buffer).writerow(row)
            chunks.append(buffer.getvalue().encode("utf-8", "surrogatepass"))
            if is_good(row[0]):
                good.append(row[0].strip())
        else:
            chunks.append(row + b"\r\n")
    result = read_pool_bytes(b"".join(chunks), "fuzz.csv")
    accounted(result)
    loaded = {p.id for p in result.problems}
    for text in good:
        assert problem_id(text) in loaded, text


@FUZZ
@given(st.lists(st.one_of(GOOD_ROW, JSON_VALUE), max_size=30), st.integers(0, 2))
def test_json_array_items_accounted_for(items, indent):
    result = read_pool_bytes(json.dumps(items, indent=indent or None).encode(), "fuzz.json")
    accounted(result)
    assert result.rows == len(items)
    loaded = {p.id for p in result.problems}
    for item in items:
        if isinstance(item, dict) and set(item) == {"question", "answer"} and is_good(item["question"]) \
                and isinstance(item["answer"], (str, int)):
            assert problem_id(item["question"].strip()) in loaded
