"""Renders an evaluation's results: the Markdown report, the results table, summary lines, plotly figures, HTML.

Input: the result rows (dicts of evaluate.BudgetResult), the pool info and settings. Output:
strings and plotly figures (and PNG files when kaleido finds a browser). It runs no evaluation,
reads no database and writes no results.json (evaluate.py does).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from .metrics import paired_catch_test

MAIN = "pivottrace"  # the strategy under test; the report lists and colours it first
MIN_OUTCOMES = 20  # fewer right (or wrong) majorities than this: AUROC, ECE and precisions are noise
FIGURE_TITLES = {
    "auroc": "AUROC of uncertainty for 'majority answer wrong' (whole pool, out-of-sample)",
    "ece": "Expected calibration error of uncertainty (whole pool, out-of-sample)",
    "self_train_precision": "Pseudo-label precision of self_train",
    "training_set": "Exported training set (human gold + pseudo-labels): precision",
    "wrong_majorities": "Wrong majority answers: caught by humans vs leaked into self_train",
    "reliability": "Reliability of PivotTrace's uncertainty after each budget",
}


# --------------------------------------------------------------------------- Markdown

TABLE_COLUMNS = (  # (header, key or function of a result row)
    ("strategy", "strategy"),
    ("labels", "labels"),
    ("AUROC", "auroc"),
    ("ECE", "ece"),
    ("self_train", "self_train"),
    ("self_train precision", "self_train_precision"),
    ("(estimated)", "estimated_self_train_precision"),
    ("band open", "self_train_open"),
    ("lower bound", "self_train_lower_bound"),
    ("waiting", "pending"),
    ("to humans", "human_share"),
    ("train set", "train_size"),
    ("train precision", "train_precision"),
    ("wrong caught", "caught"),
    ("caught range", "caught_range"),
    ("wrong leaked", "leaked"),
    ("wrong missed", "missed"),
    ("low_priority", "low_priority"),
    ("deferred", "deferred"),
)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "–".join(_cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def results_table(rows: list[dict]) -> str:
    """A Markdown table, one line per result row."""
    lines = ["| " + " | ".join(h for h, _ in TABLE_COLUMNS) + " |",
             "|" + "|".join("---" if k == "strategy" else "---:" for _, k in TABLE_COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[k]) for _, k in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def _by_share(rows: list[dict]) -> dict[float, list[dict]]:
    """Group results by the budget share they were asked for (rounding makes budget/size inexact)."""
    groups: dict[float, list[dict]] = {}
    for r in rows:
        key = round(r["budget_share"], 2)
        groups.setdefault(key, []).append(r)
    return dict(sorted(groups.items()))


def render_markdown(info: dict, rows: list[dict], settings: dict, *, strategies: list[tuple[str, str]],
                    pngs: dict, png_error: str | None) -> str:
    model = html.escape(str(info["model_id"]))
    out = [
        "# PivotTrace selection-quality report", "",
        f"Pool: **{info['size']}** traced problems with gold answers from model `{model}`; the model's "
        f"majority answer is wrong on **{info['wrong']}** ({info['wrong'] / max(info['size'], 1):.1%})."
        + (f" {info['n_without_gold']} traced problems had no gold answer and were left out."
           if info["n_without_gold"] else ""), "",
        "An oracle plays the annotator from the gold answers. Each strategy starts from the cold-start "
        f"prior, labels its `annotate` picks in {settings['rounds']} rounds, recalibrates and re-routes "
        "after each round, until the budget is spent. Uncertainty metrics (AUROC and ECE for 'majority "
        "answer wrong') cover the whole pool, each problem scored by a model that did not see its label. "
        "The training set is the human gold labels plus the self_train pseudo-labels; a wrong majority is "
        "*caught* when a human labelled it and *leaked* when it went to self_train. "
        f"Self-train precision target: {settings['target_precision']}.", "",
        "## Strategies", "",
    ]
    for name, description in strategies:  # (name, description) in the order evaluate.strategies gives
        if any(r["strategy"] == name for r in rows):
            out.append(f"- `{name}`: {html.escape(description)}")
    out += ["", "## Summary", ""] + summary_lines(rows, target=settings["target_precision"])
    out += headroom_summary(info.get("headroom")) + [""]
    out += warning_lines(info)
    out += ["## AUROC by labels spent", "",
            "Whole pool, each problem scored by an estimator that did not see its label: the pool is split into "
            "5 folds, each fold is scored by the strategy's estimator fitted on the labels outside it, and the "
            "AUROC is the mean over the folds (one AUROC over several models' scores would mix their scales). "
            f"`random`: mean over {settings.get('random_seeds', 1)} seeds (range in brackets). The paired table "
            "below compares the final estimator with the prior on the very same unlabelled problems.", ""]
    out += auroc_table(rows) + [""]
    out += headroom_lines(info.get("headroom") or {})
    out += ["## Learning, paired: the problems still unlabelled", "",
            "AUROC on the problems no label has reached at that budget, by the strategy's final estimator and "
            "by the cold-start prior on the very same problems (the difference in brackets). This is what "
            "the labels taught about the rest of the pool; the set shrinks, and grows more certain, as the "
            "budget grows.", ""] + learning_table(rows) + [""]
    if info.get("signals"):
        n_unanimous = info["signals"][0]["n_unanimous"]
        out += ["## Single signals (no labels)", "",
                "AUROC of each raw signal for 'majority answer wrong', on the whole pool and on the "
                f"{n_unanimous} problems where every sample agrees. Above 0.5: higher values go with wrong "
                "answers; below 0.5: lower values do; 0.5: no information.", "",
                "'Beyond length': the AUROC of what is left of the signal after a linear fit on log(length).", "",
                "| signal | group | AUROC | beyond length | unanimous only |", "|---|---|---:|---:|---:|"]
        out += [f"| {html.escape(s['signal'])} | {s['group']} | {_cell(s['auroc'])} | "
                f"{_cell(s['auroc_beyond_length'])} | {_cell(s['auroc_unanimous'])} |" for s in info["signals"]]
        out.append("")
    for share, group in _by_share(rows).items():
        title = "Cold start (no labels)" if share == 0 else f"Budget {share:.0%} of the pool ({group[0]['budget']} labels)"
        out += [f"## {title}", "", results_table(group), ""]
    out += ["## Charts", "", "Interactive: [report.html](report.html)", ""]
    if pngs:
        out += [f"![{html.escape(FIGURE_TITLES[name], quote=False)}]({Path(path).name})" for name, path in pngs.items()]
    elif png_error:
        out.append(f"PNG export did not run ({html.escape(png_error)}); the charts are in report.html.")
    return "\n".join(out) + "\n"


def warning_lines(info: dict) -> list[str]:
    """Loud warnings when the pool has too few right or wrong majorities for the metrics to mean much."""
    wrong, size = info["wrong"], info["size"]
    right = size - wrong
    lines = []
    for count, what in ((right, "right"), (wrong, "wrong")):
        if count < MIN_OUTCOMES:
            lines.append(f"> **WARNING: only {count} of {size} majority answers are {what}.** AUROC, ECE and "
                         f"every precision below rest on {count} cases: treat them as noise, not as evidence.")
    return lines + [""] if lines else []


def budget_table(rows: list[dict], cell, *, cold_start: bool = True) -> list[str]:
    """Markdown: one line per strategy, `cell(result row)` at each budget (labels spent in the
    header); the cold start (budget 0) as the first column unless `cold_start` is False."""
    groups = {k: g for k, g in _by_share(rows).items() if cold_start or k > 0}
    head = [f"{share:.0%} ({g[0]['budget']})" for share, g in groups.items()]
    lines = ["| strategy | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for name in dict.fromkeys(r["strategy"] for r in rows):
        hits = [next((r for r in g if r["strategy"] == name), None) for g in groups.values()]
        lines.append(f"| {html.escape(name)} | " + " | ".join("–" if hit is None else cell(hit) for hit in hits) + " |")
    return lines


def auroc_table(rows: list[dict]) -> list[str]:
    """AUROC at each budget, with the range over seeds where there is one."""
    def cell(hit: dict) -> str:
        return _cell(hit["auroc"]) + (f" ({_cell(hit['auroc_range'])})" if hit.get("auroc_range") else "")

    return budget_table(rows, cell)


def learning_table(rows: list[dict]) -> list[str]:
    """AUROC on the unlabelled rest at each budget: the learned estimator vs the cold start."""
    def cell(hit: dict) -> str:
        learned, cold = hit.get("auroc_unlabelled"), hit.get("auroc_unlabelled_cold")
        return "–" if learned is None or cold is None else f"{learned:.3f} vs {cold:.3f} ({learned - cold:+.3f})"

    return budget_table(rows, cell, cold_start=False)


def headroom_lines(headroom: dict) -> list[str]:
    """Markdown: what the estimator learns from random labels on this pool (evaluate.learning_headroom)."""
    if not headroom.get("shares"):
        return []
    lines = ["## Learning headroom: random labels", "",
             f"The same estimator fitted on labels drawn at random (no router bias), each of {headroom['folds']} "
             f"folds scored by a model that never saw it, over {headroom['repeats']} splits; paired with the "
             "cold-start prior on the same problems (± one standard error). It bounds what any labelling "
             "strategy can show on this pool: a gain within two standard errors means the signals hold "
             "little more for this model class to learn at that many labels.", "",
             "| random labels | AUROC learned | AUROC cold start | gain |", "|---:|---:|---:|---:|"]
    for share, entry in headroom["shares"].items():
        lines.append(f"| {_headroom_labels(share, entry)} | {entry['auroc']:.3f} | {entry['auroc_cold']:.3f} | "
                     f"{entry['gain']:+.3f} ± {entry['gain_se']:.3f} |")
    return lines + [""]


def _headroom_labels(share: str, entry: dict) -> str:
    """"30% of the pool (90 labels)" or "every other fold (240 labels)": one headroom share, in words."""
    what = "every other fold" if float(share) >= 1 else f"{float(share):.0%} of the pool"
    return f"{what} ({entry['labels']} labels)"


def headroom_summary(headroom: dict | None) -> list[str]:
    """One summary line: the learning headroom from random labels (empty when it was not measured)."""
    if not headroom or not headroom.get("shares"):
        return []
    parts = [f"{_headroom_labels(share, entry)} {entry['gain']:+.3f} ± {entry['gain_se']:.3f}"
             for share, entry in headroom["shares"].items()]
    return ["- Learning headroom, the estimator on random labels against the cold start: " + "; ".join(parts) + "."]


SINGLE_SIGNALS = ("confidence_only", "vote_share_only")  # the single-signal baselines the issue names
SIGNIFICANCE = 0.05  # a shortfall in caught wrong majorities is called significant below this p-value


def _shortfall(share: float, ours: dict, best: dict) -> str:
    """One budget where a baseline caught more, e.g. '20% (22 vs 42 `confidence_only`; 8 caught by
    PivotTrace alone, 28 by the baseline alone, McNemar exact p = 0.0012: significant)'."""
    text = f"{share:.0%} ({ours['caught']} vs {best['caught']} `{html.escape(best['strategy'])}`"
    if ours.get("caught_ids") is None or best.get("caught_ids") is None:
        return text + ")"
    test = paired_catch_test(ours["caught_ids"], best["caught_ids"])
    verdict = "significant" if test["p_value"] < SIGNIFICANCE else "within chance"
    return (text + f"; {test['only_a']} caught by PivotTrace alone, {test['only_b']} by the baseline alone, "
            f"McNemar exact p = {test['p_value']:.2g}: {verdict}{_hindsight_note(ours, best)})")


def _hindsight_note(ours: dict, best: dict) -> str:
    """How much of a shortfall the cold start decided. The first round is picked before any label
    returns; the hindsight figure follows it with the picks of the estimator fitted to every gold
    answer in the pool: learning taken to its limit (a lucky ranking can still do better by a few).
    '' when not recorded (older reports)."""
    rounds, hindsight = ours.get("picked_rounds"), ours.get("hindsight_caught")
    if not rounds or ours.get("first_round_caught") is None or hindsight is None:
        return ""
    verdict = ("still fewer, so the gap is the cold start's: learning taken to its limit would not close it"
               if hindsight < best["caught"] else "learning taken to its limit would have closed the gap")
    picks = f"{len(rounds[0])} pick" + ("" if len(rounds[0]) == 1 else "s")
    return (f"; the first round's {picks}, made before any label, caught {ours['first_round_caught']}, "
            f"and with the estimator fitted to every gold answer ranking the rest, {hindsight} in all: {verdict}")


def summary_lines(rows: list[dict], *, target: float | None = None) -> list[str]:
    """Plain comparisons of PivotTrace against each baseline, budget by budget (facts, no spin)."""
    groups = {k: {r["strategy"]: r for r in g} for k, g in _by_share(rows).items() if k > 0}
    if not groups or not any(MAIN in g for g in groups.values()):
        return ["(PivotTrace itself was not run.)"]
    lines = []
    for name in dict.fromkeys(r["strategy"] for r in rows):
        runs = [g[name] for g in groups.values() if name in g]
        nonempty = [r for r in runs if r["self_train"]]
        below = [r for r in nonempty if r.get("below_target")]
        realised = [r["self_train_precision"] for r in nonempty if r["self_train_precision"] is not None]
        worst = min(realised, default=None)
        lines.append(f"- `{html.escape(name)}`: self_train non-empty at {len(nonempty)} of {len(runs)} budgets, "
                     f"below the target{'' if target is None else f' {target}'} at {len(below)}"
                     + (f" (lowest realised precision {worst:.3f})" if worst is not None else "") + ".")
    for rival, what in (("confidence_only", "confidence only"), ("vote_share_only", "vote share only"),
                        ("no_attention", "the no-attention ablation"),
                        ("no_model_choice", "the all-signal model alone"), ("random", "random selection")):
        pairs = [(g[MAIN]["auroc"], g[rival]["auroc"]) for g in groups.values()
                 if rival in g and MAIN in g and g[MAIN]["auroc"] is not None and g[rival]["auroc"] is not None]
        if not pairs:
            continue
        wins = sum(a > b for a, b in pairs)
        mean_gap = float(np.mean([a - b for a, b in pairs]))
        lines.append(f"- AUROC vs {what}: higher at {wins} of {len(pairs)} budgets "
                     f"(mean difference {mean_gap:+.3f}).")
    singles = [(share, g[MAIN], max((g[b] for b in SINGLE_SIGNALS if b in g), key=lambda r: r["caught"]))
               for share, g in groups.items() if MAIN in g and any(b in g for b in SINGLE_SIGNALS)]
    if singles:
        short = [(share, ours, best) for share, ours, best in singles if ours["caught"] < best["caught"]]
        lines.append(f"- Wrong majorities caught vs the best single-signal baseline: at least as many at "
                     f"{len(singles) - len(short)} of {len(singles)} budgets"
                     + (f"; fewer at {', '.join(_shortfall(*entry) for entry in short)}." if short else "."))
    cold = next((r for r in rows if r["strategy"] == MAIN and r["budget"] == 0 and r["auroc"] is not None), None)
    spent = [(share, g[MAIN]["auroc"]) for share, g in groups.items() if MAIN in g and g[MAIN]["auroc"] is not None]
    if cold and spent:
        lines.append(f"- Whole-pool AUROC against the cold start's {cold['auroc']:.3f}: "
                     + ", ".join(f"{share:.0%} {a:.3f} ({a - cold['auroc']:+.3f})" for share, a in spent) + ".")
    learned = [(share, g[MAIN]["auroc_unlabelled"] - g[MAIN]["auroc_unlabelled_cold"])
               for share, g in groups.items() if MAIN in g and g[MAIN].get("auroc_unlabelled") is not None
               and g[MAIN].get("auroc_unlabelled_cold") is not None]
    if learned:
        lines.append("- What the labels taught (AUROC on the unlabelled rest, learned minus cold start): "
                     + ", ".join(f"{share:.0%} {gap:+.3f}" for share, gap in learned) + ".")
    for rival, what in (("random", "random selection"), ("confidence_only", "confidence only"),
                        ("no_model_choice", "the all-signal model alone"),
                        ("two_way", "two-way routing"), ("fixed_thresholds", "fixed thresholds")):
        pairs = [(g[MAIN], g[rival]) for g in groups.values() if rival in g and MAIN in g]
        if not pairs:
            continue
        caught = sum(a["caught"] for a, _ in pairs) - sum(b["caught"] for _, b in pairs)
        leaked = sum(a["leaked"] for a, _ in pairs) - sum(b["leaked"] for _, b in pairs)
        lines.append(f"- Wrong majorities vs {what}, summed over budgets: {caught:+g} caught, {leaked:+g} leaked.")
    return lines


# --------------------------------------------------------------------------- charts

STRATEGY_COLOURS = {MAIN: "#2563eb", "random": "#9ca3af", "confidence_only": "#f59e0b",
                    "vote_share_only": "#16a34a", "no_attention": "#7c3aed", "two_way": "#db2777",
                    "fixed_thresholds": "#0d9488", "labels_ignored": "#111827", "uncertified": "#ef4444",
                    "no_model_choice": "#0891b2",
                    "pivot_lift": "#a16207"}


def build_figures(rows: list[dict], *, target_precision: float) -> dict:
    """Plotly figures of the results (returned, never shown)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(dict.fromkeys(r["strategy"] for r in rows))

    def line_figure(key: str, *, include_cold: bool = True, y_range=None) -> go.Figure:
        fig = go.Figure()
        for name in names:
            pts = [r for r in rows if r["strategy"] == name and (include_cold or r["budget"] > 0)
                   and r[key] is not None]
            fig.add_trace(go.Scatter(x=[100 * r["budget_share"] for r in pts], y=[r[key] for r in pts],
                                     mode="lines+markers", name=name,
                                     line=dict(color=STRATEGY_COLOURS.get(name), width=3 if name == MAIN else 1.5)))
        fig.update_xaxes(title="label budget (% of pool)")
        if y_range:
            fig.update_yaxes(range=y_range)
        return fig

    figures = {
        "auroc": line_figure("auroc", y_range=[0.4, 1.0]),
        "ece": line_figure("ece"),
        "self_train_precision": line_figure("self_train_precision", include_cold=True),
        "training_set": line_figure("train_precision", include_cold=True),
    }
    figures["self_train_precision"].add_hline(y=target_precision, line_dash="dot",
                                              annotation_text="target", line_color="#6b7280")
    wrong = make_subplots(rows=1, cols=2, subplot_titles=("caught (sent to humans)", "leaked into self_train"))
    for name in names:
        pts = [r for r in rows if r["strategy"] == name]
        for col, key in ((1, "caught"), (2, "leaked")):
            wrong.add_trace(go.Scatter(x=[100 * r["budget_share"] for r in pts], y=[r[key] for r in pts],
                                       mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                                       line=dict(color=STRATEGY_COLOURS.get(name),
                                                 width=3 if name == MAIN else 1.5)), row=1, col=col)
    wrong.update_xaxes(title="label budget (% of pool)")
    figures["wrong_majorities"] = wrong
    reliability = go.Figure()
    reliability.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect",
                                     line=dict(color="#9ca3af", dash="dot")))
    for r in (r for r in rows if r["strategy"] == MAIN):
        bins = r["reliability"]
        reliability.add_trace(go.Scatter(
            x=[b["mean_prob"] for b in bins], y=[b["frequency"] for b in bins], mode="lines+markers",
            name=f"{r['budget_share']:.0%} ({r['estimator']})", text=[f"n={b['n']}" for b in bins]))
    reliability.update_xaxes(title="predicted P(majority wrong)", range=[0, 1])
    reliability.update_yaxes(title="observed share wrong", range=[0, 1])
    figures["reliability"] = reliability
    for name, fig in figures.items():
        fig.update_layout(title=dict(text=FIGURE_TITLES[name], x=0.01, xanchor="left", font=dict(size=14)), height=420,
                          plot_bgcolor="white", paper_bgcolor="white",
                          margin=dict(l=50, r=20, t=60, b=50))
        fig.update_xaxes(gridcolor="#e5e7eb")
        fig.update_yaxes(gridcolor="#e5e7eb")
    return figures


def write_pngs(figures: dict, folder: Path) -> tuple[dict, str | None]:
    """PNG files through kaleido (one browser session for all); on failure, say why and go on."""
    import plotly.io as pio

    paths = {name: folder / f"{name}.png" for name in figures}
    try:
        pio.write_images(list(figures.values()), [str(p) for p in paths.values()], width=900, height=420)
    except Exception as err:  # kaleido missing, or no Chrome/Chromium it can start
        return {}, f"{type(err).__name__}: {err}".splitlines()[0][:300]
    return {k: p for k, p in paths.items() if p.is_file()}, None


def render_html(info: dict, rows: list[dict], figures: dict) -> str:
    """One self-contained page: the tables and every figure (plotly.js inlined once, works offline)."""
    parts = [f"<h1>PivotTrace selection-quality report</h1><p>Pool: {info['size']} problems, model "
             f"<code>{html.escape(str(info['model_id']))}</code>, majority wrong on {info['wrong']}.</p>"]
    parts.append("<ul>" + "".join(f"<li>{html.escape(line[2:])}</li>" for line in summary_lines(rows)) + "</ul>")
    parts += [f"<p><strong>{html.escape(line[2:].replace('**', ''))}</strong></p>"
              for line in warning_lines(info) if line]
    for share, group in _by_share(rows).items():
        title = "Cold start (no labels)" if share == 0 else f"Budget {share:.0%} ({group[0]['budget']} labels)"
        head = "".join(f"<th>{html.escape(h)}</th>" for h, _ in TABLE_COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{_cell(r[k])}</td>" for _, k in TABLE_COLUMNS) + "</tr>"
                       for r in group)
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>")
    for i, fig in enumerate(figures.values()):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>PivotTrace evaluation</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
