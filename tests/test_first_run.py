"""The first ten minutes, package side: `python -m pivottrace`, and the demo's background run."""

import subprocess
import sys
from pathlib import Path

from conftest import OPERATOR
from test_app_pages import by_label, navigation_app, ok, page, wait_for_job  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent


def test_python_dash_m_pivottrace_is_the_command_line():
    out = subprocess.run([sys.executable, "-m", "pivottrace", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage: pivottrace" in out.stdout and "demo" in out.stdout


def test_demo_job_traces_a_handful_then_the_rest_and_sets_the_budget(tmp_path, tiny_model_dir):
    from pivottrace import jobs, pipeline, store

    db = store.open_db(tmp_path / "demo.db")
    job_id = jobs.start_demo(db, model=str(tiny_model_dir), problems=12, traced=3, samples=1, max_new_tokens=16,
                             by=OPERATOR)
    finished = wait_for_job(db, job_id)
    assert finished["status"] == "done", finished["message"]
    assert (finished["done"], finished["total"]) == (12, 12)
    assert db["problems"].count == 12 and db["traces"].count == 12 and db["routes"].count == 12
    assert store.budget_status(db)["total"] == pipeline.demo_budget(12) and store.budget_set_by(db) == "demo"
    notes = [v["note"] for v in store.router_versions(db)]
    # the handful is routed at once, then the rest re-routes every DEMO_ROUTE_EVERY traces
    assert notes == ["demo", "demo: more traces", "demo: more traces"]
    steps = [p["meta"] for p in db.query("select meta from problems order by rowid")]
    kinds = set(steps)
    assert len(kinds) > 1 and set(steps[:len(kinds)]) == kinds  # the handful spans every step count first


def test_the_demo_budget_never_overrides_a_leads(tmp_path):
    from pivottrace import store

    db = store.open_db(tmp_path / "b.db")
    store.add_user(db, "lee", "lead", by=OPERATOR)
    store.set_budget(db, user="lee", total=50)
    assert not store.set_initial_budget(db, total=4, set_by="demo", by=OPERATOR)
    assert store.budget_status(db)["total"] == 50 and store.budget_set_by(db) == "lee"


def test_evaluation_says_what_is_missing_until_enough_problems_with_gold_are_traced(tmp_path):
    from conftest import build_app_db

    from pivottrace import store, views
    from pivottrace.evaluate import MIN_POOL

    empty = store.open_db(tmp_path / "empty.db")
    assert "Nothing is traced yet" in views.evaluation_blocker(empty)
    small = build_app_db(tmp_path / "small.db", n_problems=MIN_POOL - 1)
    assert f"at least {MIN_POOL}" in views.evaluation_blocker(small) and f"{MIN_POOL - 1} so far" in views.evaluation_blocker(small)
    assert views.evaluation_blocker(build_app_db(tmp_path / "enough.db", n_problems=MIN_POOL)) is None


def test_every_route_is_listed_with_its_meaning_even_when_empty(tmp_path):
    from conftest import build_app_db

    from pivottrace import store, views

    db = build_app_db(tmp_path / "r.db")
    rows = views.route_rows(db)
    assert [r["problems"] for r in rows] == list(store.route_counts(db).values())
    assert len(rows) == len(store.ROUTES) and all(r["meaning"] for r in rows)
    assert sum(r["problems"] for r in rows) == db["routes"].count


# ------------------------------------------------------------------ pages: job state and fresh numbers where the user is

def test_pool_counters_and_sources_are_fresh_right_after_an_upload(app_db):
    db, _ = app_db
    before = db["problems"].count
    at = ok(page("pages/pool.py", "lee"))
    data = b'{"question": "What is 7 + 5?", "answer": "12"}\n{"question": "What is 3 + 4?"}\n{"question": "What is 9 - 2?"}\n'
    at.file_uploader[0].set_value(("fresh.jsonl", data, "application/json"))
    by_label(at.button, "Ingest").click().run()
    ok(at)
    assert "Added 3 problems" in at.success[0].value
    assert by_label(at.metric, "Problems").value == str(before + 3)  # the same run, not the next one
    sources = at.dataframe[-1].value.to_dict("records")
    assert {"source": "fresh.jsonl", "problems": 3} in sources or any(r["problems"] == 3 for r in sources)


def test_evaluation_button_is_disabled_and_says_what_is_missing(tmp_path, monkeypatch):
    from conftest import build_app_db

    build_app_db(tmp_path / "few.db", n_problems=5)
    monkeypatch.setenv("PIVOTTRACE_DB", str(tmp_path / "few.db"))
    at = ok(page("pages/evaluation.py", "lee"))
    button = by_label(at.button, "Run the evaluation")
    assert button.disabled and "at least 10" in button.help
    assert any("5 so far" in c.value for c in at.caption)


def test_evaluation_page_shows_a_running_and_a_failed_job(app_db):
    import os

    from pivottrace import store

    db, _ = app_db
    job_id = store.create_job(db, "eval", {}, 1)
    store.update_job(db, job_id, status="running", pid=os.getpid(), message="playing the labelling loop")
    at = ok(page("pages/evaluation.py", "lee"))
    assert not [b for b in at.button if b.label == "Run the evaluation"]  # the progress stands where it was
    assert "playing the labelling loop" in str(at.get("progress")[0].proto)
    store.update_job(db, job_id, status="failed", message="EvaluationError: something went wrong")
    at = ok(page("pages/evaluation.py", "lee"))
    assert "something went wrong" in at.error[0].value and not by_label(at.button, "Run the evaluation").disabled


def test_every_page_shows_a_background_job_in_the_sidebar(app_db, navigation_app):
    import os

    from pivottrace import store

    db, _ = app_db
    job_id = store.create_job(db, "demo", {}, 40)
    store.update_job(db, job_id, status="running", pid=os.getpid(), done=12, message="traced 12 of 40")
    at = ok(page("app.py", "ann"))
    bars = at.sidebar.get("progress")
    assert bars and "Tracing the demo pool" in str(bars[0].proto) and "traced 12 of 40" in str(bars[0].proto)


def test_budget_page_sets_overlap_and_a_lead_settles_a_disagreement(app_db):
    from pivottrace import store, views

    db, _ = app_db
    at = ok(page("pages/budget.py", "lee"))
    by_label(at.number_input, "Overlap: % of items labelled by two annotators").set_value(100)
    by_label(at.button, "Save overlap").click().run()
    ok(at)
    assert store.overlap_share(db) == 1.0
    first = views.next_item(db, "ann")
    views.submit_label(db, annotator="ann", problem_id=first.problem_id, action="accept", shown_answer=first.majority)
    second = views.next_item(db, "bob")
    views.submit_label(db, annotator="bob", problem_id=second.problem_id, action="flawed", second_label=True)

    at = ok(page("pages/budget.py", "lee"))
    assert any("Disagreements to review (1)" in m.value for m in at.markdown)
    assert any("counts **twice**" in m.value for m in at.markdown)
    annotator = ok(page("pages/budget.py", "ann"))  # sees the queue, but no lead's controls (issue 12)
    assert any("Disagreements to review (1)" in m.value for m in annotator.markdown)
    assert not [b.label for b in annotator.button if b.label == "Save overlap" or b.label.startswith("Keep ")]
    by_label(at.button, "Keep bob's label").click().run()
    ok(at)
    assert views.review_queue(db) == [] and store.get_problem(db, first.problem_id)["verdict"] == "flawed"
    assert any("Disagreements to review (0)" in m.value for m in at.markdown)


def test_annotate_page_marks_a_second_opinion(app_db):
    from pivottrace import store, views

    db, _ = app_db
    store.set_overlap_share(db, user="lee", share=1.0)
    first = views.next_item(db, "ann")
    views.submit_label(db, annotator="ann", problem_id=first.problem_id, action="accept", shown_answer=first.majority)
    at = ok(page("pages/annotate.py", "bob"))
    assert "Second opinion" in at.info[0].value
    at.button(key="flawed").click().run()
    ok(at)
    assert [r["annotator"] for r in store.verdicts_by_annotator(db) if r["problem_id"] == first.problem_id] == ["ann", "bob"]


def test_cli_demo_traces_a_handful_then_hands_the_rest_to_a_background_job(tmp_path, tiny_model_dir):
    from pivottrace import store

    path = tmp_path / "cli.db"
    out = subprocess.run([sys.executable, "-m", "pivottrace", "demo", "--model", str(tiny_model_dir),
                          "--problems", "8", "--trace", "2", "--samples", "1", "--max-new-tokens", "16",
                          "--rest-in-background", "--db", str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "traced 2" in out.stdout and "budget 1 labels" in out.stdout and "other 6 demo problems" in out.stdout
    db = store.open_db(path)
    [job] = store.jobs(db)
    finished = wait_for_job(db, job["id"])
    assert finished["status"] == "done", finished["message"]
    assert db["traces"].count == 8 and db["routes"].count == 8
    assert len(store.router_versions(db)) == 2  # the handful's routing, then one more after the other 6
    # the demo budget was set by the local operator, and says so in the audit trail and on stderr
    [budget] = [a for a in store.audit_trail(db) if a["action"] == "budget"]
    assert budget["actor"].startswith(store.LOCAL_PREFIX) and budget["after"] == "1 labels"
    assert "local operator" in out.stderr


def test_the_demo_pool_has_every_step_count_and_larger_pools_are_unchanged():
    from pivottrace.datasets import DEMO_STEP_MIX, demo_problems, with_every_step_count

    drawn = demo_problems(40, seed=0)
    assert {p.meta["steps"] for p in drawn} == {1, 2}  # the draw the demo used to show: short chains only
    demo = with_every_step_count(drawn, seed=0)
    assert len(demo) == 40 and len({p.id for p in demo}) == 40
    assert {p.meta["steps"] for p in demo} == set(range(1, len(DEMO_STEP_MIX) + 1))
    assert sum(p.id not in {q.id for q in drawn} for p in demo) == 2  # only the two missing counts were swapped in
    big = demo_problems(300, seed=0)
    assert with_every_step_count(big, seed=0) == big  # pools that have every count (evaluated ones) stay as they were
