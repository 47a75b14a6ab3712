"""AppTest per page, against databases prepared by the package: each page renders without an
exception, and its main action changes the database as expected."""

import json
import time
from pathlib import Path

import pytest
from conftest import OPERATOR, build_app_db
from streamlit.testing.v1 import AppTest

from pivottrace import auth, jobs, store, views
from pivottrace.datasets import Problem, problem_id

ROOT = Path(__file__).resolve().parent.parent
XSS = "<script>alert(1)</script><img src=x onerror=alert(1)>"
TIMEOUT = 120  # seconds per script run; the live-trace run loads a model


@pytest.fixture
def navigation_app(monkeypatch):
    """Run app.py as the server does. A folder named pages/ makes Streamlit start in its legacy
    multipage mode, which st.navigation switches off during the first run; the live server keeps
    that for the session, but AppTest resets it before every run and would then execute the page
    file alone on reruns (streamlit#9446). Keep it off, as the server does after the first run."""
    from streamlit.runtime import pages_manager

    original = pages_manager.PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pages_manager.PagesManager.uses_pages_directory = False

    monkeypatch.setattr(pages_manager.PagesManager, "__init__", init)


PASSWORD = "test password 123"


def session_token(user: str) -> str:
    """A real session for `user` (given a password first, as the CLI would): what sign-in leaves
    in the app's session state."""
    db = store.open_db()
    if not store.user_record(db, user)["password_hash"]:
        auth.set_password(db, user, PASSWORD, by=OPERATOR)
    return auth.sign_in(db, user, PASSWORD).token


def page(name: str, user: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / name), default_timeout=TIMEOUT)
    if user:
        at.session_state[views.SESSION_KEY] = session_token(user)
    return at.run()


def by_label(elements, label: str):
    matches = [e for e in elements if e.label == label]
    assert matches, f"no widget labelled {label!r}"
    return matches[0]


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_for_job(db, job_id: int, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.get_job(db, job_id)
        if job["status"] not in jobs.ACTIVE:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s: {job['message']}")


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = tmp_path / "app.db"
    database = build_app_db(path, second_model=5, extra_problems=[Problem(problem_id(XSS), XSS, "evil", "3")])
    monkeypatch.setenv("PIVOTTRACE_DB", str(path))
    return database


def labels(db) -> list[dict]:
    return list(db.query("select * from labels order by id"))


# ------------------------------------------------------------------ app.py: sidebar and empty state

def test_empty_database_offers_the_demo_which_runs_in_the_background(tmp_path, monkeypatch, navigation_app):
    path = tmp_path / "empty.db"
    monkeypatch.setenv("PIVOTTRACE_DB", str(path))
    auth.ensure_first_lead(store.open_db(path), operator=OPERATOR)
    auth.set_password(store.open_db(path), auth.FIRST_LEAD, PASSWORD, by=OPERATOR)
    at = ok(page("app.py", auth.FIRST_LEAD))
    assert at.title[0].value == "Welcome to PivotTrace"
    by_label(at.button, "Run the demo").click().run()
    db = store.open_db(path)
    started = store.jobs(db)
    assert [j["kind"] for j in started] == ["demo"]
    assert started[0]["pid"]  # a separate process, not the page
    jobs.cancel(db, started[0]["id"])  # the real model is not needed here
    assert store.get_job(db, started[0]["id"])["status"] == "cancelled"


def test_sign_in_page_refuses_a_wrong_password_and_signs_in_with_the_right_one(db, navigation_app):
    auth.set_password(db, "lee", PASSWORD, by=OPERATOR)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["user"] = "lee"  # the URL names nobody
    ok(at.run())
    assert at.title[0].value == "Sign in to PivotTrace" and not at.sidebar.button
    by_label(at.text_input, "Name").input("lee")
    by_label(at.text_input, "Password").input(PASSWORD + "x")
    by_label(at.button, "Sign in").click().run()
    ok(at)
    assert "Wrong name or password" in at.error[0].value and views.SESSION_KEY not in at.session_state
    by_label(at.text_input, "Name").input("lee")
    by_label(at.text_input, "Password").input(PASSWORD)
    by_label(at.button, "Sign in").click().run()
    ok(at)
    assert views.session_identity(db, at.session_state[views.SESSION_KEY]).name == "lee"
    assert any("Signed in as **lee**" in m.value for m in at.sidebar.markdown)
    by_label(at.sidebar.button, "Sign out").click().run()
    ok(at)
    assert at.title[0].value == "Sign in to PivotTrace"


def test_an_expired_session_gets_the_sign_in_page(db, navigation_app, monkeypatch):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state[views.SESSION_KEY] = session_token("ann")
    ok(at.run())
    assert at.title[0].value != "Sign in to PivotTrace"
    later = store.now() + auth.SESSION_SECONDS + 1
    monkeypatch.setattr(store, "now", lambda: later)  # the clock moves past the session's end
    ok(at.run())
    assert at.title[0].value == "Sign in to PivotTrace"
    assert "session has ended" in at.info[0].value


def test_a_lead_adds_a_person_with_a_one_time_password_who_must_change_it(db, navigation_app):
    at = ok(page("app.py", "lee"))
    by_label(at.sidebar.text_input, "Name").input("Zoe")
    by_label(at.sidebar.selectbox, "Role").select("researcher")
    by_label(at.sidebar.button, "Add").click().run()
    ok(at)
    assert store.user_role(db, "Zoe") == "researcher"
    one_time = at.sidebar.success[0].value.split("`")[1]
    zoe = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    zoe.session_state[views.SESSION_KEY] = auth.sign_in(db, "Zoe", one_time).token
    ok(zoe.run())
    assert zoe.title[0].value == "Choose your password"
    by_label(zoe.text_input, "New password").input(PASSWORD)
    by_label(zoe.text_input, "New password again").input(PASSWORD)
    by_label(zoe.button, "Change password").click().run()
    ok(zoe)
    assert auth.sign_in(db, "Zoe", PASSWORD).identity.role == "researcher"


def test_an_annotator_gets_no_people_controls_and_cannot_add_a_lead(db, navigation_app):
    at = ok(page("app.py", "ann"))
    assert not [t for t in at.sidebar.text_input if t.label == "Name"]
    assert not [b for b in at.sidebar.button if b.label in ("Add", "Change role")]
    with pytest.raises(views.AuthError):  # and the package refuses the same change from her session
        views.add_person(db, views.session_identity(db, session_token("ann")), "mallory", "lead")
    assert store.user_role(db, "mallory") is None


# ------------------------------------------------------------------ Annotate

def test_annotate_accept_wrong_undo(db):
    at = ok(page("pages/annotate.py", "ann"))
    first = store.next_item(db, "ann")["problem_id"]
    at.button(key="accept").click().run()
    ok(at)
    assert [(r["problem_id"], r["verdict"], r["annotator"]) for r in labels(db)] == [(first, "correct", "ann")]
    assert labels(db)[0]["seconds"] is not None and labels(db)[0]["seconds"] >= 0
    assert at.success and "recalibrates in the background" in at.success[0].value  # the submit did not wait

    second = store.next_item(db, "ann")["problem_id"]
    assert second != first
    at.text_input(key=f"gold-{second}").input("???")
    at.button(key="wrong").click().run()
    assert at.error and "Cannot read" in at.error[0].value
    assert len(labels(db)) == 1  # refused: nothing saved
    at.text_input(key=f"gold-{second}").input("3/4")
    at.button(key="wrong").click().run()
    ok(at)
    assert (labels(db)[-1]["verdict"], labels(db)[-1]["gold_answer"]) == ("wrong", "3/4")

    at.button(key="undo").click().run()
    ok(at)
    assert [r["verdict"] for r in labels(db)] == ["correct", "wrong", "undo"]
    assert store.get_problem(db, second)["verdict"] is None
    assert at.text_input(key=f"gold-{second}")  # the undone item is back on screen


def test_annotate_marks_the_first_wrong_step_after_a_wrong_verdict(db):
    at = ok(page("pages/annotate.py", "ann"))
    assert not [b for b in at.button if b.key and b.key.startswith("step-")]  # nothing to mark yet
    wrong = store.next_item(db, "ann")["problem_id"]
    at.text_input(key=f"gold-{wrong}").input("12345")
    at.button(key="wrong").click().run()
    ok(at)
    assert labels(db)[-1]["verdict"] == "wrong"  # the verdict is saved at once; the step mark is optional
    assert store.next_item(db, "ann")["problem_id"] != wrong  # and the queue moved on
    n_steps = len(store.load_trace(db, wrong)["steps"])
    assert at.button(key="step-1") and at.button(key="step-1").proto.shortcut == "1"
    assert len([b for b in at.button if b.key and b.key.startswith("step-") and b.key != "step-unmark"]) == min(n_steps, 9)
    at.button(key="step-2").click().run()
    ok(at)
    [mark] = store.effective_step_labels(db, problem_id=wrong)
    assert (mark["annotator"], mark["first_wrong_step"], mark["n_steps"]) == ("ann", 1, n_steps)
    assert at.success and "step 2" in at.success[0].value
    at.button(key="step-unmark").click().run()
    ok(at)
    assert store.effective_step_labels(db, problem_id=wrong) == []
    assert db.execute("select count(*) from step_labels").fetchone()[0] == 2  # append-only: the undo is a row
    at.button(key="accept").click().run()  # the next verdict is not "wrong": the step panel goes away
    ok(at)
    assert not [b for b in at.button if b.key == "step-1"]


def test_annotate_shows_hostile_problem_text_as_text(db):
    version = store.router_versions(db)[-1]["id"]
    store.save_routes(db, [{"problem_id": problem_id(XSS), "model_id": "synth", "route": "annotate",
                            "uncertainty": 0.99, "value": 99.0}], version)
    at = ok(page("pages/annotate.py", "ann"))
    bodies = [h.value for h in at.html]
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in b for b in bodies)
    assert not any("<script" in b or "<img" in b for b in bodies)


def test_annotate_without_a_session_asks_to_sign_in_and_ignores_the_url(db):
    at = AppTest.from_file(str(ROOT / "pages/annotate.py"), default_timeout=TIMEOUT)
    at.query_params["user"] = "ann"
    at.session_state["user"] = "ann"  # the old way of saying who you are counts for nothing
    ok(at.run())
    assert "Sign in first" in at.info[0].value
    assert not at.button
    assert not db.execute("select count(*) from assignments").fetchone()[0]  # nobody leased anything


# ------------------------------------------------------------------ Inspect

def test_inspect_search_finds_and_escapes(db):
    at = ok(page("pages/inspect.py", "lee"))
    at.text_input(key="inspect_search").input("alert").run()
    ok(at)
    assert at.selectbox(key="inspect_problem").value == problem_id(XSS)
    bodies = [h.value for h in at.html]
    assert any("&lt;script&gt;alert(1)" in b for b in bodies)
    assert not any("<script" in b or "<img" in b for b in bodies)
    assert len(at.get("plotly_chart")) == 3  # trace figure, token entropy, attention


def test_inspect_compares_two_models(db):
    at = ok(page("pages/inspect.py", "lee"))
    two = next(r["problem_id"] for r in views.find_problems(db).rows if r["traces"] == 2)
    at.selectbox(key="inspect_problem").select(two).run()
    at.selectbox(key="inspect_compare").select("synth-b").run()
    ok(at)
    table = at.dataframe[-1].value
    assert list(table.columns) == ["measure", "A", "B"]
    assert table.set_index("measure").loc["model"].tolist() == ["synth", "synth-b"]


def test_inspect_live_trace_loads_the_model_and_stores_nothing(db, tiny_model_dir):
    traces_before = db["traces"].count
    at = ok(page("pages/inspect.py", "lee"))
    at.text_input(key="inspect_spec").input(str(tiny_model_dir))
    by_label(at.button, "Trace now").click().run()
    ok(at)
    live = at.session_state["live"]
    assert live.model_id == f"{tiny_model_dir} (live)" and live.n_layers == 2
    table = at.dataframe[-1].value.set_index("measure")
    assert table.loc["model"].tolist() == ["synth", live.model_id]
    assert db["traces"].count == traces_before and store.latest_model_id(db) == "synth"


# ------------------------------------------------------------------ Budget

def test_budget_lead_sets_budget_and_target(db):
    at = ok(page("pages/budget.py", "lee"))
    by_label(at.number_input, "Labels").set_value(30)
    by_label(at.number_input, "Cost per label (optional)").set_value(1.5)
    by_label(at.button, "Save budget").click().run()
    ok(at)
    assert store.budget_status(db)["total"] == 30 and store.budget_status(db)["cost_per_label"] == 1.5
    assert "Budget set to 30" in at.success[0].value
    by_label(at.slider, "Self-train precision target").set_value(0.9)
    by_label(at.button, "Re-route with this target").click().run()
    ok(at)
    assert store.router_versions(db)[-1]["thresholds"]["target_precision"] == 0.9


def test_budget_has_no_controls_for_annotators_and_shows_the_audit_trail(db):
    at = ok(page("pages/budget.py", "ann"))
    assert "only a lead" in at.info[0].value
    assert not at.button and not at.number_input and not at.slider
    assert not [f for f in at.get("form")]
    trail = at.dataframe[-1].value
    assert list(trail.columns) == ["time", "who", "what", "subject", "from", "to"]
    assert ("lee", "budget", "10 labels") in set(zip(trail["who"], trail["what"], trail["to"]))


# ------------------------------------------------------------------ Pool

def test_pool_ingests_an_upload_and_lists_rejected_rows(db):
    before = db["problems"].count
    at = ok(page("pages/pool.py", "lee"))
    data = b'{"question": "What is 7 + 5?", "answer": "#### 12"}\n{"question": 5}\n{"prompt": "What is 2 * 9?"}\n'
    at.file_uploader[0].set_value(("more.jsonl", data, "application/json"))
    by_label(at.button, "Ingest").click().run()
    ok(at)
    assert db["problems"].count == before + 2
    assert "Added 2 problems" in at.success[0].value and "1 rows were rejected" in at.error[0].value
    assert at.dataframe[0].value.to_dict("records") == [{"line": 2, "reason": "field 'question' is not text"}]


def test_pool_routes_on_demand_in_the_background(db):
    versions = len(store.router_versions(db))
    at = ok(page("pages/pool.py", "lee"))
    by_label(at.button, "Route now").click().run()
    ok(at)
    job = store.jobs(db)[0]
    assert job["kind"] == "route"
    assert wait_for_job(db, job["id"])["status"] == "done"
    assert len(store.router_versions(db)) == versions + 1


def test_pool_traces_with_a_model_in_the_background(db, tiny_model_dir):
    store.insert_problems(db, [Problem(problem_id("What is 1 + 1?"), "What is 1 + 1?", "new", "2"),
                               Problem(problem_id("What is 2 + 5?"), "What is 2 + 5?", "new", "7")])
    at = ok(page("pages/pool.py", "lee"))
    by_label(at.text_input, "Model").input(str(tiny_model_dir))
    by_label(at.number_input, "Problems").set_value(2)
    by_label(at.number_input, "Samples (K)").set_value(1)
    by_label(at.number_input, "Max new tokens").set_value(16)
    by_label(at.selectbox, "Device").set_value("cpu")
    by_label(at.selectbox, "Precision").set_value("float32")
    by_label(at.button, "Start tracing").click().run()
    ok(at)
    assert "keeps running" in at.success[0].value
    job = store.jobs(db)[0]
    assert job["kind"] == "trace" and job["pid"]
    assert (json.loads(job["args"])["device"], json.loads(job["args"])["dtype"]) == ("cpu", "float32")
    finished = wait_for_job(db, job["id"])
    assert finished["status"] == "done", finished["message"]
    assert (finished["done"], finished["total"]) == (2, 2)
    traced = db.execute("select count(*) from traces where model_id = ?", [str(tiny_model_dir)]).fetchone()[0]
    assert traced == 2
    at = ok(page("pages/pool.py", "lee"))  # a fresh session (a reload) sees the finished job
    assert any(f"#{job['id']} · done" in m.value for m in at.markdown)


def test_pool_refuses_an_unknown_model_cleanly(db):
    at = ok(page("pages/pool.py", "lee"))
    by_label(at.text_input, "Model").input("/no/such/model/folder")
    by_label(at.button, "Start tracing").click().run()
    ok(at)
    assert "No file or folder" in at.error[0].value
    assert store.jobs(db) == []


# ------------------------------------------------------------------ background jobs behind the pages

def test_demo_job_ingests_traces_and_routes(tmp_path, tiny_model_dir):
    db = store.open_db(tmp_path / "demo.db")
    job_id = jobs.start_demo(db, model=str(tiny_model_dir), problems=6, traced=2, samples=1, max_new_tokens=16,
                             rest=False, by=OPERATOR)
    finished = wait_for_job(db, job_id)
    assert finished["status"] == "done", finished["message"]
    assert db["problems"].count == 6 and db["traces"].count == 2
    assert store.route_counts(db) and db["routes"].count == 2 and "router v1" in finished["message"]


def test_a_live_result_round_trips_through_its_file_without_pickle(tmp_path):
    import numpy as np

    from pivottrace.datasets import demo_problems
    from pivottrace.synthetic import synthetic_trace

    result = synthetic_trace(demo_problems(1, seed=0)[0], np.random.default_rng(0), n_layers=3)
    result.trace.steps[0]["tok_end"] = np.int64(result.trace.steps[0]["tok_end"])  # numpy ints become JSON
    path = tmp_path / "1.live.npz"
    jobs.write_live_result(path, "m", result)
    meta, arrays = jobs.read_live_result(path)  # np.load with allow_pickle=False
    assert (meta["model_id"], meta["completion"], meta["answer"]) == ("m", result.trace.completion, result.trace.answer)
    assert meta["steps"] == [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in step.items()}
                             for step in result.trace.steps]
    assert meta["sample_answers"] == list(result.sample_answers) and meta["tokens"] == list(result.trace.tokens)
    assert set(arrays) == set(result.trace.arrays)
    assert all(np.array_equal(arrays[k], result.trace.arrays[k]) for k in arrays)
    assert not list(tmp_path.glob("*.part"))


def test_a_live_trace_of_an_unknown_problem_or_model_starts_no_job(db, tiny_model_dir):
    from pivottrace.models import ModelNotFoundError

    with pytest.raises(jobs.JobError, match="No problem"):
        jobs.start_live(db, model=str(tiny_model_dir), problem_id="no-such-problem")
    with pytest.raises(ModelNotFoundError):
        jobs.start_live(db, model="/no/such/model/folder", problem_id=problem_id(XSS))
    assert store.jobs(db) == []


def test_a_job_whose_worker_died_is_marked_failed(db):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    job_id = store.create_job(db, "route", {}, 1)
    store.update_job(db, job_id, status="running", pid=gone.pid)
    [job] = [j for j in jobs.refresh(db) if j["id"] == job_id]
    assert job["status"] == "failed" and "stopped without reporting" in job["message"]
    assert jobs.active(db) == []


# ------------------------------------------------------------------ evaluation
def test_evaluation_page_runs_the_eval_in_the_background_and_shows_the_report(db, navigation_app):
    from pivottrace import views

    at = ok(page("pages/evaluation.py", "lee"))
    assert any("No evaluation report" in i.value for i in at.info)  # says what to do next
    by_label(at.button, "Run the evaluation").click().run()
    ok(at)
    job = store.jobs(db)[0]
    assert job["kind"] == "eval"
    assert wait_for_job(db, job["id"])["status"] == "done", job["message"]
    assert (views.evaluation_folder() / "report.md").is_file()

    at = ok(page("pages/evaluation.py", "lee"))
    assert at.metric[0].value == str(db["problems"].count)  # every problem here has a gold answer
    strategies = {row["strategy"] for row in at.dataframe[0].value.to_dict("records")}
    assert {"pivottrace", "random", "confidence_only", "vote_share_only"} <= strategies


def test_annotators_read_the_pool_and_evaluation_pages_without_their_actions(db):
    pool = ok(page("pages/pool.py", "ann"))
    assert not pool.button and not pool.get("file_uploader")
    assert "leads and researchers" in pool.info[0].value
    evaluation = ok(page("pages/evaluation.py", "ann"))
    assert not [b for b in evaluation.button if b.label == "Run the evaluation"]
