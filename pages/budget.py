"""Budget: what the labels cost, how fast they go, who labels, and how the router changed."""

import streamlit as st

from pivottrace import charts, views

db = views.open_db()
me = views.session_identity(db, st.session_state.get(views.SESSION_KEY))  # the session, never the URL
if me is None:
    st.info("Sign in first.", icon=":material/login:")
    st.stop()
user, is_lead = me.name, me.is_lead  # the package checks the role again on every change

st.title("Budget", anchor=False)
if not is_lead:
    st.info("You can read this page; only a lead can change the budget or the router's target.",
            icon=":material/lock:")

flash = st.session_state.pop("budget_flash", None)
if flash:
    getattr(st, flash[0])(flash[1])

view = views.budget_view(db)

# ---------------------------------------------------------------- spending
c = st.columns(5)
c[0].metric("Budget", "not set" if view.total is None else f"{view.total} labels",
            help=f"{view.cost_per_label:g} per label" if view.cost_per_label else None)
c[1].metric("Spent", view.spent, help=f"cost {view.spent_cost:,.2f}" if view.cost_per_label else None)
c[2].metric("Remaining", "-" if view.remaining is None else view.remaining,
            help=f"cost {view.remaining_cost:,.2f}" if view.cost_per_label and view.remaining_cost is not None else None)
c[3].metric("Burn rate", f"{view.burn_per_day:.1f} / day")
c[4].metric("Runs out", view.run_out.strftime("%d %b %Y") if view.run_out else "-",
            help="At the current burn rate." if view.run_out else "Set a budget and label to project.")
st.markdown(views.budget_explanation(db))
if view.deferred:
    st.warning(f"{view.deferred} problems the router would send to annotators are deferred: the budget "
               "does not cover them.", icon=":material/schedule:")

left, right = st.columns([3, 2], gap="large")
with left:
    st.markdown("##### Labels spent over time")
    st.plotly_chart(charts.burn_figure(view.per_day, total=view.total, run_out=view.run_out),
                    config={"displayModeBar": False})
with right:
    if is_lead:
        st.markdown("##### Set the budget")
        with st.form("budget", border=True):
            total = st.number_input("Labels", min_value=0, step=10, value=view.total or 100)
            cost = st.number_input("Cost per label (optional)", min_value=0.0, step=0.5, value=float(view.cost_per_label))
            if st.form_submit_button("Save budget", type="primary"):
                try:
                    views.set_budget(db, user=user, total=int(total), cost_per_label=float(cost))
                except (views.StoreError, views.InvalidInput) as err:
                    st.session_state["budget_flash"] = ("error", views.md(err))
                else:
                    st.session_state["budget_flash"] = ("success", f"Budget set to {int(total)} labels; the pool was re-routed.")
                st.rerun()
        st.caption("A total below the items leased now releases the newest leases; below the labels spent is refused.")

# ---------------------------------------------------------------- annotators and agreement
st.markdown("##### Annotators")
if view.annotators:
    st.dataframe(views.annotator_rows(db, view), hide_index=True, column_config={
        "accept rate": st.column_config.NumberColumn("accept rate", format="%.2f",
                                                     help="Share of 'correct' among correct and wrong verdicts."),
        "agreement": st.column_config.ProgressColumn("agreement", min_value=0, max_value=1, format="%.2f",
                                                     help="Share of their double-labelled items where the other "
                                                          "label asserts the same answer."),
        "alpha": st.column_config.NumberColumn("α", format="%.2f",
                                               help="Krippendorff's alpha over their double-labelled items.")})
else:
    st.caption("No labels yet.")

agree = views.agreement_view(db)
a1, a2 = st.columns([3, 2], gap="large")
with a1:
    st.markdown("##### Agreement")
    m = st.columns(3)
    m[0].metric("Double-labelled", agree.items, help=f"{agree.second_labels} second labels, each spends budget")
    m[1].metric("Agreeing", "-" if agree.share is None else f"{agree.share:.0%}")
    m[2].metric("Krippendorff's α", "-" if agree.alpha is None else f"{agree.alpha:.2f}",
                help="1 = perfect, 0 = chance level (nominal, over what each label asserts is the answer).")
    if agree.note:
        st.caption(views.md(agree.note))
with a2:
    if not is_lead:  # only a lead sets the overlap share (the package refuses anyone else)
        st.caption(f"Overlap: {agree.overlap_share:.0%} of the picks are labelled by two annotators; a lead sets it.")
    else:
        with st.form("overlap", border=True):
            percent = st.number_input("Overlap: % of items labelled by two annotators", min_value=0, max_value=100,
                                      step=5, value=int(round(agree.overlap_share * 100)),
                                      help="A second, different annotator labels this share of the picks, blind. "
                                           "Each such item counts twice against the budget.")
            if st.form_submit_button("Save overlap"):
                try:
                    views.set_overlap_share(db, user=user, percent=percent)
                except (views.StoreError, views.InvalidInput) as err:
                    st.session_state["budget_flash"] = ("error", views.md(err))
                else:
                    st.session_state["budget_flash"] = ("success", f"Overlap set to {int(percent)} %.")
                st.rerun()

reviews = views.review_queue(db)
st.markdown(f"##### Disagreements to review ({len(reviews)})")
if not reviews:
    st.caption("None: every double-labelled item agrees, or a lead settled it.")
for review in reviews[:10]:
    with st.container(border=True):
        st.caption(f"Problem `{review.problem_id}`")
        st.html(review.problem_html)
        keep = st.columns(len(review.labels))
        for col, label in zip(keep, review.labels):
            col.markdown(f"**{views.md(label['annotator'])}**: {label['verdict']} · answer "
                         f"**{views.md(label['answer'])}**")
            if is_lead and col.button(f"Keep {views.md(label['annotator'])}'s label",
                                      key=f"keep-{review.problem_id}-{label['label_id']}"):
                try:
                    views.resolve_review(db, lead=user, problem_id=review.problem_id, label_id=label["label_id"])
                except (views.StoreError, views.InvalidInput) as err:
                    st.session_state["budget_flash"] = ("error", views.md(err))
                else:
                    st.session_state["budget_flash"] = ("success", f"Kept {views.md(label['annotator'])}'s label.")
                st.rerun()

# ---------------------------------------------------------------- routing
st.markdown("##### Routing")
st.markdown("| route | problems | what it means |\n| --- | ---: | --- |\n" + "\n".join(
    f"| **{row['route']}** | {row['problems']} | {row['meaning']} |" for row in views.route_rows(db)))
a, b = st.columns(2, gap="large")
with a:
    st.caption("Route mix after each router version")
    st.plotly_chart(charts.route_mix_figure(views.route_mix_series(db)), config={"displayModeBar": False})
with b:
    st.caption("Self-train threshold and calibration (ECE, Brier, AUROC from held-out folds)")
    history = views.router_history(db)
    st.plotly_chart(charts.calibration_figure(history), config={"displayModeBar": False})

if is_lead:
    with st.form("target", border=True):
        target = st.slider("Self-train precision target", views.MIN_TARGET_PRECISION, 0.99, views.current_target_precision(db), 0.01,
                           help="The self-train band opens only where labels show a precision at or above this "
                                "(lower confidence bound).")
        delta = st.number_input("Risk delta", min_value=0.001, max_value=0.5, value=views.current_delta(db),
                                step=0.01, format="%.3f",
                                help="Chance that a band opened by the bound is below the target after all.")
        if st.form_submit_button("Re-route with this target"):
            try:
                report = views.set_target_precision(db, user=user, target=target, delta=float(delta))
            except (views.StoreError, views.InvalidInput) as err:
                st.session_state["budget_flash"] = ("error", views.md(err))
            else:
                st.session_state["budget_flash"] = ("success", f"Router v{report.router_version}: " +
                                                    views.route_summary(report.counts, readable=True))
            st.rerun()

st.markdown("##### Bands: estimated against measured precision")
bands = views.band_rows(db)
if bands:
    st.dataframe(bands, hide_index=True, column_config={
        "interval": st.column_config.TextColumn(
            "interval", help="One-sided Clopper-Pearson bounds at delta / 4 (four nested band edges are tried)."),
        "labels behind it": st.column_config.NumberColumn(
            "labels behind it", help="Random calibration probes drawn from the band plus labels that fell in it.")})
    st.caption("A band opens only when its measured precision's lower bound reaches the target; until then "
               "its problems wait (self-train pending), and probe labels are queued for annotators when the band "
               "holds at least twice the probes it needs (a smaller band is cheaper to label directly).")

st.markdown("##### Router versions")
if history:
    st.dataframe(list(reversed(history)), hide_index=True, column_order=views.filled_columns(history),
                 column_config={"time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm")})
else:
    st.caption("The pool has not been routed yet.")

st.markdown("##### Audit trail")
st.caption("Every change of budget, target, user, role or password: who, when, from what, to what. Append-only.")
trail = views.audit_rows(db)
if trail:
    st.dataframe(trail, hide_index=True,
                 column_config={"time": st.column_config.DatetimeColumn("time", format="YYYY-MM-DD HH:mm:ss")})
else:
    st.caption("No changes yet.")
