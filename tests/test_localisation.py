"""Injected-error pool and the localisation metric, on hand-checkable chains (no model)."""

import random

import numpy as np
import pytest

from pivottrace.injected import InjectionError, correct_equations, gsm8k_chain, gsm8k_pool, inject
from pivottrace.localisation import LocalisationCase, first_wrong_step, localisation_report
from pivottrace.steps import segment_steps

CHAIN = "After giving away 5, Omar has 9 - 5 = 4 cards.\nAfter buying 6 more, he has 4 + 6 = 10 cards.\nAnswer: 10"


def _steps(text):
    return [{"char_start": a, "char_end": b} for a, b in segment_steps(text)]


@pytest.mark.parametrize("kind,wrong,answer", [
    ("operation", "9 + 5 = 14", "20"), ("number", None, None), ("dropped", None, None)])
def test_an_error_is_planted_in_the_chosen_equation_and_carried_forward(kind, wrong, answer):
    chain = inject("Omar ...", CHAIN, rng=random.Random(1), kind=kind, equation_index=0)
    assert chain.kind == kind and chain.equation == "9 - 5 = 4"
    assert chain.completion[:chain.error_char] == CHAIN[:chain.error_char]
    assert first_wrong_step(_steps(chain.completion), chain.error_char) == 0
    if wrong:
        assert chain.wrong_equation == wrong and chain.answer == answer
        assert "14 + 6 = 20 cards" in chain.completion  # the second step uses the wrong 14, computed right
    assert chain.answer != chain.clean_answer == "10"
    right = [m.group(0) for m in correct_equations(chain.completion)]
    assert (chain.wrong_equation in right) == (kind != "number")  # a slip is wrong arithmetic; the others are not
    assert right[-1].endswith(chain.answer) and chain.completion.index(right[-1]) > chain.error_char  # carried, right


def test_gsm8k_gold_chains_inject_and_every_kind_occurs():
    pool = gsm8k_pool("../shared/data/gsm8k/test.jsonl", n=30)
    assert len(pool) == 30 and {c.kind for c in pool} == {"operation", "number", "dropped"}
    for chain in pool:
        assert "<<" not in chain.clean and chain.clean.rstrip().splitlines()[-1].startswith("Answer:")
        assert chain.completion != chain.clean and chain.error_char < len(chain.completion)
        assert chain.equation in chain.clean and chain.wrong_equation in chain.completion
    assert gsm8k_chain("2+3=<<2+3=5>>5 cats\n#### 5") == "2+3=5 cats\nAnswer: 5"


def test_chains_without_equations_are_refused():
    with pytest.raises(InjectionError):
        inject("q", "I think it is seven.\nAnswer: 7", rng=random.Random(0))
    with pytest.raises(InjectionError):
        inject("q", "So 3 + 4 = 8 here.", rng=random.Random(0))  # already wrong: nothing correct to change


def test_localisation_report_against_its_baselines():
    cases = [
        LocalisationCase(pivots=[2], scores=[0, 0, 3, 0], step_tokens=[5, 30, 5, 5], first_wrong=2),  # hit
        LocalisationCase(pivots=[1], scores=[0, 2, 0, 0], step_tokens=[5, 5, 5, 30], first_wrong=2),  # near
        LocalisationCase(pivots=[], scores=[0, 0, 0, 1], step_tokens=[5, 5, 5, 30], first_wrong=0),  # miss
        LocalisationCase(pivots=[0, 3], scores=[1, 0, 0, 1], step_tokens=[5, 5], first_wrong=-1),  # clean
    ]
    report = localisation_report(cases)
    assert report.n_chains == 3 and report.n_clean == 1
    assert report.recall == pytest.approx(1 / 3) and report.recall_near == pytest.approx(2 / 3)
    assert report.precision == pytest.approx(1 / 2) and report.precision_near == pytest.approx(1.0)
    assert report.random_same_size == pytest.approx((1 / 4 + 1 / 4 + 0) / 3)
    assert report.random_same_size_near == pytest.approx((3 / 4 + 3 / 4 + 0) / 3)
    assert report.top_step == pytest.approx(1 / 3) and report.random_step == pytest.approx(1 / 4)
    assert report.longest_step == pytest.approx(0.0) and report.longest_step_near == pytest.approx(2 / 3)
    assert report.clean_with_pivot == 1.0 and report.clean_mean_pivots == 2.0


def test_stored_pivots_are_judged_against_annotators_first_wrong_steps(tmp_path):
    import json

    from pivottrace import pipeline, store, views
    from pivottrace.pivots import PIVOT_THRESHOLD
    from tests.conftest import build_app_db

    db = build_app_db(tmp_path / "loc.db", n_problems=12)
    assert pipeline.step_label_localisation(db) is None and views.step_localisation_rows(db) == []
    marked = []
    for problem_id, in db.execute("select problem_id from traces order by problem_id limit 5").fetchall():
        scores = json.loads(store.get_features(db, problem_id, "synth")["pivot_scores"])
        first = int(np.argmax(scores))  # the annotator agrees with the top-scoring step
        store.save_step_label(db, problem_id=problem_id, annotator="ann", first_wrong_step=first)
        marked.append(scores[first] > PIVOT_THRESHOLD)
    report = pipeline.step_label_localisation(db)
    assert report.n_chains == 5 and report.top_step == 1.0
    assert report.recall == pytest.approx(np.mean(marked))
    rows = views.step_localisation_rows(db)
    assert rows[2]["pivots"] == "100%" and "5 chains" in rows[3]["measure"]
