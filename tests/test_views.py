"""views/: view-models, escaped HTML, guarded actions (labels, undo, budget, router target)."""

import json

import numpy as np
import pytest
from conftest import build_app_db

from pivottrace import pipeline, store, views
from pivottrace.datasets import Problem, problem_id

XSS = "<script>alert(1)</script><img src=x onerror=alert(1)>"


def _xss_problem() -> Problem:
    return Problem(problem_id(XSS), XSS, "evil", "3")


@pytest.fixture
def db(tmp_path):
    return build_app_db(tmp_path / "v.db", extra_problems=[_xss_problem()], second_model=5)


def _label_rows(db):
    return list(db.query("select * from labels order by id"))


# ------------------------------------------------------------------ escaping

def test_problem_html_renders_markup_as_text():
    out = views.problem_html(XSS)
    assert "<script" not in out and "<img" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in out


def test_steps_html_escapes_model_output_and_explains_pivots():
    steps = [views.StepView(0, "Let x = 2 <b>bold</b>", 0.2, False),
             views.StepView(1, 'Wait, "actually" <script>x()</script>', 3.1, True,
                            ["temporal_change", "cue"])]
    out = views.steps_html(steps)
    assert "<script" not in out and "<b>" not in out
    assert "&lt;script&gt;x()&lt;/script&gt;" in out and "&quot;actually&quot;" in out
    assert out.count("why a pivot") == 1  # only the pivot step gets the expander
    assert views.SIGNAL_NAMES["temporal_change"] in out and views.SIGNAL_NAMES["cue"] in out
    assert 'title="Pivot score 3.10: attention jumped elsewhere' in out


def test_tokens_html_escapes_tokens(db):
    view = views.trace_view(db, problem_id(XSS), "synth")
    view.tokens[view.steps[0].tok_start] = "<img src=x onerror=alert(2)>"
    out = views.step_tokens_html(view, 0)
    assert "<img" not in out and "&lt;img src=x onerror=alert(2)&gt;" in out
    assert out.count("<span") == view.steps[0].tok_end - view.steps[0].tok_start


def test_queue_item_of_a_hostile_problem_is_escaped(db):
    view = views.item_view(db, problem_id(XSS))
    assert view.text == XSS  # kept verbatim in the model
    assert "<script" not in view.problem_html and "&lt;script&gt;" in view.problem_html


# ------------------------------------------------------------------ annotate

def test_next_item_is_the_top_of_the_queue_and_hides_gold(db):
    item = views.next_item(db, "ann")
    top = db.execute("select problem_id from routes r join problems p on p.id = r.problem_id "
                     "where route = 'annotate' and p.verdict is null order by value desc limit 1").fetchone()[0]
    assert item.problem_id == top
    assert not hasattr(item, "gold")
    features = store.get_features(db, item.problem_id, item.model_id)
    assert item.majority == features["majority_answer"]
    assert sum(c.votes for c in item.candidates) == 1 + len(store.sample_answers(db, item.problem_id, "synth"))
    assert [s.score for s in item.steps] == pytest.approx(json.loads(features["pivot_scores"]))
    assert views.next_item(db, "bob").problem_id != item.problem_id  # leased


def test_accept_records_annotator_seconds_and_recalibrates_behind_the_submit(db):
    item = views.next_item(db, "ann")
    versions = len(store.router_versions(db))
    outcome = views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="accept",
                                 shown_answer=item.majority, seconds=12.345)
    label = _label_rows(db)[-1]  # written before submit_label returned
    assert (label["annotator"], label["verdict"], label["seconds"]) == ("ann", "correct", 12.35)
    assert label["shown_answer"] == item.majority and label["created_at"] > 0
    assert outcome.router_version is None and "background" in outcome.message
    assert pipeline.wait_for_background(60)
    assert len(store.router_versions(db)) == versions + 1  # recalibrated and recorded, off the request path
    assert store.router_versions(db)[-1]["n_labels"] == 1
    following = views.next_item(db, "ann")
    assert following.problem_id != item.problem_id
    assert views.progress(db, "ann").labelled == 1


def test_wrong_needs_a_parsable_gold_and_saves_nothing_otherwise(db):
    item = views.next_item(db, "ann")
    for bad in ("", "not a number at all ???", "x" * 300):
        with pytest.raises(views.InvalidInput):
            views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="wrong", gold_text=bad,
                               shown_answer=item.majority)
    assert _label_rows(db) == []
    views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="wrong", gold_text="1,204",
                       shown_answer=item.majority)
    assert _label_rows(db)[-1]["gold_answer"] == "1204"
    assert store.get_problem(db, item.problem_id)["verdict"] == "wrong"


def test_wrong_with_the_models_own_answer_is_refused(db):
    item = views.next_item(db, "ann")
    with pytest.raises(views.InvalidInput, match="Accept"):
        views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="wrong",
                           gold_text=item.majority, shown_answer=item.majority)


def test_undo_appends_a_row_and_brings_the_item_straight_back(db):
    first = views.next_item(db, "ann")
    views.submit_label(db, annotator="ann", problem_id=first.problem_id, action="flawed", seconds=3)
    second = views.next_item(db, "ann")
    assert second.problem_id != first.problem_id
    views.undo_last(db, "ann")
    rows = _label_rows(db)
    assert [r["verdict"] for r in rows] == ["flawed", "undo"] and rows[1]["undoes"] == rows[0]["id"]
    assert store.get_problem(db, first.problem_id)["verdict"] is None
    assert views.next_item(db, "ann").problem_id == first.problem_id
    with pytest.raises(store.NothingToUndo):
        views.undo_last(db, "bob")


def test_skip_spends_no_budget(db):
    item = views.next_item(db, "ann")
    views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="skip")
    assert store.budget_status(db)["spent"] == 0
    assert views.next_item(db, "ann").problem_id != item.problem_id


def test_unknown_action_and_missing_user_are_refused(db):
    with pytest.raises(views.InvalidInput):
        views.submit_label(db, annotator="ann", problem_id="x", action="approve")
    with pytest.raises(views.InvalidInput):
        views.next_item(db, "  ")


# ------------------------------------------------------------------ inspect

def test_find_problems_filters_and_sorts(db):
    everything = views.find_problems(db)
    assert len(everything.rows) == everything.total == 41
    values = [r["uncertainty"] for r in views.find_problems(db, sort="uncertainty").rows]
    assert values == sorted(values, reverse=True)
    annotate = views.find_problems(db, routes=["annotate"]).rows
    assert annotate and all(r["route"] == "annotate" for r in annotate)
    assert [r["problem_id"] for r in views.find_problems(db, search="ALERT(1)").rows] == [problem_id(XSS)]
    assert views.find_problems(db, search="no-such-word-here").rows == []
    band = views.find_problems(db, uncertainty=(0.4, 0.6)).rows
    assert all(0.4 <= r["uncertainty"] <= 0.6 for r in band)
    for r in everything.rows:  # each routed problem shows its credible interval around its uncertainty
        low, high = (float(x) for x in r["90% interval"].split("–"))
        assert low - 0.005 <= r["uncertainty"] <= high + 0.005
    dense = views.find_problems(db, min_density=2.0).rows
    assert dense and all(r["pivot_density"] >= 2.0 for r in dense)
    first = everything.rows[0]["problem_id"]
    assert first in {r["problem_id"] for r in views.find_problems(db, search=first[:6]).rows}  # id prefix
    with pytest.raises(ValueError, match="Unknown sort"):
        views.find_problems(db, sort="random")


def test_find_problems_lists_the_first_matches_and_counts_all(db):
    by_value = views.find_problems(db).rows
    top = views.find_problems(db, limit=5)
    assert top.total == 41 and [r["problem_id"] for r in top.rows] == [r["problem_id"] for r in by_value[:5]]
    recent = views.find_problems(db, sort="recent", limit=3).rows
    ingest = [r[0] for r in db.execute("select id from problems order by rowid")]
    assert [r["problem_id"] for r in recent] == [pid for pid in ingest
                                                 if pid in {r["problem_id"] for r in by_value}][:3]


def test_find_problems_search_folds_case_beyond_ascii_and_takes_wildcards_literally(tmp_path):
    text = "ÜBER-Straße: 50% of 8 apples are eaten. How many apples are left?"
    db = build_app_db(tmp_path / "u.db", n_problems=6,
                      extra_problems=[Problem(problem_id(text), text, "user", "4", {})])
    assert [r["problem_id"] for r in views.find_problems(db, search="über strasse").rows] == [problem_id(text)]
    assert views.find_problems(db, search="50%").total == 1
    assert views.find_problems(db, search="5_%").total == 0  # no LIKE wildcards
    untraced = views.find_problems(db, routes=[None], traced_only=False)
    assert untraced.total == 0  # every problem here is routed


def test_trace_view_shapes_and_attention_targets(db):
    pid = views.find_problems(db).rows[0]["problem_id"]
    view = views.trace_view(db, pid, "synth")
    n_steps = len(view.steps)
    assert view.entropy.shape == (30, n_steps)
    assert view.temporal.shape == view.consistency.shape == view.scores.shape == (n_steps,)
    last = n_steps - 1
    targets = views.attention_targets(view, last)
    assert [t["label"] for t in targets][0] == "prompt" and targets[-1]["label"].endswith("(itself)")
    assert len(targets) == last + 2
    assert sum(t["share"] for t in targets) == pytest.approx(1.0)
    expected = view.segment_attention[:, last, : last + 2].mean(axis=0)
    assert [t["share"] for t in targets] == pytest.approx(list(expected / expected.sum()))
    assert views.attention_targets(view, n_steps) == []


def test_compare_two_models_side_by_side(db):
    pid = views.find_problems(db, sort="recent").rows[0]["problem_id"]
    assert store.trace_models(db, pid) == ["synth", "synth-b"]
    a, b = views.trace_view(db, pid, "synth"), views.trace_view(db, pid, "synth-b")
    rows = {r["measure"]: r for r in views.compare_rows(a, b)}
    assert rows["model"]["A"] == "synth" and rows["model"]["B"] == "synth-b"
    assert rows["steps"]["B"] == str(len(b.steps)) and b.n_layers == 12 and b.scored


# ------------------------------------------------------------------ budget and router (leads)

def test_only_a_lead_changes_the_budget(db):
    with pytest.raises(store.PermissionDenied):
        views.set_budget(db, user="ann", total=500)
    with pytest.raises(store.PermissionDenied):
        views.set_budget(db, user="nobody", total=500)
    assert store.budget_status(db)["total"] == 10
    versions = len(store.router_versions(db))
    views.set_budget(db, user="lee", total=25, cost_per_label=2.5)
    assert store.budget_status(db)["total"] == 25
    assert len(store.router_versions(db)) == versions + 1  # capacity changed: re-routed
    assert store.route_counts(db)["annotate"] > 10


def test_only_a_lead_changes_the_target_and_it_sticks(db):
    with pytest.raises(store.PermissionDenied):
        views.set_target_precision(db, user="bob", target=0.95)
    with pytest.raises(views.InvalidInput):
        views.set_target_precision(db, user="lee", target=1.5)
    report = views.set_target_precision(db, user="lee", target=0.95)
    assert report.thresholds["target_precision"] == 0.95
    assert views.current_target_precision(db) == 0.95
    item = views.next_item(db, "ann")
    views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="accept", shown_answer=item.majority)
    assert pipeline.wait_for_background(60)
    assert store.router_versions(db)[-1]["thresholds"]["target_precision"] == 0.95  # kept on recalibration



def test_a_precision_target_below_one_half_is_refused_and_routes_nothing(db):
    """Below 0.5 the self-train band could hold majorities likelier wrong than right."""
    versions = len(store.router_versions(db))
    for target in (0.3, 0.49):
        with pytest.raises(views.InvalidInput, match="at least 0.5"):
            views.set_target_precision(db, user="lee", target=target)
    assert len(store.router_versions(db)) == versions
    assert views.set_target_precision(db, user="lee", target=0.5).thresholds["target_precision"] == 0.5

def test_budget_view_after_labels(db):
    for name in ("ann", "bob", "ann"):
        item = views.next_item(db, name)
        views.submit_label(db, annotator=name, problem_id=item.problem_id, action="accept",
                           shown_answer=item.majority, seconds=10 if name == "ann" else 30)
    views.set_budget(db, user="lee", total=10, cost_per_label=2.0)
    view = views.budget_view(db)
    assert (view.total, view.spent, view.remaining) == (10, 3, 7)
    assert view.spent_cost == 6.0 and view.remaining_cost == 14.0
    assert view.per_day[-1]["spent"] == 3 and view.burn_per_day > 0 and view.run_out is not None
    people = {p["annotator"]: p for p in view.annotators}
    assert people["ann"]["labels"] == 2 and people["ann"]["median seconds"] == 10.0
    assert people["ann"]["labels per hour"] == 360.0 and people["bob"]["labels"] == 1


def test_route_mix_series_counts_every_problem_per_version(db):
    views.set_budget(db, user="lee", total=20)
    rows = views.route_mix_series(db)
    versions = sorted({r["router_version"] for r in rows})
    assert versions == [v["id"] for v in store.router_versions(db)]
    for version in versions:
        counts = {r["route"]: r["count"] for r in rows if r["router_version"] == version}
        assert sum(counts.values()) == 41
    last = {r["route"]: r["count"] for r in rows if r["router_version"] == versions[-1]}
    assert last == store.route_counts(db)


def test_route_mix_from_stored_counts_matches_the_route_log_replay(db):
    views.set_budget(db, user="lee", total=25)
    views.set_target_precision(db, user="lee", target=0.95)
    stored = views.route_mix_series(db)
    assert all(v["counts"] is not None for v in store.router_versions(db))
    db.execute("update router_versions set counts = null")  # as a database from before migration 4
    assert views.route_mix_series(db) == stored


def test_router_history_has_thresholds_and_notes(db):
    views.set_target_precision(db, user="lee", target=0.9)
    history = views.router_history(db)
    assert history[-1]["target precision"] == 0.9 and "lee" in history[-1]["note"]
    versions = {v["id"]: v for v in store.router_versions(db)}
    for h in history:  # a band that stays shut (no self-train problem at the new target) has no max
        opened = (versions[h["version"]]["counts"] or {}).get("self_train", 0) > 0
        assert (h["self-train max u"] is not None) == opened
    # no labels yet: every version shows the self-train band closed (with the probe labels it needs)
    # or, at the stricter target, empty; never open
    assert history[0]["self-train"].startswith("closed, 23 probe labels")
    assert all(h["self-train"].startswith("closed") or h["self-train"] == "empty" for h in history)
    assert all(h["delta"] == 0.1 for h in history)


# ------------------------------------------------------------------ pool

def test_ingest_upload_reports_rejected_lines_and_keeps_good_rows(db):
    data = b'{"question": "What is 2+2?", "answer": "#### 4"}\n{"question": ""}\nnot json\n' \
           b'{"problem": "What is 3+3?"}\n'
    report = views.ingest_upload(db, data, "upload.jsonl")
    assert report.added == 2
    assert [r["line"] for r in views.rejected_rows(report)] == [2, 3]
    assert "bad JSON" in views.rejected_rows(report)[1]["reason"]
    with pytest.raises(views.InvalidInput):
        views.ingest_upload(db, b"x", "pool.xlsx")
    summary = views.pool_summary(db)
    assert {s["source"]: s["problems"] for s in summary["sources"]}["upload"] == 2


def test_empty_database_is_detected(tmp_path):
    empty = store.open_db(tmp_path / "e.db")
    assert views.is_empty(empty)
    assert views.budget_view(empty).per_day == []
    assert views.route_mix_series(empty) == [] and views.find_problems(empty).rows == []


def test_score_colour_grows_with_score():
    alphas = [float(views.score_colour(s).rsplit(",", 1)[1].rstrip(")")) for s in (0, 1, 2, 100)]
    assert alphas == sorted(alphas) and alphas[0] == 0 and alphas[-1] == pytest.approx(0.55)
    assert np.isclose(float(views.token_colour(100).rsplit(",", 1)[1].rstrip(")")), 0.7)


def test_markdown_text_is_escaped_for_alerts_and_labels():
    hostile = "![x](http://evil.example/x.png) :red[boom] **bold** <b>"
    out = views.md(hostile)
    for raw in ("![", "](", ":red[", "**", "<b>"):
        assert raw not in out
    assert out.replace("\\", "") == hostile  # only backslashes were added


def test_invalid_gold_message_does_not_echo_markup(db):
    item = views.next_item(db, "ann")
    with pytest.raises(views.InvalidInput) as caught:
        views.submit_label(db, annotator="ann", problem_id=item.problem_id, action="wrong",
                           gold_text="![x](http://evil.example/x.png) ???", shown_answer=item.majority)
    assert "![x](" not in str(caught.value) and "http\\:" in str(caught.value)


def test_band_rows_show_estimated_and_measured_precision_and_the_state(db):
    bands = {b["band"]: b for b in views.band_rows(db)}
    st = bands["self-train"]
    assert st["labels behind it"] == 0 and st["measured precision"] is None and st["interval"] is None
    assert st["state"].startswith("closed") and st["target"] == 0.85 and st["delta"] == 0.1
    assert bands["low priority"]["state"].startswith("unverified") or bands["low priority"]["problems"] == 0
    views.set_target_precision(db, user="lee", target=0.9, delta=0.05)
    assert views.current_delta(db) == 0.05 and views.band_rows(db)[0]["delta"] == 0.05
    with pytest.raises(views.InvalidInput, match="delta"):
        views.set_target_precision(db, user="lee", target=0.9, delta=0.9)


def test_a_band_that_cannot_repay_its_probes_says_so():
    from pivottrace.views.budget import band_state

    cert = {"candidates": 19, "certified": 0, "open": False, "probes_to_go": 23, "probes_repay": False}
    assert band_state(cert) == ("closed, 23 probe labels would open it, too many for its 19 problems, "
                                "so none are queued (they wait, or are labelled directly)")
    assert band_state({**cert, "candidates": 400, "probes_repay": True}) == "closed, 23 probe labels to go"
