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


@pytest.mark.parametrize("completion, answer", [
    # the result of the equation on the answer line, not its first operand
    ("Answer: 8 + 3 = 11 stickers.", "11"),
    ("The answer is 3 + 4 = 7", "7"),
    ("Answer: 8 + 3 = 11", "11"),
    # units, currency and thousands separators on the right-hand side
    ("The answer is 5 * $4 = $20.", "20"),
    ("Answer: 1,000 + 250 = 1,250 dollars", "1250"),
    ("Answer: 2 * 3.5 = 7.5 kg.", "7.5"),
    # several `=`: the last result
    ("Answer: 2 * 6 = 12 - 2 = 10 apples", "10"),
    ("Answer: 4 * 3 = 12, 12 + 5 = 17", "17"),
    # negative results
    ("Answer: 18 - 20 = -2", "-2"),
    ("The answer is 5 - 12 = -7 degrees.", "-7"),
    # fractions on either side
    ("Answer: 12 / 4 = 3", "3"),
    ("Answer: 1 / 2 + 1 / 4 = 3/4", "3/4"),
    ("Answer: x = \\frac{3}{4}", "\\frac{3}{4}"),
    # GSM8K-style chains with calculator marks
    ("She makes 9 * 2 = <<9*2=18>>18 dollars.\n#### 18", "18"),
    ("Answer: 9 * 2 = $<<9*2=18>>18.", "18"),
    ("Janet has 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nThe answer is 9 * 2 = <<9*2=18>>18", "18"),
    # an equation earlier in the chain does not matter, only the answer line does
    ("3 + 4 = 7 and 7 * 2 = 14.\nAnswer: 14 + 1 = 15", "15"),
    # arrows read like `=`; comparisons do not
    ("Answer: 6 * 7 => 42", "42"),
    ("Answer: 5 apples, since 5 <= 6", "5"),
    # a line without `=`: its first number
    ("The answer is 15 because 3 * 5 is 15 and 2 + 2 is 4.", "15"),
    # an empty right-hand side: the line's first number
    ("Answer: 11 =", "11"),
])
def test_extract_answer_reads_the_equation_result(completion, answer):
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


def test_rescoring_rereads_answers_from_the_stored_completions(tmp_path):
    """A pool traced with an older extraction votes with the fixed reading after score_pool."""
    import numpy as np

    from pivottrace import pipeline, store
    from pivottrace.datasets import demo_problems
    from pivottrace.synthetic import synthetic_trace

    db = store.open_db(tmp_path / "old.db")
    problem = demo_problems(1, seed=0)[0]
    store.insert_problems(db, [problem])
    store.upsert_model(db, "synth", spec="synthetic", n_layers=30)
    result = synthetic_trace(problem, np.random.default_rng(0))
    result.trace.completion = "Answer: 8 + 3 = 11 stickers."
    result.trace.answer = "8"  # what the first-number reading stored
    result.samples = ["The answer is 8 + 3 = 11"] * len(result.samples)
    result.sample_answers = ["8"] * len(result.samples)
    store.save_trace(db, problem.id, "synth", result)
    rows = pipeline.score_pool(db, "synth")
    assert rows[0]["majority_answer"] == "11" and rows[0]["greedy_answer"] == "11"
    assert store.sample_answers(db, problem.id, "synth") == ["11"] * len(result.samples)
