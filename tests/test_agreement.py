"""Overlap labelling and agreement: a lead sets an overlap share, a second, different annotator
labels the same item, agreement is computed with Krippendorff's alpha, a disagreement goes to the
lead's review queue, and a double-labelled item spends two labels of the budget."""

import numpy as np
import pytest
from conftest import OPERATOR, build_app_db

from pivottrace import agreement, store

GOLD = "987654"  # no synthetic trace votes for it


@pytest.fixture
def db(tmp_path):
    return build_app_db(tmp_path / "overlap.db", budget=20)


def first_label(db, who: str, verdict: str = "correct", gold: str | None = None) -> dict:
    item = store.next_item_with_overlap(db, who)
    assert item is not None and not item["second_label"]
    store.save_label(db, problem_id=item["problem_id"], annotator=who, verdict=verdict, gold_answer=gold,
                     shown_answer="12")
    return item


def test_overlap_pick_is_a_stable_share_of_items():
    ids = [f"{i:016x}" for i in range(4000)]
    picked = [pid for pid in ids if store.is_overlap_pick(pid, 0.1)]
    assert 0.08 < len(picked) / len(ids) < 0.12
    assert set(picked) <= {pid for pid in ids if store.is_overlap_pick(pid, 0.2)}  # raising the share only adds
    assert not any(store.is_overlap_pick(pid, 0.0) for pid in ids)


def test_only_a_lead_sets_the_overlap_share(db):
    with pytest.raises(store.PermissionDenied):
        store.set_overlap_share(db, user="ann", share=0.5)
    with pytest.raises(store.StoreError):
        store.set_overlap_share(db, user="lee", share=1.5)
    assert store.overlap_share(db) == 0.0
    store.set_overlap_share(db, user="lee", share=0.25)
    assert store.overlap_share(db) == 0.25


def test_without_overlap_nobody_gets_a_labelled_item(db):
    item = first_label(db, "ann")
    following = store.next_item_with_overlap(db, "bob")
    assert following["problem_id"] != item["problem_id"] and not following["second_label"]


def test_two_annotators_label_one_item_agreement_and_review(db):
    store.set_overlap_share(db, user="lee", share=1.0)  # every annotate pick is labelled twice
    x = first_label(db, "ann", "correct")["problem_id"]
    assert store.budget_status(db)["spent"] == 1

    # never the same person twice: ann gets a fresh item, bob gets x as a second label
    assert store.next_item_with_overlap(db, "ann")["problem_id"] != x
    second = store.next_item_with_overlap(db, "bob")
    assert (second["problem_id"], second["second_label"]) == (x, True)
    with pytest.raises(store.LeaseError, match="bob is labelling"):
        store.save_second_label(db, problem_id=x, annotator="lee", verdict="correct", shown_answer="12")
    store.save_second_label(db, problem_id=x, annotator="bob", verdict="wrong", gold_answer=GOLD, shown_answer="12")
    with pytest.raises(store.LeaseError, match="labelled this problem already"):
        store.save_second_label(db, problem_id=x, annotator="ann", verdict="correct", shown_answer="12")
    assert store.budget_status(db)["spent"] == 2  # one item, two labels
    assert store.get_problem(db, x)["verdict"] == "wrong"  # the newest label is in force until a review

    rows = store.verdicts_by_annotator(db)
    result = agreement.agreement(rows)
    assert (result.items, result.agreeing, result.share) == (1, 0, 0.0)
    assert result.alpha == pytest.approx(0.0)  # one pair, two values: Do = De = 1
    [queued] = agreement.disagreements(rows, store.reviews(db))
    assert queued.problem_id == x and [r["annotator"] for r in queued.labels] == ["ann", "bob"]

    # the lead settles it: a label of their own, in force, spending nothing, not an agreement vote
    with pytest.raises(store.PermissionDenied):
        store.resolve_review(db, lead="bob", problem_id=x, verdict="correct", shown_answer="12")
    store.resolve_review(db, lead="lee", problem_id=x, verdict="correct", shown_answer="12")
    assert agreement.disagreements(store.verdicts_by_annotator(db), store.reviews(db)) == []
    assert store.effective_labels(db)[-1]["annotator"] == "lee"
    assert store.get_problem(db, x)["verdict"] == "correct"
    assert store.budget_status(db)["spent"] == 2
    assert agreement.agreement(store.verdicts_by_annotator(db)).items == 1


def test_alpha_matches_the_hand_computation(db):
    """Two items: ann and bob disagree on one (12 vs gold 987654) and agree on the other.
    Coincidences: 12-987654 twice, y-y twice; Do = 2/4, De = (2*1*1 + 2*1*2 + 2*1*2)/(4*3) = 10/12,
    alpha = 1 - Do/De = 0.4."""
    store.set_overlap_share(db, user="lee", share=1.0)
    x = first_label(db, "ann", "correct")["problem_id"]
    assert store.next_item_with_overlap(db, "bob")["problem_id"] == x
    store.save_second_label(db, problem_id=x, annotator="bob", verdict="wrong", gold_answer=GOLD, shown_answer="12")
    y = store.next_item_with_overlap(db, "ann")
    assert not y["second_label"]
    store.save_label(db, problem_id=y["problem_id"], annotator="ann", verdict="flawed")
    z = store.next_item_with_overlap(db, "bob")
    assert (z["problem_id"], z["second_label"]) == (y["problem_id"], True)
    store.save_second_label(db, problem_id=y["problem_id"], annotator="bob", verdict="flawed")

    result = agreement.agreement(store.verdicts_by_annotator(db))
    assert (result.items, result.agreeing) == (2, 1)
    assert result.alpha == pytest.approx(0.4)
    by_name = {p.annotator: p for p in result.per_annotator}
    assert by_name["ann"].share == by_name["bob"].share == 0.5
    assert store.budget_status(db)["spent"] == 4


def test_undoing_a_second_label_keeps_the_first(db):
    store.set_overlap_share(db, user="lee", share=1.0)
    x = first_label(db, "ann", "correct")["problem_id"]
    store.next_item_with_overlap(db, "bob")
    store.save_second_label(db, problem_id=x, annotator="bob", verdict="flawed")
    store.undo_last_label(db, "bob")
    assert store.get_problem(db, x)["verdict"] == "correct"  # ann's label still stands
    assert store.budget_status(db)["spent"] == 1
    again = store.next_item_with_overlap(db, "bob")  # the undone item comes straight back to bob
    assert (again["problem_id"], again["second_label"]) == (x, True)


def test_no_second_labels_once_the_budget_is_spent(db):
    store.set_overlap_share(db, user="lee", share=1.0)
    x = first_label(db, "ann", "correct")["problem_id"]
    store.set_budget(db, user="lee", total=1)
    item = store.next_item_with_overlap(db, "bob")
    assert item is None or item["problem_id"] != x


def test_second_labels_follow_the_sign_in_rules_known_labeller_own_lease_and_budget(db):
    """Issue 12's rules on the overlap path: only known users who may label; a second label under
    the annotator's own lease only; a second-label lease reserves budget, so spent never passes
    the total; the overlap share and a review are a lead's, in the audit trail."""
    store.set_overlap_share(db, user="lee", share=1.0)
    x = first_label(db, "ann", "correct")["problem_id"]
    with pytest.raises(store.PermissionDenied):
        store.next_item_with_overlap(db, "mallory")
    store.add_user(db, "rita", "researcher", by=OPERATOR)
    with pytest.raises(store.PermissionDenied):
        store.next_item_with_overlap(db, "rita")
    with pytest.raises(store.PermissionDenied):
        store.save_second_label(db, problem_id=x, annotator="rita", verdict="flawed")
    with pytest.raises(store.LeaseError, match="no lease"):  # nobody leased it to bob
        store.save_second_label(db, problem_id=x, annotator="bob", verdict="flawed")
    assert store.budget_status(db)["spent"] == 1

    # the budget has room for exactly one more label: bob's second-label lease takes it
    store.set_budget(db, user="lee", total=2)
    assert store.next_item_with_overlap(db, "bob")["problem_id"] == x
    assert store.next_item_with_overlap(db, "ann") is None  # the room is reserved by bob's lease
    store.set_budget(db, user="lee", total=1)  # a cut releases bob's lease...
    with pytest.raises(store.LeaseError, match="no lease"):  # ...so his label cannot overspend
        store.save_second_label(db, problem_id=x, annotator="bob", verdict="flawed")
    assert store.budget_status(db)["spent"] == 1 <= store.budget_status(db)["total"]

    store.set_budget(db, user="lee", total=3)
    assert store.next_item_with_overlap(db, "bob")["problem_id"] == x
    store.save_second_label(db, problem_id=x, annotator="bob", verdict="flawed")
    store.resolve_review(db, lead="lee", problem_id=x, verdict="correct", shown_answer="12")
    trail = [(a["actor"], a["action"], a["subject"], a["before"], a["after"]) for a in store.audit_trail(db)]
    assert ("lee", "review", x, "flawed", "correct") in trail
    assert ("lee", "overlap share", None, None, "1") in trail


def test_all_labels_asserting_the_same_leave_alpha_undefined_with_a_reason():
    rows = [{"problem_id": "p", "annotator": a, "verdict": "correct", "gold_answer": None, "shown_answer": "0.5"}
            for a in ("ann", "bob")]
    rows[1]["shown_answer"] = "1/2"  # the same answer written another way
    result = agreement.agreement(rows)
    assert (result.items, result.agreeing, result.alpha) == (1, 1, None)
    assert "undefined" in result.note
    assert np.isclose(result.share, 1.0)


# ------------------------------------------------------------------ the same through views (what the pages call)

def test_views_second_opinion_review_and_budget_page_numbers(db):
    from pivottrace import views

    views.set_overlap_share(db, user="lee", percent=100)
    first = views.next_item(db, "ann")
    assert not first.second_label
    views.submit_label(db, annotator="ann", problem_id=first.problem_id, action="accept", shown_answer=first.majority)
    second = views.next_item(db, "bob")
    assert (second.problem_id, second.second_label) == (first.problem_id, True)
    views.submit_label(db, annotator="bob", problem_id=second.problem_id, action="wrong", gold_text=GOLD,
                       shown_answer=second.majority, second_label=True)

    shown = views.agreement_view(db)
    assert (shown.items, shown.share, shown.second_labels, shown.overlap_share) == (1, 0.0, 1, 1.0)
    rows = {r["annotator"]: r for r in views.annotator_rows(db)}
    assert rows["ann"]["agreement"] == rows["bob"]["agreement"] == 0.0 and rows["bob"]["double-labelled"] == 1
    assert "counts **twice**" in views.budget_explanation(db)

    [review] = views.review_queue(db)
    assert review.problem_id == first.problem_id
    assert {r["annotator"]: r["answer"] for r in review.labels}["bob"] == GOLD
    keep = next(r for r in review.labels if r["annotator"] == "bob")
    with pytest.raises(store.PermissionDenied):
        views.resolve_review(db, lead="ann", problem_id=review.problem_id, label_id=keep["label_id"])
    report = views.resolve_review(db, lead="lee", problem_id=review.problem_id, label_id=keep["label_id"])
    assert report is not None and "settled by lee" in store.router_versions(db)[-1]["note"]
    assert views.review_queue(db) == []
    assert store.effective_labels(db)[-1]["gold_answer"] == GOLD
