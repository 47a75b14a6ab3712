"""PivotTrace app entry: sign-in, the sidebar (who is signed in) and navigation over pages/.

Run it with `pivottrace app` (or `streamlit run app.py`). Everything stored comes from the
database at $PIVOTTRACE_DB. Nobody sees a page before signing in: with a password, or through
single sign-on (Streamlit's st.login) when `.streamlit/secrets.toml` has an [auth] section. The
identity lives in the server-side session state only (a session token, checked on every run);
nothing in the URL names anyone. Layout only: every check lives in the pivottrace package.
"""

import streamlit as st

from pivottrace import views

st.set_page_config(page_title="PivotTrace", page_icon=":material/alt_route:", layout="wide")

try:
    db = views.open_db()
except views.StoreError as err:  # not a database, read-only, disk full: one line that says what to do
    st.error(views.md(err))
    st.stop()
SSO = st.secrets.load_if_toml_exists() and "auth" in st.secrets  # [auth] configured: offer st.login


def sign_in() -> None:
    try:
        token = views.sign_in(db, st.session_state.get("signin_name"), st.session_state.get("signin_password"))
    except views.AuthError as err:
        st.session_state["signin_error"] = str(err)
    else:
        st.session_state[views.SESSION_KEY] = token
    st.session_state["signin_password"] = ""


def sign_out() -> None:
    views.sign_out(db, st.session_state.pop(views.SESSION_KEY, None))
    st.session_state["signin_note"] = "You are signed out."


def sign_in_page() -> None:
    st.title("Sign in to PivotTrace", anchor=False)
    note = st.session_state.pop("signin_note", None)
    if note:
        st.info(note, icon=":material/logout:")
    left, _ = st.columns([2, 3])
    with left:
        with st.form("signin", border=True):
            st.text_input("Name", key="signin_name", autocomplete="username")
            st.text_input("Password", type="password", key="signin_password", autocomplete="current-password")
            st.form_submit_button("Sign in", type="primary", icon=":material/login:", on_click=sign_in)
        if "signin_error" in st.session_state:
            st.error(views.md(st.session_state.pop("signin_error")), icon=":material/block:")
        if SSO:
            st.button("Sign in with single sign-on", icon=":material/key:", on_click=st.login)
        st.caption("No account? A lead adds people on this app's sidebar or with "
                   "`pivottrace users add NAME`. On a first run, `pivottrace app` prints a one-time "
                   "password for the lead account `admin`.")



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

annotate_page = st.Page("pages/annotate.py", title="Annotate", icon=":material/task_alt:", default=True)
inspect_page = st.Page("pages/inspect.py", title="Inspect", icon=":material/query_stats:")
budget_page = st.Page("pages/budget.py", title="Budget", icon=":material/account_balance_wallet:")
pool_page = st.Page("pages/pool.py", title="Pool", icon=":material/database:")
evaluation_page = st.Page("pages/evaluation.py", title="Evaluation", icon=":material/insights:")
PAGES = [annotate_page, inspect_page, budget_page, pool_page, evaluation_page]


def gate(content) -> None:
    """Show `content` instead of any page: the pages are declared (so /budget still names the
    Budget page, and the same address opens it after sign-in) but none of them runs."""
    st.navigation(PAGES, position="hidden")
    content()
    st.stop()


# ---------------------------------------------------------------- who is signed in
if SSO and st.user.is_logged_in and not views.session_identity(db, st.session_state.get(views.SESSION_KEY)):
    try:  # the provider vouched for an email: map it to a PivotTrace user and role
        st.session_state[views.SESSION_KEY] = views.sign_in_sso(db, st.user.to_dict())
    except views.AuthError as err:
        st.session_state["signin_error"] = f"{err} (signed out of single sign-on)"
        st.logout()

token = st.session_state.get(views.SESSION_KEY)
me = views.session_identity(db, token)
if me is None:
    if token:  # it was valid once: expired, signed out elsewhere, or the password changed
        st.session_state.pop(views.SESSION_KEY, None)
        st.session_state["signin_note"] = "Your session has ended; sign in again."
    gate(sign_in_page)  # whatever the address (/budget?user=... included): the sign-in page


def change_password() -> None:
    try:
        views.change_password(db, me, st.session_state.get("new_password"), st.session_state.get("new_password_again"))
    except views.AuthError as err:
        st.session_state["password_error"] = str(err)
    else:  # every session of this user ended with the change: sign in with the new one
        st.session_state.pop(views.SESSION_KEY, None)
        st.session_state["signin_note"] = "Password changed; sign in with the new one."


def password_form(title: str) -> None:
    with st.form("password", border=True, clear_on_submit=True):
        st.markdown(title)
        st.text_input("New password", type="password", key="new_password", autocomplete="new-password")
        st.text_input("New password again", type="password", key="new_password_again", autocomplete="new-password")
        st.form_submit_button("Change password", icon=":material/password:", on_click=change_password)
    if "password_error" in st.session_state:
        st.error(views.md(st.session_state.pop("password_error")))


if me.must_change_password:
    def first_password_page() -> None:
        st.title("Choose your password", anchor=False)
        st.caption(f"Signed in as **{views.md(me.name)}** with a one-time password.")
        password_form(f"At least {views.MIN_PASSWORD_CHARS} characters.")
    gate(first_password_page)


def add_person() -> None:
    try:
        password = views.add_person(db, me, st.session_state.get("new_name"), st.session_state.get("new_role"),
                                    st.session_state.get("new_email"))
    except views.AuthError as err:
        st.session_state["people_flash"] = ("error", views.md(err))
    else:
        st.session_state["people_flash"] = (
            "success", f"Added **{views.md(st.session_state.get('new_name', '').strip())}**. One-time password "
                       f"(shown once, hand it over): `{password}`")


def change_role() -> None:
    try:
        views.set_person_role(db, me, st.session_state.get("role_name"), st.session_state.get("role_new"))
    except views.AuthError as err:
        st.session_state["people_flash"] = ("error", views.md(err))
    else:
        st.session_state["people_flash"] = ("success", "Role changed.")


with st.sidebar:
    st.markdown("### :material/alt_route: PivotTrace")
    background_jobs()
    st.markdown(f"Signed in as **{views.md(me.name)}** · {me.role}" + (" · single sign-on" if me.via == "sso" else ""))
    st.button("Sign out", icon=":material/logout:", key="sign_out", on_click=sign_out)
    if me.via != "sso":
        with st.expander("Change password"):
            password_form("")
    if me.is_lead:
        people = views.user_rows(db)
        with st.expander("People", expanded=False):
            st.dataframe(people, hide_index=True, column_order=("name", "role", "email"))
            with st.form("add_user", clear_on_submit=True, border=False):
                st.text_input("Name", placeholder="e.g. Ana", key="new_name")
                st.selectbox("Role", views.ROLES, key="new_role")
                st.text_input("Email for single sign-on (optional)", key="new_email")
                st.form_submit_button("Add", icon=":material/person_add:", on_click=add_person)
            with st.form("set_role", border=False):
                st.selectbox("Person", [p["name"] for p in people], key="role_name")
                st.selectbox("New role", views.ROLES, key="role_new")
                st.form_submit_button("Change role", icon=":material/manage_accounts:", on_click=change_role)
        flash = st.session_state.pop("people_flash", None)
        if flash:
            getattr(st, flash[0])(flash[1])
    st.divider()
    st.caption(f"Database: `{views.db_path(db) or ':memory:'}`")

page = st.navigation(PAGES, position="top")

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
        elif not views.may_change_pool(me):
            st.info("A lead or researcher starts the demo.")
        elif st.button("Run the demo", type="primary", icon=":material/rocket_launch:"):
            try:
                views.start_demo_job(db, by=me.name)
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
