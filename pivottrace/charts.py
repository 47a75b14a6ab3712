"""Plotly figure builders for the app. Each takes view-models from views/ and returns a figure.

It never calls Streamlit, reads the database or computes scores: what to draw arrives ready.
Plotly reads a subset of HTML in labels and hover text, so model text is html-escaped here too.
"""

from __future__ import annotations

from html import escape

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .pivots import PIVOT_THRESHOLD
from .vocab import ROUTES, route_name

ROUTE_COLOURS = dict(zip(ROUTES, ("#2563eb", "#16a34a", "#86efac", "#9ca3af", "#f59e0b"), strict=True))  # in ROUTES order
PIVOT_COLOUR = "#d97706"
HUMAN_COLOUR = "#dc2626"  # an annotator's first wrong step
FONT = dict(family="Inter, system-ui, sans-serif", size=12)


LEGEND_ON_TOP = dict(orientation="h", x=0, y=1.02, yanchor="bottom", bgcolor="rgba(0,0,0,0)")  # above the plot


def _layout(fig: go.Figure, *, height: int, title: str | None = None) -> go.Figure:
    top = 40 if title or fig.layout.showlegend is not False and len(fig.data) > 1 else 10
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=top, b=10), font=FONT,
                      title=dict(text=title, x=0, font=dict(size=14)) if title else None,
                      plot_bgcolor="white", paper_bgcolor="white", hovermode="closest")
    return fig


def empty_figure(message: str, *, height: int = 220) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#6b7280"),
                       xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=height)


def trace_figure(view, *, selected: int | None = None) -> go.Figure:
    """Attention entropy heatmap (layers x steps) over four aligned step rows.

    Rows, on one shared step axis: the heatmap; temporal change; inter-layer consistency;
    predictive entropy; pivot score with the threshold and pivot steps marked. Annotators' first
    wrong steps (view.human_marks) are red crosses under the heatmap and red lines on the score row.
    """
    n_steps = len(view.steps)
    if n_steps == 0 or view.entropy.size == 0:
        return empty_figure("This trace has no per-step statistics.")
    x = np.arange(1, n_steps + 1)  # [S] 1-based step numbers
    pivots = np.array(view.pivots, dtype=int)
    hover_text = [escape(s.text.strip()[:80]) for s in view.steps]
    fig = make_subplots(rows=5, cols=1, shared_xaxes=True, vertical_spacing=0.025,
                        row_heights=[0.44, 0.14, 0.14, 0.14, 0.14],
                        subplot_titles=("Attention entropy (layer x step)", "Temporal change",
                                        "Inter-layer consistency", "Predictive entropy (nats)",
                                        "Pivot score"))
    fig.add_trace(go.Heatmap(
        z=view.entropy, x=x, y=np.arange(view.n_layers), colorscale="Viridis", zmin=0, zmax=1,
        colorbar=dict(title=dict(text="entropy", side="right"), len=0.42, y=0.79, thickness=12),
        hovertemplate="step %{x}, layer %{y}<br>entropy %{z:.3f}<extra></extra>"), row=1, col=1)
    rows = [(view.temporal, "#7c3aed", "temporal change"), (view.consistency, "#0891b2", "consistency"),
            (view.pred_entropy, "#dc2626", "predictive entropy")]
    for row, (values, colour, name) in enumerate(rows, start=2):
        fig.add_trace(go.Scatter(x=x, y=values, mode="lines+markers", name=name, line=dict(color=colour, width=2),
                                 marker=dict(size=5), customdata=hover_text,
                                 hovertemplate=f"step %{{x}}: {name} %{{y:.3f}}<br>%{{customdata}}<extra></extra>"),
                      row=row, col=1)
    colours = [PIVOT_COLOUR if s.is_pivot else "#cbd5e1" for s in view.steps]
    fig.add_trace(go.Bar(x=x, y=view.scores, marker_color=colours, name="pivot score", customdata=hover_text,
                         hovertemplate="step %{x}: pivot score %{y:.2f}<br>%{customdata}<extra></extra>"),
                  row=5, col=1)
    fig.add_hline(y=PIVOT_THRESHOLD, line=dict(color=PIVOT_COLOUR, dash="dot", width=1), row=5, col=1)
    if pivots.size:
        fig.add_trace(go.Scatter(x=pivots + 1, y=np.full(pivots.size, view.n_layers - 0.5), mode="markers",
                                 marker=dict(symbol="triangle-down", size=11, color=PIVOT_COLOUR,
                                             line=dict(color="white", width=1)),
                                 name="pivot", hovertemplate="pivot at step %{x}<extra></extra>"), row=1, col=1)
        for p in pivots:
            for row in range(2, 6):
                fig.add_vline(x=p + 1, line=dict(color=PIVOT_COLOUR, width=1, dash="dot"), opacity=0.5,
                              row=row, col=1)
    marks = [(who, step) for who, step in getattr(view, "human_marks", []) if 0 <= step < n_steps]
    if marks:  # beside the pivot markers: where people say the chain first went wrong
        steps = np.array([step for _, step in marks])
        agree = ["at a pivot" if step in set(pivots.tolist()) else "no pivot here" for step in steps]
        fig.add_trace(go.Scatter(
            x=steps + 1, y=np.full(steps.size, -0.5), mode="markers", name="first wrong step (human)",
            marker=dict(symbol="x", size=12, color=HUMAN_COLOUR, line=dict(color="white", width=1)),
            customdata=[[escape(who), a] for (who, _), a in zip(marks, agree)],
            hovertemplate="%{customdata[0]}: first wrong step %{x} (%{customdata[1]})<extra></extra>"), row=1, col=1)
        for step in sorted(set(steps.tolist())):
            fig.add_vline(x=step + 1, line=dict(color=HUMAN_COLOUR, width=1.5), opacity=0.6, row=5, col=1)
    if selected is not None and 0 <= selected < n_steps:
        for row in range(1, 6):
            fig.add_vrect(x0=selected + 0.5, x1=selected + 1.5, fillcolor="#2563eb", opacity=0.12,
                          line_width=0, row=row, col=1)
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="step", dtick=1 if n_steps <= 30 else None, row=5, col=1)
    fig.update_xaxes(showgrid=False)
    fig.update_yaxes(gridcolor="#f1f5f9")
    fig.update_annotations(font=dict(size=12), x=0, xanchor="left")
    _layout(fig, height=720)
    fig.update_layout(showlegend=False, margin=dict(l=10, r=10, t=30, b=10))
    return fig


def token_entropy_figure(view, step: int) -> go.Figure:
    """Predictive entropy of each token of one step, bars coloured by the same scale as the text."""
    if not (0 <= step < len(view.steps)):
        return empty_figure("Pick a step.")
    s = view.steps[step]
    stop = min(s.tok_end, view.token_entropy.size)
    values = view.token_entropy[s.tok_start:stop]  # [T_step]
    if values.size == 0:
        return empty_figure("This step has no tokens.", height=160)
    labels = [escape(repr(t)[1:-1]) for t in view.tokens[s.tok_start:stop]]
    fig = go.Figure(go.Bar(x=np.arange(values.size), y=values, customdata=labels,
                           marker=dict(color=values, colorscale="Reds", cmin=0, cmax=4),
                           hovertemplate="%{customdata}: %{y:.2f} nats<extra></extra>"))
    fig.update_xaxes(tickmode="array", tickvals=np.arange(values.size), ticktext=labels, tickangle=-60)
    fig.update_yaxes(title_text="nats", gridcolor="#f1f5f9")
    return _layout(fig, height=220)


def attention_figure(targets: list[dict], *, step: int) -> go.Figure:
    """Where one step's attention went: the prompt, each earlier step, itself (share of mass)."""
    if not targets:
        return empty_figure("No attention statistics for this step.", height=160)
    labels = [t["label"] for t in targets]
    shares = [t["share"] for t in targets]
    colours = ["#2563eb" if t["segment"] == 0 else ("#94a3b8" if "itself" in t["label"] else "#7c3aed")
               for t in targets]
    fig = go.Figure(go.Bar(x=shares, y=labels, orientation="h", marker_color=colours,
                           text=[f"{s:.0%}" for s in shares], textposition="outside",
                           hovertemplate="%{y}: %{x:.1%}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickformat=".0%", range=[0, max(shares) * 1.25 or 1], gridcolor="#f1f5f9")
    return _layout(fig, height=max(160, 26 * len(targets) + 60), title=f"Where step {step + 1} looked")


def burn_figure(per_day: list[dict], *, total: int | None, run_out=None) -> go.Figure:
    """Labels spent so far (line) over labels per day (bars), the budget line and the projection."""
    if not per_day:
        return empty_figure("No labels yet: the burn chart starts with the first label.")
    days = [r["day"] for r in per_day]
    spent = [r["spent"] for r in per_day]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=days, y=[r["labels"] for r in per_day], name="labels that day",
                         marker_color="#bfdbfe", hovertemplate="%{x|%d %b}: %{y} labels<extra></extra>"))
    fig.add_trace(go.Scatter(x=days, y=spent, mode="lines+markers", name="spent",
                             line=dict(color="#2563eb", width=2),
                             hovertemplate="%{x|%d %b}: %{y} spent<extra></extra>"))
    if total is not None:
        fig.add_hline(y=total, line=dict(color="#dc2626", dash="dash"), annotation_text=f"budget {total}",
                      annotation_position="top left")
        if run_out is not None and run_out > days[-1]:
            fig.add_trace(go.Scatter(x=[days[-1], run_out], y=[spent[-1], total], mode="lines",
                                     line=dict(color="#2563eb", dash="dot"), name="projection",
                                     hovertemplate="runs out %{x|%d %b %Y}<extra></extra>"))
    fig.update_yaxes(title_text="labels", rangemode="tozero", gridcolor="#f1f5f9",
                     range=[0, max(total or 0, spent[-1]) * 1.15 + 1])
    fig.update_xaxes(type="date", tickformat="%d %b", dtick=86400000)
    fig.update_layout(legend=LEGEND_ON_TOP, bargap=0.5)
    return _layout(fig, height=300)


def route_mix_figure(rows: list[dict]) -> go.Figure:
    """Stacked route counts after each router version."""
    if not rows:
        return empty_figure("The pool has not been routed yet.")
    fig = go.Figure()
    for route, colour in ROUTE_COLOURS.items():
        part = [r for r in rows if r["route"] == route]
        fig.add_trace(go.Bar(x=[f"v{r['router_version']}" for r in part], y=[r["count"] for r in part],
                             name=route_name(route), marker_color=colour,
                             customdata=[r["time"].strftime("%Y-%m-%d %H:%M") for r in part],
                             hovertemplate="%{x} (%{customdata}): %{y}<extra>" + route + "</extra>"))
    fig.update_layout(barmode="stack", legend=LEGEND_ON_TOP)
    fig.update_xaxes(title_text="router version", type="category")
    fig.update_yaxes(title_text="problems", gridcolor="#f1f5f9")
    return _layout(fig, height=300)


def calibration_figure(history: list[dict]) -> go.Figure:
    """Per router version: the self-train threshold, and ECE / Brier / AUROC once calibrated."""
    if not history:
        return empty_figure("No router versions yet.")
    x = [f"v{h['version']}" for h in history]
    fig = go.Figure()
    series = [("self-train max u", "#16a34a", "solid"), ("ECE", "#dc2626", "dot"),
              ("Brier", "#f59e0b", "dot"), ("AUROC", "#2563eb", "dash")]
    for name, colour, dash in series:
        y = [h.get(name) for h in history]
        if all(v is None for v in y):
            continue
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name, connectgaps=False,
                                 line=dict(color=colour, dash=dash, width=2)))
    fig.update_xaxes(title_text="router version", type="category")
    fig.update_yaxes(range=[0, 1.05], gridcolor="#f1f5f9")
    fig.update_layout(legend=LEGEND_ON_TOP)
    return _layout(fig, height=300)


def vote_figure(candidates: list) -> go.Figure:
    """Candidate answers and their vote shares (majority highlighted)."""
    if not candidates:
        return empty_figure("No sampled answers.", height=140)
    fig = go.Figure(go.Bar(
        x=[c.share for c in candidates], y=[escape(c.answer) for c in candidates], orientation="h",
        marker_color=["#2563eb" if c.is_majority else "#cbd5e1" for c in candidates],
        text=[f"{c.votes} · {c.share:.0%}" for c in candidates], textposition="outside",
        hovertemplate="%{y}: %{x:.0%}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(range=[0, 1.2], tickformat=".0%", visible=False)
    return _layout(fig, height=max(110, 30 * len(candidates) + 40))
