"""Annotate: work through the queue of high-value problems, keyboard first."""

import time

import streamlit as st

from pivottrace import charts, views

db = views.open_db()
me = views.session_identity(db, st.session_state.get(views.SESSION_KEY))  # the session, never the URL
if me is None:
    st.info("Sign in first.", icon=":material/login:")
    st.stop()
user = me.name

st.title("Annotate", anchor=False)
if not views.may_label(me):
    st.info(f"You are a {me.role}: annotators and leads label. The Inspect page is yours.", icon=":material/person:")
    st.stop()


def act(action: str, problem_id: str, shown_answer: str | None, gold_key: str | None = None,
        second_label: bool = False) -> None:
    started = st.session_state.get("shown", (None, None))
    seconds = views.seconds_since(started[1]) if started[0] == problem_id else None
    try:
        outcome = views.submit_label(db, annotator=user, problem_id=problem_id, action=action,
                                     gold_text=st.session_state.get(gold_key) if gold_key else None,
                                     shown_answer=shown_answer, seconds=seconds, second_label=second_label)
    except views.InvalidInput as err:  # its message is Markdown-safe already
        st.session_state["flash"] = ("error", str(err))
    except views.StoreError as err:
        st.session_state["flash"] = ("error", views.md(err))
    else:
        st.session_state["flash"] = ("success", outcome.message)


def undo() -> None:
    try:
        outcome = views.undo_last(db, user)
    except views.StoreError as err:
        st.session_state["flash"] = ("warning", views.md(err))
    else:
        st.session_state["flash"] = ("info", outcome.message)
        st.session_state.pop("shown", None)


def mark_step(problem_id: str, step: int) -> None:
    try:
        outcome = views.mark_first_wrong_step(db, annotator=user, problem_id=problem_id, step=step)
    except views.StoreError as err:
        st.session_state["flash"] = ("error", views.md(err))
    else:
        st.session_state["flash"] = ("success", outcome.message)


def unmark_step(problem_id: str) -> None:
    try:
        outcome = views.undo_step_mark(db, annotator=user, problem_id=problem_id)
    except views.StoreError as err:
        st.session_state["flash"] = ("warning", views.md(err))
    else:
        st.session_state["flash"] = ("info", outcome.message)


item = views.next_item(db, user)
progress = views.progress(db, user)

# ---------------------------------------------------------------- progress strip
cols = st.columns(4)
cols[0].metric("Labelled (team)", progress.labelled)
cols[1].metric("You, today", progress.mine_today, help=f"{progress.mine} in total")
cols[2].metric("Left in queue", progress.remaining)
budget = "not set" if progress.budget_total is None else f"{progress.budget_remaining} of {progress.budget_total}"
cols[3].metric("Budget left", budget)
if progress.budget_total:
    st.progress(min(progress.labelled / progress.budget_total, 1.0),
                text=f"{progress.labelled} of {progress.budget_total} labels spent")

flash = st.session_state.pop("flash", None)
if flash:
    getattr(st, flash[0])(flash[1])

# ---------------------------------------------------------------- optional: first wrong step of the last "wrong"
target = views.step_mark_target(db, user)
if target is not None:
    with st.expander(f"Optional · which step of the last problem went wrong first? Keys **1-{target.keyed}**",
                     expanded=True, icon=":material/footprint:"):
        marked = "not marked" if target.marked is None else f"marked: step {target.marked + 1}"
        st.caption(f"Problem `{target.problem_id}` · {marked} · the verdict is already saved; this never blocks the queue.")
        keys = st.columns(target.keyed + 1)
        for index in range(target.keyed):
            keys[index].button(f"{index + 1}", key=f"step-{index + 1}", shortcut=str(index + 1),
                               type="primary" if target.marked == index else "secondary",
                               help=target.steps[index], on_click=mark_step, args=(target.problem_id, index))
        keys[-1].button("Unmark", key="step-unmark", icon=":material/undo:", disabled=target.marked is None,
                        on_click=unmark_step, args=(target.problem_id,))
        for index, text in enumerate(target.steps):
            st.markdown(f"**{index + 1}.** {views.md(text)}")

if item is None:
    st.success("The queue is empty: nothing is routed to annotation right now. "
               "Leads can raise the budget on the Budget page, or route new traces on the Pool page.",
               icon=":material/celebration:")
    st.button("Undo last label", key="undo", shortcut="U", icon=":material/undo:", on_click=undo)
    st.stop()

if st.session_state.get("shown", (None,))[0] != item.problem_id:
    st.session_state["shown"] = (item.problem_id, time.time())  # the clock for "seconds spent"

# ---------------------------------------------------------------- the item
if item.second_label:
    st.info("**Second opinion.** Another annotator labelled this problem; their label is hidden so that "
            "yours is independent. Where the two differ, a lead reviews it. It counts against the budget "
            "like any label.", icon=":material/group:")
left, right = st.columns([5, 4], gap="large")
with left:
    st.caption(f"Problem `{item.problem_id}` · {views.md(item.source)} · P(wrong) {item.uncertainty_text} · "
               f"{item.n_pivots} pivots · model {views.md(item.model_id)} · router v{item.router_version}")
    st.html(item.problem_html)
    st.markdown("##### Model reasoning")
    st.caption("Steps tinted amber by pivot score. Hover a step, or open *why a pivot*, to see which signals fired.")
    st.html(item.steps_html)

with right:
    st.markdown("##### Candidate answers")
    st.plotly_chart(charts.vote_figure(item.candidates), config={"displayModeBar": False})
    majority = item.majority or "(no answer)"
    st.markdown(f"Majority answer: **{views.md(majority)}** · {item.vote_share:.0%} of "
                f"{sum(c.votes for c in item.candidates)} votes")

    with st.container(border=True):
        st.button(f"Correct: {views.md(majority)}", key="accept", shortcut="A", type="primary", icon=":material/check:",
                  disabled=item.majority is None, on_click=act, args=("accept", item.problem_id, item.majority, None, item.second_label),
                  help="The majority answer is right.", width="stretch")
        gold_key = f"gold-{item.problem_id}"
        with st.form(f"wrong-{item.problem_id}", border=False, enter_to_submit=True):
            st.text_input("Gold answer", key=gold_key, placeholder="the correct final answer, e.g. 42 or 3/4")
            st.form_submit_button("Wrong: save gold answer", key="wrong", shortcut="W", icon=":material/close:",
                                  on_click=act, args=("wrong", item.problem_id, item.majority, gold_key, item.second_label),
                                  width="stretch")
        # Buttons as wide as their label (icon + shortcut badge), wrapping when the column is
        # narrow: three equal columns cut "Flawed" to "Flaw…" at 1400 px.
        with st.container(horizontal=True, gap="small"):
            st.button("Flawed", key="flawed", shortcut="F", icon=":material/flag:", on_click=act,
                      args=("flawed", item.problem_id, item.majority, None, item.second_label), help="The problem itself is broken.",
                      width="content")
            st.button("Skip", key="skip", shortcut="S", icon=":material/skip_next:", on_click=act,
                      args=("skip", item.problem_id, item.majority, None, item.second_label), width="content")
            st.button("Undo", key="undo", shortcut="U", icon=":material/undo:", on_click=undo,
                      help="Undo your last label.", width="content")
    st.caption("Keys: **A** correct · **W** wrong (type the gold answer first; Enter in the box also saves) · "
               "**F** flawed · **S** skip · **U** undo · after a wrong verdict, **1-9** mark its first wrong step")
