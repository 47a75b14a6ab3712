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

running = [j for j in views.active_jobs(db) if j["kind"] == "eval"]
if running:
    st.info(f"Evaluation running: {running[0]['message'] or 'starting'}", icon=":material/hourglass_top:")
elif views.may_change_pool(me) and st.button("Run the evaluation", icon=":material/play_arrow:",
               help=f"Runs `pivottrace eval --out {folder}` in the background."):
    try:
        views.start_eval_job(db, folder=str(folder))
        st.rerun()
    except views.JobError as err:
        st.error(str(err))

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
