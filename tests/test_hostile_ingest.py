"""Hostile pool files (issue 13): every row is loaded, rejected with its line and reason, or
skipped as blank, and one bad row never costs the good ones."""

import json

import pytest
from typer.testing import CliRunner

from pivottrace import pipeline, store
from pivottrace.cli import app
from pivottrace.datasets import MAX_ANSWER_CHARS, MAX_TEXT_CHARS, PoolFormatError, read_pool

GOOD = [{"question": f"Ava has {i} apples and buys 2 more. How many now?", "answer": f"#### {i + 2}"}
        for i in range(3)]


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def load(tmp_path, name: str, data: bytes, **options):
    path = tmp_path / name
    path.write_bytes(data)
    result = read_pool(path, **options)
    assert result.rows == result.loaded + len(result.rejected) + result.blank  # every row accounted for
    return result, {r.line: r.reason for r in result.rejected}


def texts(result) -> list[str]:
    return [p.text for p in result.problems]


def test_lone_surrogate_rejects_only_its_row(tmp_path):
    result, reasons = load(tmp_path, "s.jsonl", jsonl(GOOD[0], b'{"question": "bad \\ud800 row"}', GOOD[1],
                                                      b'{"question": "fine", "answer": "\\udfff"}'))
    assert texts(result) == [GOOD[0]["question"], GOOD[1]["question"]]
    assert sorted(reasons) == [2, 4]
    assert "lone surrogate" in reasons[2] and "'question'" in reasons[2]
    assert "'answer'" in reasons[4]


def test_lone_surrogate_row_through_the_cli_loads_the_rest(tmp_path):
    pool = tmp_path / "s.jsonl"
    pool.write_bytes(jsonl(GOOD[0], b'{"question": "bad \\ud800 row"}', GOOD[1]))
    result = CliRunner().invoke(app, ["ingest", str(pool), "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 2
    assert "Read 3 rows: 2 loaded, 1 rejected, 0 blank." in result.output
    assert "line 2: field 'question' holds a lone surrogate" in result.output
    assert store.open_db(tmp_path / "s.db")["problems"].count == 2


@pytest.mark.parametrize("name", ["bytes.jsonl", "bytes.csv"])
def test_invalid_utf8_rejects_only_its_row_in_jsonl_and_csv(tmp_path, name):
    if name.endswith(".csv"):
        data = (b"question,answer\nWhat is 1+1?,2\nWhat is \xff?,3\nWhat is \xed\xa0\x80 2+2?,4\n"
                b"What is 3+3?,6\n")
    else:
        data = jsonl(GOOD[0], b'{"question": "What is \xff?"}', b'{"question": "\xed\xa0\x80"}', GOOD[1])
    result, reasons = load(tmp_path, name, data)
    assert len(result.problems) == 2
    assert sorted(reasons) == [3, 4] if name.endswith(".csv") else [2, 3]
    assert all("not valid UTF-8" in reason for reason in reasons.values())
    assert "0xff" in reasons[min(reasons)]


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting_is_a_rejected_row(tmp_path, depth):
    result, reasons = load(tmp_path, "deep.jsonl", jsonl(GOOD[0], b"[" * depth, GOOD[1]))
    assert len(result.problems) == 2 and list(reasons) == [2]


def test_deeply_nested_answer_and_json_array_item_are_rejected(tmp_path):
    nested = "[" * 900 + "]" * 900  # parses, but is no answer
    rows = [GOOD[0], json.loads(json.dumps({"question": "Q?"})) | {"answer": "PLACEHOLDER"}, GOOD[1]]
    data = json.dumps(rows).replace('"PLACEHOLDER"', nested).encode()
    result, reasons = load(tmp_path, "nested.json", data)
    assert len(result.problems) == 2
    assert list(reasons.values()) == ["field 'answer' is not text or a number"]
    result, reasons = load(tmp_path, "deep.json", b'[\n{"question": "Q?"},\n' + b"[" * 5000 + b"\n]")
    assert len(result.problems) == 1 and list(reasons) == [3] and "cannot be read" in reasons[3]


def test_csv_with_bom_as_excel_writes_it(tmp_path):
    data = "\ufeffquestion,answer\r\nWhat is 1+1?,2\r\nWhat is 2+2?,4\r\n".encode("utf-8")
    result, reasons = load(tmp_path, "excel.csv", data)
    assert reasons == {}
    assert [(p.text, p.gold) for p in result.problems] == [("What is 1+1?", "2"), ("What is 2+2?", "4")]


def test_jsonl_with_bom_keeps_its_first_row(tmp_path):
    result, reasons = load(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(*GOOD))
    assert reasons == {} and len(result.problems) == 3


def test_unclosed_csv_quote_is_reported_by_line_and_the_rest_loads(tmp_path):
    data = (b'question,answer\nWhat is 1+1?,2\n"What is 2+2?,4\nWhat is 3+3?,6\n'
            b'"A quoted, multi-line\nproblem",7\nWhat is 4+4?,8\n')
    result, reasons = load(tmp_path, "quote.csv", data)
    assert list(reasons) == [3] and "quote" in reasons[3]
    assert texts(result) == ["What is 1+1?", "What is 3+3?", "A quoted, multi-line\nproblem", "What is 4+4?"]
    runner = CliRunner().invoke(app, ["ingest", str(tmp_path / "quote.csv"), "--db", str(tmp_path / "q.db")])
    assert runner.exit_code == 2 and "line 3: bad CSV" in runner.output


def test_quote_in_the_middle_of_a_csv_field_is_rejected_not_merged(tmp_path):
    result, reasons = load(tmp_path, "mid.csv", b'question,answer\n"Say "hi" now",1\nWhat is 5+5?,10\n')
    assert list(reasons) == [2] and texts(result) == ["What is 5+5?"]


def test_json_array_and_ndjson_in_a_json_file(tmp_path):
    array, reasons = load(tmp_path, "array.json", json.dumps(GOOD + ["not an object"], indent=2).encode())
    assert texts(array) == [g["question"] for g in GOOD]
    assert list(reasons) == [14] and "not an object" in reasons[14]  # numbered by the line it starts on
    ndjson, reasons = load(tmp_path, "lines.json", jsonl(*GOOD))
    assert reasons == {} and texts(ndjson) == texts(array)
    empty, _ = load(tmp_path, "empty.json", b"[ ]")
    assert empty.rows == 0


def test_question_and_answer_lengths_are_capped_with_a_reason(tmp_path):
    result, reasons = load(tmp_path, "long.jsonl", jsonl(
        {"question": "q" * (MAX_TEXT_CHARS + 1)},
        {"question": "What is 1+1?", "answer": "x" * (MAX_ANSWER_CHARS + 1)},
        {"question": "What is 2+2?", "answer": "#### 4"}))
    assert texts(result) == ["What is 2+2?"]
    assert f"limit is {MAX_TEXT_CHARS:,}" in reasons[1]
    assert reasons[2].startswith("answer is") and f"limit is {MAX_ANSWER_CHARS:,}" in reasons[2]


def test_a_folder_is_named_as_a_folder(tmp_path):
    folder = tmp_path / "pool.jsonl"
    folder.mkdir()
    with pytest.raises(PoolFormatError, match="is a folder"):
        read_pool(folder)
    result = CliRunner().invoke(app, ["ingest", str(folder), "--db", str(tmp_path / "f.db")])
    assert result.exit_code != 0 and "is a folder" in result.output and "No such file" not in result.output


def test_json_error_message_reads_well(tmp_path):
    _, reasons = load(tmp_path, "ctl.jsonl", b'{"question": "a\tb"}\n{"question": "open\n')
    assert reasons[1] == "bad JSON: Invalid control character at column 16"
    assert "column" in reasons[2]


def test_totals_account_for_every_line(tmp_path):
    data = jsonl(GOOD[0], GOOD[0], b"", b"   ", b"{oops", GOOD[1]) + b"\n"
    result, reasons = load(tmp_path, "mix.jsonl", data)
    assert (result.rows, result.loaded, len(result.rejected), result.blank) == (7, 3, 1, 3)
    assert result.repeats == 1 and list(reasons) == [5]
    report = pipeline.ingest(store.open_db(tmp_path / "m.db"), tmp_path / "mix.jsonl")
    assert report.totals() == "Read 7 rows: 3 loaded, 1 rejected, 3 blank."


def test_utf16_file_is_named(tmp_path):
    path = tmp_path / "u16.csv"
    path.write_bytes("question\nWhat is 1+1?\n".encode("utf-16"))
    with pytest.raises(PoolFormatError, match="UTF-16"):
        read_pool(path)


def test_two_stray_utf16_bom_bytes_are_one_bad_row_not_a_utf16_file(tmp_path):
    result, reasons = load(tmp_path, "stray.jsonl", b"\xfe\xff\n" + jsonl(GOOD[0]))  # found by the fuzz test
    assert list(reasons) == [1] and len(result.problems) == 1
