"""End to end in a real browser: the app runs as a `streamlit run` server on localhost and Debian's
chromium, driven by Playwright. An annotator signs in, labels two items with the keyboard
shortcuts (one accept, one wrong with a gold answer), undoes one, and the database is checked; every
page renders. Then sign-in is attacked the ways issue 12 found: a wrong password, an identity in
the URL, an annotator reaching for the budget, a stranger reaching for the lead role (the sign-in
page's screenshot is taken there; the other README screenshots come from the first-run test,
test_browser_first_run.py, on real traces)."""

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import CHROMIUM, OPERATOR, build_app_db

from pivottrace import auth, store, views

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
PASSWORDS = {"lee": "lead password 1", "ann": "annotator password 1"}
GOLD = "987654"  # a gold answer no synthetic trace votes for
WIDTH = 1440
MAX_SHOT_HEIGHT = 2600  # px; long pages are cut here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def app_server(env: dict, log_path: Path):
    """`streamlit run app.py` on a free local port with these extra environment variables; yields its
    base URL once the health check answers, and stops the server afterwards."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false"], cwd=ROOT, env={**os.environ, **env}, stdout=log,
            stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"

        def healthy():
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        try:
            wait_until(healthy, 30, "the app server")
            yield base
        finally:
            process.terminate()
            process.wait(timeout=10)


@pytest.fixture
def server(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed at /usr/bin/chromium")
    path = tmp_path / "e2e.db"
    db = build_app_db(path, budget=12, second_model=5)
    for name, password in PASSWORDS.items():
        auth.set_password(db, name, password, by=OPERATOR)
    for name in ("bob", "bob", "lee"):  # some history for the Budget page
        item = views.next_item(db, name)
        views.submit_label(db, annotator=name, problem_id=item.problem_id, action="accept",
                           shown_answer=item.majority, seconds=20)
    with app_server({"PIVOTTRACE_DB": str(path)}, tmp_path / "server.log") as base:
        yield base, db


def idle(page, timeout: float = 30_000) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)
    page.wait_for_timeout(300)


def screenshot(page, name: str) -> None:
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # no focus ring
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)  # charts draw after the script finishes
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": min(max(int(height) + 40, 900), MAX_SHOT_HEIGHT)})
    page.wait_for_timeout(1500)  # the charts re-lay themselves out to the new size
    ASSETS.mkdir(exist_ok=True)
    page.screenshot(path=str(ASSETS / f"{name}.png"))
    page.set_viewport_size({"width": WIDTH, "height": 1000})


def sign_in(page, base: str, name: str, password: str) -> None:
    page.goto(base)
    idle(page)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    idle(page)


def new_page(browser):
    """A page in a fresh browser context: its own cookies, so its own app session."""
    return browser.new_context(viewport={"width": WIDTH, "height": 1000}).new_page()


def signed_in(browser, base: str, name: str, password: str):
    """A fresh page, signed in as `name` (or refused, if the password is wrong)."""
    page = new_page(browser)
    sign_in(page, base, name, password)
    return page


def heading(page, name: str):
    return page.get_by_test_id("stMainBlockContainer").get_by_role("heading", name=name, exact=True)


def ann_labels(db) -> list[dict]:
    return list(db.query("select * from labels where annotator = 'ann' order by id"))


def test_label_with_keyboard_shortcuts_then_undo(server, browser):
    base, db = server
    page = signed_in(browser, base, "ann", PASSWORDS["ann"])
    page.locator(".st-key-accept").first.wait_for()
    idle(page)
    page.get_by_test_id("stMainBlockContainer").get_by_role("heading", name="Annotate").click()  # focus off inputs

    # A: the majority answer is correct
    page.keyboard.press("a")
    first = wait_until(lambda: ann_labels(db), what="the accept label")[0]
    assert first["verdict"] == "correct" and first["seconds"] is not None
    idle(page)

    # W: wrong, with the gold answer typed first
    gold = page.locator('[class*="st-key-gold-"] input')
    gold.fill(GOLD)
    page.get_by_test_id("stMainBlockContainer").get_by_role("heading", name="Annotate").click()
    page.keyboard.press("w")
    second = wait_until(lambda: ann_labels(db)[1:], what="the wrong label")[0]
    assert (second["verdict"], second["gold_answer"]) == ("wrong", GOLD)
    assert second["problem_id"] != first["problem_id"]
    idle(page)

    # U: undo the last label; the undone item comes straight back
    page.keyboard.press("u")
    undo = wait_until(lambda: ann_labels(db)[2:], what="the undo row")[0]
    assert (undo["verdict"], undo["undoes"]) == ("undo", second["id"])
    idle(page)
    page.get_by_text("Undid 'wrong'").wait_for()
    assert store.get_problem(db, first["problem_id"])["verdict"] == "correct"
    assert store.get_problem(db, second["problem_id"])["verdict"] is None
    assert store.budget_status(db)["spent"] == 4  # three from the fixture, one from the browser

    page = signed_in(browser, base, "lee", PASSWORDS["lee"])
    for name in ("inspect", "budget", "pool"):  # through the navigation: a reload would need a new sign-in
        page.get_by_role("link", name=name.title(), exact=True).click()
        idle(page)
        heading(page, name.title()).wait_for()
        assert not page.get_by_test_id("stException").count()


def test_sign_in_holds_against_a_wrong_password_a_url_an_annotator_and_a_stranger(server, browser):
    base, db = server
    budget_before = store.budget_status(db)
    roles_before = store.users(db)

    # a wrong password is refused, and nothing of the app shows
    page = new_page(browser)
    sign_in(page, base, "lee", PASSWORDS["lee"] + "x")
    page.get_by_text("Wrong name or password.").wait_for()
    heading(page, "Sign in to PivotTrace").wait_for()
    assert not page.get_by_role("link", name="Budget", exact=True).count()
    assert not page.get_by_role("button", name="Sign out").count()

    # a fresh browser opening /budget?user=<lead> gets the sign-in page, not the budget
    page = new_page(browser)
    page.goto(f"{base}/budget?user=lee")
    idle(page)
    heading(page, "Sign in to PivotTrace").wait_for()
    assert not heading(page, "Budget").count()
    assert not page.get_by_role("button", name="Save budget").count()
    screenshot(page, "signin")
    undos_before = db.execute("select count(*) from labels where verdict = 'undo'").fetchone()[0]
    page.goto(f"{base}/?user=bob")  # and U on /?user=<annotator> undoes nobody's label
    idle(page)
    heading(page, "Sign in to PivotTrace").wait_for()
    page.keyboard.press("u")
    page.wait_for_timeout(1000)
    assert db.execute("select count(*) from labels where verdict = 'undo'").fetchone()[0] == undos_before

    # a stranger finds no way to register, let alone as a lead; guessing a name gets nowhere
    assert not page.get_by_role("button", name="Add").count()
    assert not page.get_by_text("Role", exact=True).count()
    sign_in(page, base, "mallory", "let me in please")
    page.get_by_text("Wrong name or password.").wait_for()
    sign_in(page, base, "lee", "a guess at it")
    page.get_by_text("Wrong name or password.").wait_for()

    # an annotator's session has no budget controls, no people controls, and no way to change the budget
    page = new_page(browser)
    sign_in(page, base, "ann", PASSWORDS["ann"])
    page.get_by_text("Signed in as ann").wait_for()
    page.get_by_role("link", name="Budget", exact=True).click()
    idle(page)
    heading(page, "Budget").wait_for()
    page.get_by_text("only a lead can change the budget").wait_for()
    for control in ("Save budget", "Re-route with this target", "Add", "Change role"):
        assert not page.get_by_role("button", name=control, exact=True).count(), control
    assert not page.locator("[data-testid=stNumberInput], [data-testid=stSlider]").count()
    page.goto(f"{base}/budget?user=lee")  # the URL does not make her the lead either: a new session
    idle(page)
    heading(page, "Sign in to PivotTrace").wait_for()

    assert store.budget_status(db) == budget_before
    assert store.users(db) == roles_before and store.user_role(db, "mallory") is None
    assert [r["what"] for r in views.audit_rows(db)].count("budget") == 1  # only the fixture's


def test_a_lead_signs_in_sets_the_budget_and_sees_it_in_the_audit_trail(server, browser):
    base, db = server
    page = signed_in(browser, base, "lee", PASSWORDS["lee"])
    page.get_by_role("link", name="Budget", exact=True).click()
    idle(page)
    labels = page.get_by_label("Labels", exact=True)
    labels.fill("40")
    page.get_by_role("button", name="Save budget").click()
    wait_until(lambda: store.budget_status(db)["total"] == 40, what="the new budget")
    idle(page)
    page.get_by_text("Budget set to 40 labels").wait_for()
    assert store.audit_trail(db, limit=1)[0]["actor"] == "lee"



def test_mark_the_first_wrong_step_with_a_number_key(server, browser):
    """After a wrong verdict the queue moves on; pressing 2 marks step 2 of that problem."""
    base, db = server
    page = signed_in(browser, base, "ann", PASSWORDS["ann"])
    page.locator(".st-key-accept").first.wait_for()
    idle(page)
    heading = page.get_by_test_id("stMainBlockContainer").get_by_role("heading", name="Annotate")

    page.locator('[class*="st-key-gold-"] input').fill(GOLD)
    heading.click()  # focus off the input, so the keys reach the page
    page.keyboard.press("w")
    wrong = wait_until(lambda: ann_labels(db), what="the wrong label")[0]
    assert wrong["verdict"] == "wrong"
    page.locator(".st-key-step-2").wait_for()
    idle(page)
    heading.click()
    page.keyboard.press("2")
    mark = wait_until(lambda: store.effective_step_labels(db, problem_id=wrong["problem_id"]),
                      what="the step label")[0]
    assert (mark["annotator"], mark["first_wrong_step"], mark["label_id"]) == ("ann", 1, wrong["id"])
    idle(page)
    page.get_by_text("Marked step 2 as the first wrong step").wait_for()
    assert len(ann_labels(db)) == 1  # the key marked a step; it labelled nothing else
    assert not page.get_by_test_id("stException").count()


def truncated(page, selector: str) -> list[str]:
    """Texts inside `selector` cut short by CSS (an element narrower than its content)."""
    return page.evaluate("""(sel) => [...document.querySelectorAll(sel + ' *')]
        .filter(e => e.children.length === 0 && e.textContent.trim() && e.scrollWidth > e.clientWidth + 1)
        .map(e => e.textContent)""", selector)
