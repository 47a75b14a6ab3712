"""Answer extraction, canonical voting keys and math-verify equivalence."""

import threading

import pytest

from pivottrace.answers import (answers_match, canonical, extract_answer, extract_gold,
                                majority_vote, parse_gold_input)


@pytest.mark.parametrize("raw, gold", [
    ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", "18"),
    ("Total is 1,234 dollars.\n#### 1,234", "1234"),
    ("The temperature drops.\n#### -7", "-7"),
    ("So $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("42", "42"),
    ("", None),
    (None, None),
])
def test_extract_gold(raw, gold):
    assert extract_gold(raw) == gold


@pytest.mark.parametrize("completion, answer", [
    ("First 3 + 4 = 7. Then 7 * 2 = 14.\nThe answer is 15.", "15"),
    ("Step 1: 2+2=4\nAnswer: 15", "15"),
    ("Answer: $1,250.", "1250"),
    ("Final answer: -3", "-3"),
    ("Answer: \\frac{1}{2}", "\\frac{1}{2}"),
    ("Answer: 1/2 of the cake", "1/2"),
    ("so the result is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("We add 3 and 4 to get 7 apples, and that's all.", None),
    ("", None),
])
def test_extract_answer(completion, answer):
    assert extract_answer(completion) == answer


def test_last_answer_line_wins():
    assert extract_answer("Answer: 4\nWait, I made a mistake.\nAnswer: 5") == "5"


def test_canonical_numbers():
    assert canonical("1,234.0") == "1234"
    assert canonical("$18") == "18"
    assert canonical("-7") == "-7"
    assert canonical("0.50") == "0.5"
    assert canonical("1/2") == canonical("\\frac{1}{2}") == canonical("0.5") == "0.5"
    assert canonical("-3/4") == "-0.75"
    assert canonical(None) is None


def test_boxed_fraction_matches_decimal_through_math_verify():
    assert answers_match(extract_answer("\\boxed{\\frac{1}{2}}"), "0.5")
    assert not answers_match("\\frac{1}{3}", "0.5")
    assert answers_match("1,234", "1234")
    assert not answers_match(None, "3")


def test_answers_match_off_the_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(answers_match("\\frac{3}{4}", "0.75")))
    worker.start()
    worker.join()
    assert results == [True]


def test_majority_vote_counts_and_ties():
    vote = majority_vote(["7", "7.0", "8", None])
    assert vote.majority == "7" and vote.share == 0.5 and vote.n_distinct == 3
    assert vote.entropy > 0
    tie = majority_vote(["3", "4"])
    assert tie.majority == "3"  # the first seen wins a tie
    unanimous = majority_vote(["5", "5", "5"])
    assert unanimous.share == 1.0 and unanimous.entropy == 0.0
    nothing = majority_vote([None, None])
    assert nothing.majority is None and nothing.share == 0.0


def test_parse_gold_input_validates():
    assert parse_gold_input(" 1,234 ") == "1234"
    assert parse_gold_input("\\frac{1}{2}") == "\\frac{1}{2}"
    with pytest.raises(ValueError):
        parse_gold_input("")
    with pytest.raises(ValueError):
        parse_gold_input("banana }{")
