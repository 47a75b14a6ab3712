"""\\boxed{} extraction (issue 13): the linear brace counter finds exactly what the old forward
scan from every box found. Its speed is in bench/extract_gold.py, not in a timed test."""

import importlib.util
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pivottrace.answers import _boxed_contents, extract_gold

_SPEC = importlib.util.spec_from_file_location("extract_gold", Path(__file__).parents[1] / "bench" / "extract_gold.py")
extract_gold_bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(extract_gold_bench)
forward_scan = extract_gold_bench.quadratic_boxed_contents  # the previous implementation: the reference


PIECES = st.sampled_from(["{", "}", "\\boxed{", "\\fbox {", "\\boxed\n{", "\\boxed", "\\\\boxed{", "a",
                          " ", "7", "\\frac{1}{2}", "é", "\ud800", "\0", "\u202e"])


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=40).map("".join))
def test_brace_counter_matches_the_forward_scan(text):
    assert _boxed_contents(text) == forward_scan(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_text_without_a_box_has_none(text):
    assert _boxed_contents(text) == forward_scan(text)


def test_examples():
    assert _boxed_contents("\\boxed{\\boxed{1}} then \\fbox {a{b}c} \\boxed{open") == ["\\boxed{1}", "1", "a{b}c"]
    assert _boxed_contents("}} \\boxed{2}}") == ["2"]
    assert _boxed_contents("\\boxed{ 12 } é \\boxed{ é½ }") == ["12", "é½"]
    assert extract_gold("So \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_gold("\\boxed{" * 1000 + "\\boxed{5}") == "5"
