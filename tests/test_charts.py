"""charts.py: figures carry the data they claim to, aligned on the step axis, without Streamlit."""

import datetime as dt
import json

import numpy as np
import plotly.graph_objects as go
import pytest
from conftest import build_app_db

from pivottrace import charts, views
from pivottrace.pivots import PIVOT_THRESHOLD


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_app_db(tmp_path_factory.mktemp("charts") / "c.db")


@pytest.fixture(scope="module")
def view(db):
    rows = views.find_problems(db, min_density=0.5).rows
    return views.trace_view(db, rows[0]["problem_id"], "synth")


def test_trace_figure_aligns_heatmap_and_rows(view):
    fig = charts.trace_figure(view, selected=1)
    n_steps = len(view.steps)
    heatmap = next(t for t in fig.data if isinstance(t, go.Heatmap))
    assert np.asarray(heatmap.z).shape == view.entropy.shape == (30, n_steps)
    lines = {t.name: t for t in fig.data if isinstance(t, go.Scatter) and t.name != "pivot"}
    assert list(lines["temporal change"].y) == pytest.approx(view.temporal.tolist())
    assert list(lines["consistency"].y) == pytest.approx(view.consistency.tolist())
    assert list(lines["predictive entropy"].y) == pytest.approx(view.pred_entropy.tolist())
    bars = next(t for t in fig.data if isinstance(t, go.Bar))
    assert list(bars.y) == pytest.approx(view.scores.tolist())
    for trace in [heatmap, bars, *lines.values()]:  # one shared step axis, 1-based
        assert list(trace.x) == list(range(1, n_steps + 1))
    assert [c == charts.PIVOT_COLOUR for c in bars.marker.color] == [s.is_pivot for s in view.steps]
    markers = next(t for t in fig.data if t.name == "pivot")
    assert list(markers.x) == [p + 1 for p in view.pivots]
    assert any(shape.y0 == PIVOT_THRESHOLD for shape in fig.layout.shapes)  # the threshold line
    json.loads(fig.to_json())  # serialisable, i.e. drawable by the frontend


def test_trace_figure_of_an_empty_trace_says_so(view):
    empty = views.TraceView(**{**view.__dict__, "steps": [], "entropy": np.zeros((0, 0))})
    fig = charts.trace_figure(empty)
    assert fig.layout.annotations[0].text == "This trace has no per-step statistics."


def test_step_drilldown_figures(view):
    step = view.pivots[0] if view.pivots else 0
    tokens = charts.token_entropy_figure(view, step)
    s = view.steps[step]
    assert list(tokens.data[0].y) == pytest.approx(view.token_entropy[s.tok_start:s.tok_end].tolist())
    targets = views.attention_targets(view, step)
    attention = charts.attention_figure(targets, step=step)
    assert list(attention.data[0].y) == [t["label"] for t in targets]
    assert sum(attention.data[0].x) == pytest.approx(1.0)
    assert "Where step" in attention.layout.title.text


def test_burn_figure_projects_to_the_run_out_date():
    today = dt.date(2026, 1, 10)
    per_day = [{"day": today - dt.timedelta(days=2), "labels": 4, "spent": 4},
               {"day": today - dt.timedelta(days=1), "labels": 0, "spent": 4},
               {"day": today, "labels": 6, "spent": 10}]
    fig = charts.burn_figure(per_day, total=30, run_out=today + dt.timedelta(days=6))
    names = [t.name for t in fig.data]
    assert names == ["labels that day", "spent", "projection"]
    assert list(fig.data[1].y) == [4, 4, 10]
    assert list(fig.data[2].y) == [10, 30]
    assert charts.burn_figure([], total=30).layout.annotations[0].text.startswith("No labels yet")


def test_route_mix_figure_stacks_every_route(db):
    rows = views.route_mix_series(db)
    fig = charts.route_mix_figure(rows)
    assert fig.layout.barmode == "stack"
    assert {t.name for t in fig.data} == {"annotate", "self train", "self train pending", "low priority", "deferred"}
    assert sum(sum(t.y) for t in fig.data) == sum(r["count"] for r in rows) == 40


def test_calibration_figure_skips_metrics_never_measured(db):
    history = views.router_history(db)
    fig = charts.calibration_figure(history)
    # cold start: the self-train band is closed (no edge yet) and no ECE/Brier/AUROC was measured
    assert [t.name for t in fig.data] == []
    history[-1]["AUROC"] = 0.7
    assert "AUROC" in [t.name for t in charts.calibration_figure(history).data]


def test_vote_figure_highlights_the_majority():
    candidates = [views.Candidate("12", 3, 0.6, True), views.Candidate("(no answer)", 2, 0.4, False)]
    fig = charts.vote_figure(candidates)
    assert list(fig.data[0].y) == ["12", "(no answer)"]
    assert list(fig.data[0].marker.color) == ["#2563eb", "#cbd5e1"]


def test_model_text_in_chart_labels_is_escaped(view):
    fig = charts.vote_figure([views.Candidate("<a href='x'>9</a>", 1, 1.0, True)])
    assert list(fig.data[0].y) == ["&lt;a href=&#x27;x&#x27;&gt;9&lt;/a&gt;"]
    hostile = views.TraceView(**{**view.__dict__, "steps": [views.StepView(i, f"<b>{i}</b>", 0.0, False)
                                                             for i in range(len(view.steps))]})
    lines = [t for t in charts.trace_figure(hostile).data if t.customdata is not None]
    assert lines and all("<b>" not in text and "&lt;b&gt;" in text for t in lines for text in t.customdata)


def test_trace_figure_draws_human_first_wrong_steps_beside_the_pivots(tmp_path):
    from pivottrace import store
    from tests.conftest import OPERATOR, build_app_db

    db = build_app_db(tmp_path / "marks.db", n_problems=8)
    store.add_user(db, "ann <b>", "annotator", by=OPERATOR)  # a hostile name, but a known user
    problem_id = db.execute("select problem_id from traces order by problem_id limit 1").fetchone()[0]
    store.save_step_label(db, problem_id=problem_id, annotator="ann <b>", first_wrong_step=1)
    store.save_step_label(db, problem_id=problem_id, annotator="bob", first_wrong_step=-1)  # "all right": no cross
    view = views.trace_view(db, problem_id, "synth")
    assert view.human_marks == [("ann <b>", 1), ("bob", -1)]
    fig = charts.trace_figure(view)
    [human] = [t for t in fig.data if t.name == "first wrong step (human)"]
    assert list(human.x) == [2] and human.customdata[0][0] == "ann &lt;b&gt;"  # escaped
    assert human.customdata[0][1] == ("at a pivot" if 1 in view.pivots else "no pivot here")
