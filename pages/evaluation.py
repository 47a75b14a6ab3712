"""Evaluation: how good the picks are, judged by an oracle from gold answers (pivottrace eval)."""

import streamlit as st

from pivottrace import views

db = views.open_db()
me = views.session_identity(db, st.session_state.get(views.SESSION_KEY))  # the session, never the URL
if me is None:
    st.info("Sign in first.", icon=":material/login:")
    st.stop()
folder = views.evaluation_folder()

st.title("Evaluation", anchor=False)
st.caption("An oracle plays the annotator from the pool's gold answers and replays the labelling loop "
           "for a sweep of budgets, against random, confidence-only and vote-share-only selection and "
           "the ablations. Your labels and routes are not touched.")


@st.fragment(run_every="2s")
def eval_running() -> None:
    """The running evaluation's progress, where its button was; the page reruns when it ends."""
    job = views.latest_job(db, "eval")
    if job is None or not job.active:
        st.rerun()
    st.progress(job.fraction, text=job.text)


job = views.latest_job(db, "eval")
if job is not None and job.active:
    eval_running()
elif views.may_change_pool(me):  # leads and researchers run it; annotators read the report
    blocker = views.evaluation_blocker(db)
    if st.button("Run the evaluation", icon=":material/play_arrow:", disabled=blocker is not None,
                 help=blocker or f"Runs `pivottrace eval --out {folder}` in the background."):
        try:
            views.start_eval_job(db, folder=str(folder))
        except views.JobError as err:
            st.error(views.md(err))
        else:
            st.rerun()
    if blocker:
        st.caption(blocker)
    if job is not None and job.status == "failed":
        st.error(f"The last evaluation failed: {job.text}", icon=":material/error:")
    elif job is not None and job.status == "done":
        st.success(job.text, icon=":material/check_circle:")

view = views.evaluation_view(folder)
if view.report is None:
    st.info(view.message, icon=":material/info:")
else:
    pool = view.report.pool
    c = st.columns(3)
    c[0].metric("Problems with gold", pool.get("size"))
    c[1].metric("Majority answer wrong", pool.get("wrong"))
    c[2].metric("Model", pool.get("model_id"))
    for line in view.summary:
        st.markdown(line)
    for name, figure in view.report.figures.items():
        st.plotly_chart(figure, config={"displayModeBar": False}, key=f"eval-{name}")
    st.markdown("##### Every strategy and budget")
    st.dataframe(view.table, hide_index=True)
    st.caption(f"Report folder: `{view.report.folder}` (report.md, report.html, results.json).")

localisation = views.step_localisation_rows(db)
if localisation:
    st.markdown("##### Pivots against annotators' first wrong steps")
    st.caption("From the step labels annotators gave after a wrong verdict: how often the step they marked "
               "is a pivot, against random steps (as many as the pivots) and the longest step.")
    st.dataframe(localisation, hide_index=True)
