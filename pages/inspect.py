"""Inspect: one trace's attention and entropy signals step by step, and two traces side by side."""

import streamlit as st

from pivottrace import charts, views

db = views.open_db()
me = views.session_identity(db, st.session_state.get(views.SESSION_KEY))  # the session, never the URL
if me is None:
    st.info("Sign in first.", icon=":material/login:")
    st.stop()

st.title("Inspect", anchor=False)

# ---------------------------------------------------------------- choose a problem
with st.container(border=True):
    f1, f2, f3, f4 = st.columns([2, 3, 2, 2])
    search = f1.text_input("Search", placeholder="words or problem id", key="inspect_search")
    routes = f2.multiselect("Route", views.ROUTE_CHOICES,
                            format_func=views.route_name, key="inspect_routes")
    min_density = f3.slider("Min pivot density", 0.0, 10.0, 0.0, 0.25, key="inspect_density",
                            help="Pivots per 100 completion tokens.")
    low, high = f4.slider("Uncertainty", 0.0, 1.0, (0.0, 1.0), 0.05, key="inspect_uncertainty")
    sort = st.segmented_control("Sort by", views.SORT_CHOICES, default="value",
                                format_func=lambda s: s.replace("_", " "), key="inspect_sort") or "value"

uncertainty = None if (low, high) == (0.0, 1.0) else (low, high)
found = views.find_problems(db, routes=routes or None, min_density=min_density or None,
                            uncertainty=uncertainty, search=search, sort=sort, limit=views.INSPECT_LIMIT)
matches = found.rows
shown = f"{found.total} matches" + (f", the first {len(matches)} listed" if found.total > len(matches) else "")
if not matches:
    st.info("No traced problem matches these filters." if not views.is_empty(db)
            else "Nothing traced yet: start tracing on the Pool page.")
    st.stop()

labels = {m["problem_id"]: f"{m['problem']}  ·  {m['route']}" for m in matches}
problem_id = st.selectbox(f"Problem ({shown})", list(labels), format_func=labels.get, key="inspect_problem")
with st.expander(f"Matches ({shown})"):
    st.dataframe(matches, hide_index=True, column_config={
        "uncertainty": st.column_config.ProgressColumn("uncertainty", min_value=0, max_value=1, format="%.2f"),
        "pivot_density": st.column_config.NumberColumn("pivots /100 tok", format="%.2f"),
        "vote_share": st.column_config.NumberColumn("vote share", format="%.2f")})

models = views.trace_models(db, problem_id)
m1, m2 = st.columns(2)
model_id = m1.selectbox("Model", models, key="inspect_model")
others = [m for m in models if m != model_id]
compare_with = m2.selectbox("Compare with", others, index=None, placeholder="another model's trace" if others
                            else "no other model traced this problem", disabled=not others, key="inspect_compare")

view = views.trace_view(db, problem_id, model_id)
st.html(views.problem_html(view.problem_text))
if not view.scored:
    st.warning("This trace has not been scored yet (route the pool): pivot scores read 0.")
st.caption(f"Answer **{views.md(view.answer or '(none)')}** · majority {views.md(view.majority or '(none)')} "
           f"({view.vote_share:.0%} of {view.n_samples}) · {len(view.pivots)} pivots in {len(view.steps)} steps · "
           f"{view.pivot_density:.2f} pivots per 100 tokens")


live = st.session_state.get("live")
other = None
if compare_with is not None:
    other = views.trace_view(db, problem_id, compare_with)
elif live is not None and live.problem_id == problem_id:
    other = live

if other is None:
    left, right = st.columns([3, 2], gap="large")
    with left:
        step_labels = {s.index: f"{s.index + 1}{' · pivot' if s.is_pivot else ''}" for s in view.steps}
        default = view.pivots[0] if view.pivots else 0
        step = st.select_slider("Step", list(step_labels), value=default, format_func=step_labels.get,
                                key=f"step-{problem_id}-{model_id}") if len(view.steps) > 1 else 0
        st.plotly_chart(charts.trace_figure(view, selected=step), key="fig-main")
    with right:
        st.markdown("##### Steps")
        with st.container(height=330):
            st.html(views.steps_html(view.steps, selected=step))
        if view.steps:
            st.markdown(f"##### Step {step + 1}: tokens by predictive entropy")
            st.html(views.step_tokens_html(view, step))
            st.plotly_chart(charts.token_entropy_figure(view, step), config={"displayModeBar": False})
            st.plotly_chart(charts.attention_figure(views.attention_targets(view, step), step=step),
                            config={"displayModeBar": False})
else:
    st.markdown("##### Side by side")
    st.dataframe(views.compare_rows(view, other), hide_index=True)
    if other is live and st.button("Close the live trace", icon=":material/close:"):
        st.session_state.pop("live", None)
        st.rerun()
    a, b = st.columns(2, gap="large")
    for column, shown, name in ((a, view, "A"), (b, other, "B")):
        with column:
            st.markdown(f"##### {name}: {views.md(shown.model_id)}")
            st.plotly_chart(charts.trace_figure(shown), key=f"fig-{name}")
            with st.container(height=300):
                st.html(views.steps_html(shown.steps))

with st.expander("Trace this problem live with another model"):
    st.caption("Loads the model in a background worker and traces this one problem now (greedy chain, "
               "4 samples, attention statistics) to show it beside the stored trace. Nothing is stored: "
               "to add a model to the pool, trace it on the Pool page.")
    spec = st.text_input("Model", value=views.DEFAULT_SPEC, help="'default', a Hugging Face id, a local folder or a .gguf file.",
                         key="inspect_spec")
    if st.button("Trace now", icon=":material/play_arrow:"):
        try:
            with st.spinner("Tracing..."):
                st.session_state["live"] = views.trace_live(db, spec, problem_id, view.problem_text)
        except Exception as err:  # model errors are shown, not raised into the page
            st.error(views.md(f"{type(err).__name__}: {err}"))
        else:
            st.rerun()
