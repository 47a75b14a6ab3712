"""PivotTrace app entry: the sidebar (who you are) and navigation over the pages in pages/.

Run it with `pivottrace app` (or `streamlit run app.py`). Everything stored comes from the
database at $PIVOTTRACE_DB. Layout only: every computation lives in the pivottrace package.
"""

import streamlit as st

from pivottrace import views

st.set_page_config(page_title="PivotTrace", page_icon=":material/alt_route:", layout="wide")

try:
    db = views.open_db()
except views.StoreError as err:  # not a database, read-only, disk full: one line that says what to do
    st.error(views.md(err))
    st.stop()

# ---------------------------------------------------------------- sidebar: who is working
people = views.user_rows(db)
names = [p["name"] for p in people]
roles = {p["name"]: p["role"] for p in people}


def add_person() -> None:
    name = (st.session_state.get("new_name") or "").strip()
    try:
        views.add_user(db, name, st.session_state.get("new_role"))
    except views.StoreError as err:
        st.session_state["sidebar_error"] = str(err)
    else:
        st.session_state["user"] = st.session_state["user_pick"] = name


if "user_pick" not in st.session_state:  # first run of a session: a reload keeps ?user=
    wanted = st.session_state.get("user") or st.query_params.get("user")
    st.session_state["user_pick"] = wanted if wanted in names else None

with st.sidebar:
    st.markdown("### :material/alt_route: PivotTrace")
    if names:
        choice = st.selectbox("You are", names, key="user_pick", placeholder="Pick your name")
        if choice:
            st.session_state["user"] = choice
            st.query_params["user"] = choice
            st.caption(f"Role: **{roles[choice]}**")
        else:
            st.session_state.pop("user", None)
    else:
        st.info("No users yet. Add yourself below.")
    with st.expander("Add a person", expanded=not names):
        with st.form("add_user", clear_on_submit=True, border=False):
            st.text_input("Name", placeholder="e.g. Ana", key="new_name")
            st.selectbox("Role", views.ROLES, key="new_role")
            st.form_submit_button("Add", icon=":material/person_add:", on_click=add_person)
        if "sidebar_error" in st.session_state:
            st.error(views.md(st.session_state.pop("sidebar_error")))
    st.divider()
    st.caption(f"Database: `{views.db_path(db) or ':memory:'}`")


@st.fragment(run_every="3s")
def background_jobs() -> None:
    """Every page: the progress of the jobs running in the background (the demo's tracing,
    an evaluation...). When a job moves on, the whole page reruns, so its numbers are fresh."""
    running = views.running_jobs(db)
    for job in running:
        st.progress(job.fraction, text=job.text)
    state = tuple((job.job_id, job.done, job.status) for job in running)
    before = st.session_state.get("background_jobs")
    st.session_state["background_jobs"] = state
    if before is not None and before != state:
        st.rerun()


with st.sidebar:
    background_jobs()

annotate_page = st.Page("pages/annotate.py", title="Annotate", icon=":material/task_alt:", default=True)
inspect_page = st.Page("pages/inspect.py", title="Inspect", icon=":material/query_stats:")
budget_page = st.Page("pages/budget.py", title="Budget", icon=":material/account_balance_wallet:")
pool_page = st.Page("pages/pool.py", title="Pool", icon=":material/database:")
evaluation_page = st.Page("pages/evaluation.py", title="Evaluation", icon=":material/insights:")
page = st.navigation([annotate_page, inspect_page, budget_page, pool_page, evaluation_page], position="top")

# ---------------------------------------------------------------- empty database: what to do next
if views.is_empty(db) and page.title != "Pool":
    st.title("Welcome to PivotTrace", anchor=False)
    st.markdown(
        "The database is empty. PivotTrace needs a pool of problems, traced by a model, before "
        "there is anything to label or inspect. Two ways to start:")
    running = views.active_jobs(db)
    left, right = st.columns(2, border=True)
    with left:
        st.markdown("#### :material/play_circle: Run the demo")
        st.caption(views.demo_description())
        if running:
            st.info(f"A {running[0]['kind']} job is running: its progress is in the sidebar.")
        elif st.button("Run the demo", type="primary", icon=":material/rocket_launch:"):
            try:
                views.start_demo_job(db)
            except Exception as err:  # a missing model is explained, not a traceback
                st.error(views.md(err))
            else:
                st.switch_page(pool_page)
    with right:
        st.markdown("#### :material/upload_file: Bring your own pool")
        st.caption("Upload a JSONL, CSV or Parquet file with a question column (and, optionally, an "
                   "answer column), then start tracing.")
        st.page_link(pool_page, label="Go to the Pool page", icon=":material/arrow_forward:")
    st.stop()

page.run()
