"""Pool: ingest a file, trace problems in the background, route on demand, watch the jobs."""

import streamlit as st

from pivottrace import views

db = views.open_db()
me = views.session_identity(db, st.session_state.get(views.SESSION_KEY))  # the session, never the URL
if me is None:
    st.info("Sign in first.", icon=":material/login:")
    st.stop()
can_change = views.may_change_pool(me)  # leads and researchers ingest, trace and route

st.title("Pool", anchor=False)

flash = st.session_state.pop("pool_flash", None)  # shown under the buttons that started the job

counters = st.container()  # filled at the end of the script, after this run's action: fresh numbers


def show_counters() -> None:
    summary = views.pool_summary(db)
    c = st.columns(5)
    c[0].metric("Problems", summary["problems"])
    c[1].metric("Traced", summary["traced"])
    c[2].metric("Routed", summary["routed"])
    c[3].metric("Labelled", summary["labelled"])
    c[4].metric("Router", f"v{summary['router_version']}" if summary["router_version"] else "-")
    if summary["routed"]:
        st.caption(" · ".join(f"{views.route_name(name)} **{n}**" for name, n in summary["routes"].items()))


def show_jobs() -> None:
    rows = views.refresh_jobs(db)
    if not rows:
        st.caption("No jobs yet.")
        return
    for job in rows[:6]:
        with st.container(border=True):
            top = st.columns([5, 1])
            top[0].markdown(f"**{job['kind']}** #{job['id']} · {job['status']} · {views.md(job['message'])}")
            if job["status"] in views.JOB_ACTIVE:
                fraction = job["done"] / job["total"] if job["total"] else 0.0
                st.progress(min(fraction, 1.0), text=f"{job['done']} of {job['total'] or '?'}")
                if top[1].button("Cancel", key=f"cancel-{job['id']}"):
                    views.cancel_job(db, job["id"])
                    st.rerun()


@st.fragment(run_every="2s")
def live_jobs() -> None:
    """Polls the jobs table while a job runs: progress lives in the database, so a reload or
    another user's browser shows the same bar."""
    show_jobs()
    if not views.active_jobs(db):
        st.rerun()  # the job ended: refresh the counts above, and stop polling


left, right = st.columns(2, gap="large")
with left:
    if not can_change:
        st.info(f"You are a{'n' if me.role[0] in 'aeiou' else ''} {me.role}: leads and researchers add "
                "problems, trace and route.", icon=":material/lock:")
    else:
        st.markdown("##### Add problems")
        with st.form("ingest", border=True, clear_on_submit=True):
            upload = st.file_uploader("Pool file", type=["jsonl", "json", "ndjson", "csv", "tsv", "parquet"])
            q, a = st.columns(2)
            question_field = q.text_input("Question column", placeholder="auto: question, problem, prompt...")
            answer_field = a.text_input("Answer column", placeholder="auto: answer, solution, gold...")
            submitted = st.form_submit_button("Ingest", type="primary", icon=":material/upload:")
        if submitted:
            if upload is None:
                st.warning("Choose a file first.")
            else:
                try:
                    report = views.ingest_upload(db, upload.getvalue(), upload.name, question_field=question_field,
                                                 answer_field=answer_field)
                except views.InvalidInput as err:
                    st.error(views.md(err))
                else:
                    st.success(f"Added {report.added} problems from {views.md(upload.name)} ({report.existing} already present).")
                    st.caption(report.totals())  # every row of the file: loaded, rejected or blank
                    if report.rejected:
                        st.error(f"{len(report.rejected)} rows were rejected; the others loaded.")
                        st.dataframe(views.rejected_rows(report), hide_index=True)
    sources = views.pool_summary(db)["sources"]  # after the ingest above: the new source is listed at once
    if sources:
        st.dataframe(sources, hide_index=True)

with right:
    if can_change:
        st.markdown("##### Trace and route")
        with st.form("trace", border=True):
            model = st.text_input("Model", value=views.DEFAULT_SPEC,
                                  help="'default' (embedded SmolLM2-135M-Instruct), a Hugging Face id, a local folder or a .gguf file.")
            x, y, z = st.columns(3)
            limit = x.number_input("Problems", min_value=1, value=20)
            samples = y.number_input("Samples (K)", min_value=1, max_value=16, value=4)
            max_tokens = z.number_input("Max new tokens", min_value=16, max_value=2048, value=256, step=32)
            d, t = st.columns(2)
            device = d.selectbox("Device", views.TRACE_DEVICES,
                                 help="auto: a CUDA GPU when the machine has one, else the CPU.")
            dtype = t.selectbox("Precision", views.TRACE_DTYPES,
                                help="auto: bfloat16 on a GPU or a CPU with native bf16, else float32.")
            start = st.form_submit_button("Start tracing", type="primary", icon=":material/play_arrow:")
        st.caption("Traces problems this model has not traced yet, then routes the pool.")
        if start:
            try:
                job_id = views.start_trace_job(db, model=model, limit=int(limit), samples=int(samples),
                                               max_new_tokens=int(max_tokens), device=device, dtype=dtype)
            except Exception as err:  # a bad model spec is explained, not raised into the page
                st.session_state["pool_flash"] = ("error", views.md(err))
            else:
                st.session_state["pool_flash"] = ("success", f"Tracing job #{job_id} started: it keeps running if you "
                                                             "leave or reload this page.")
            st.rerun()
        if st.button("Route now", icon=":material/alt_route:", disabled=views.pool_summary(db)["traced"] == 0,
                     help="Re-score pivots, re-estimate uncertainty and re-route every traced problem."):
            try:
                job_id = views.start_route_job(db)
            except views.StoreError as err:
                st.session_state["pool_flash"] = ("error", views.md(err))
            else:
                st.session_state["pool_flash"] = ("success", f"Routing job #{job_id} started.")
            st.rerun()
        if flash:
            getattr(st, flash[0])(flash[1])
    st.markdown("##### Jobs")
    if views.active_jobs(db):
        live_jobs()
    else:
        show_jobs()

with counters:
    show_counters()
