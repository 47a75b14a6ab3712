"""Do pivots find the first wrong step? Injected-error pools, natural slips, and pivot statistics of real pools.

Runs the embedded model's teacher-forced analysis pass (trace.Tracer.analyse) over:
1. an injected-error pool from GSM8K test gold solutions (injected.gsm8k_pool): each problem's
   clean chain and the same chain with one error planted and carried forward;
2. optionally (--demo-db) the model's own right greedy chains from a traced demo database, with an
   error planted the same way: the injected pool in the model's own words;
3. optionally (--pool-db, repeatable) a traced pool: its stored greedy chains are re-analysed
   with this code (so the new token arrays exist), then pivots per problem, share of problems with
   a pivot, AUROC of the pivot features for "majority wrong", alone and beyond length, and the
   localisation of natural arithmetic slips (the first equation whose stated result is wrong).
Pivots are scored against the pool's own statistics (clean and injected chains together: what
production would see). Localisation (pivottrace.localisation) is reported for the combined rule,
the token rule with each signal alone, and the step-level rule alone.

    PYTHONPATH=. python bench/pivot_localisation.py --gsm 150 --demo-db /work/data/demo300.db \
        --pool-db /work/data/demo300.db --pool-db /work/data/gsm200.db --out bench/reports/pivot_localisation

Source databases are copied (sqlite backup) and only the copy is opened, so nothing is written to them.
"""

from __future__ import annotations

from pivottrace import trace  # isort: skip  (first: sets OMP_WAIT_POLICY before torch loads)

import argparse
import json
import pickle
import random
import sqlite3
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pivottrace import store
from pivottrace.answers import answers_match
from pivottrace.features import PIVOT_FEATURES, build_features
from pivottrace.injected import _EQUATION_RE, InjectionError, correct_equations, gsm8k_pool, inject
from pivottrace.models import resolve_model
from pivottrace.localisation import LocalisationCase, first_wrong_step, localisation_report
from pivottrace.pivots import analyse_trace, pool_stats, score_trace, score_tokens, token_null

GSM8K = "../shared/data/gsm8k/test.jsonl"


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


class LazyTracer:
    """A Tracer loaded on the first cache miss: re-scoring cached analyses needs no model."""

    def __init__(self, spec: str):
        self.spec, self._tracer = spec, None
        self.config = trace.TraceConfig()
        self.model_id = resolve_model(spec).model_id

    def analyse(self, problem: str, completion: str):
        if self._tracer is None:
            self._tracer = trace.Tracer(self.spec)
            log(f"model loaded ({self.model_id}, {self._tracer.model.dtype})")
        self._tracer.config = self.config
        return self._tracer.analyse(problem, completion)


def analysed(tracer, items: list[tuple[str, str]], cache: Path) -> list:
    """TraceResult of each (problem, completion), cached on disk by content."""
    results = pickle.loads(cache.read_bytes()) if cache.exists() else {}
    started, fresh = time.perf_counter(), 0
    for index, key in enumerate(items):
        if key not in results:
            results[key] = tracer.analyse(*key)
            fresh += 1
            if fresh % 25 == 0:
                log(f"  {index + 1}/{len(items)} analysed, {(time.perf_counter() - started) / fresh:.2f} s each")
                cache.write_bytes(pickle.dumps(results))
    cache.write_bytes(pickle.dumps(results))
    return [results[key] for key in items]


def rules(results) -> dict:
    """name -> function(result) -> (pivots, scores): the rules compared on one pool."""
    arrays = [r.arrays for r in results]
    stats, null = pool_stats(arrays), token_null(arrays, [r.tokens for r in results])
    null_untyped = token_null(arrays)
    out = {"combined (token FDR + step rule)": lambda r: _pick(analyse_trace(
               r.arrays, r.steps, stats, null, r.n_completion_tokens, tokens=r.tokens)[0]),
           "step rule only (weighted z)": lambda r: _pick(score_trace(r.arrays, stats, r.n_completion_tokens))}
    for name in null.sorted_values:
        out[f"token FDR, {name} only"] = lambda r, name=name: _pick_tokens(
            score_tokens(r.arrays, r.steps, null, tokens=r.tokens, signals=(name,)))
    out["token FDR, all four signals"] = lambda r: _pick_tokens(
        score_tokens(r.arrays, r.steps, null, tokens=r.tokens, signals=tuple(null.sorted_values)))
    out["token FDR, surprisal + forking"] = lambda r: _pick_tokens(
        score_tokens(r.arrays, r.steps, null, tokens=r.tokens, signals=("surprisal", "forking")))
    out["token FDR, every token tested, per-class null"] = lambda r: _pick_tokens(
        score_tokens(r.arrays, r.steps, null, tokens=r.tokens, numbers_only=False))
    out["token FDR, every token tested, one null"] = lambda r: _pick_tokens(
        score_tokens(r.arrays, r.steps, null_untyped, tokens=None))
    return out


def _pick(result):
    return list(result.pivots), list(result.scores)


def _pick_tokens(result):
    return list(result.pivots), list(result.step_scores)


def cases_by_rule(results, wrong_steps) -> dict[str, list[LocalisationCase]]:
    """Per rule, a LocalisationCase per analysed chain; wrong_steps[i] = first wrong step or -1 (clean)."""
    out = {}
    for name, rule in rules(results).items():
        out[name] = []
        for result, first in zip(results, wrong_steps):
            pivots, scores = rule(result)
            tokens = [s["tok_end"] - s["tok_start"] for s in result.steps]
            out[name].append(LocalisationCase(pivots, scores, tokens, first))
    return out


def localise(results, wrong_steps) -> dict:
    return {name: localisation_report(cases).to_dict() for name, cases in cases_by_rule(results, wrong_steps).items()}


def injected_pool(tracer, chains, cache: Path, label: str) -> dict:
    items = [(c.problem, c.clean) for c in chains] + [(c.problem, c.completion) for c in chains]
    log(f"{label}: {len(chains)} chains, {len(items)} analyses")
    results = analysed(tracer, items, cache)
    n = len(chains)
    wrong = [-1] * n + [first_wrong_step(r.steps, c.error_char) for r, c in zip(results[n:], chains)]
    by_rule = cases_by_rule(results, wrong)
    report = {"pool": label, "n_chains": n,
              "overall": {name: localisation_report(cases).to_dict() for name, cases in by_rule.items()}}
    combined = by_rule[list(by_rule)[0]]
    for kind in ("operation", "number", "dropped"):
        keep = [i for i, c in enumerate(chains) if c.kind == kind]
        report[f"combined rule, kind={kind}"] = localisation_report(
            [combined[i] for i in keep] + [combined[n + i] for i in keep]).to_dict()
    report["examples"] = examples(chains, results[n:], wrong[n:], results)
    return report


def examples(chains, results, wrong, pool_results, k: int = 6) -> list[dict]:
    """Injected chains with their steps, pivots and pivot tokens, for the note: k found, k/2 missed."""
    arrays = [r.arrays for r in pool_results]
    stats, null = pool_stats(arrays), token_null(arrays, [r.tokens for r in pool_results])
    hits, misses = [], []
    for chain, result, first in zip(chains, results, wrong):
        pivots, tokens = analyse_trace(result.arrays, result.steps, stats, null, result.n_completion_tokens,
                                       tokens=result.tokens)
        (hits if first in pivots.pivots else misses).append({
            "kind": chain.kind, "equation": chain.equation, "wrong_equation": chain.wrong_equation,
            "first_wrong_step": first, "pivots": pivots.pivots,
            "steps": [s["text"] for s in result.steps],
            "pivot_tokens": [(result.tokens[t], tokens.token_signal[t], round(float(tokens.token_q[t]), 4))
                             for t in tokens.pivot_tokens]})
    return hits[:k] + misses[:k // 2]  # where the pivot found the injected step, then where it did not


def copy_db(path: str) -> Path:
    """A private copy of a (possibly live) SQLite database, through SQLite's backup API."""
    target = Path(tempfile.mkdtemp(prefix="i11-pool-")) / Path(path).name
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    dest = sqlite3.connect(target)
    source.backup(dest)
    source.close()
    dest.close()
    return target


def model_chains(db, model_id: str) -> list[dict]:
    """Stored greedy chains with their problem and gold."""
    rows = []
    for row in store.iter_trace_arrays(db, model_id):
        problem = store.get_problem(db, row["problem_id"])
        rows.append({**row, "text": problem["text"], "gold": problem["gold"]})
    return rows


def demo_injected(tracer, db_path: str, cache: Path, *, seed: int = 0, limit: int = 40) -> dict | None:
    db = store.open_db(copy_db(db_path))
    model_id = store.latest_model_id(db)
    rng = random.Random(seed)
    chains = []
    for row in model_chains(db, model_id):
        if row["gold"] and row["answer"] and answers_match(row["answer"], row["gold"]) \
                and correct_equations(row["completion"]):
            try:
                chains.append(inject(row["text"], row["completion"], rng=rng))
            except InjectionError:
                continue
        if len(chains) >= limit:
            break
    if not chains:
        return None
    return injected_pool(tracer, chains, cache, f"model's own right chains from {Path(db_path).name}, injected")


def auroc_beyond_length(y: np.ndarray, x: np.ndarray, length: np.ndarray) -> dict:
    """AUROC of x alone, of log length alone, and 5-fold CV AUROC of a logistic fit on both."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.preprocessing import StandardScaler
    from sklearn.pipeline import make_pipeline

    if len(set(y.tolist())) < 2 or min(np.bincount(y)) < 5:
        return {"auroc": None, "note": "fewer than 5 of one outcome: not meaningful"}
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    base = np.log1p(length)[:, None]
    fit = make_pipeline(StandardScaler(), LogisticRegression())
    p_len = cross_val_predict(fit, base, y, cv=folds, method="predict_proba")[:, 1]
    p_both = cross_val_predict(fit, np.column_stack([base, x]), y, cv=folds, method="predict_proba")[:, 1]
    return {"auroc": round(float(roc_auc_score(y, x)), 3), "length_cv": round(float(roc_auc_score(y, p_len)), 3),
            "length_plus_cv": round(float(roc_auc_score(y, p_both)), 3)}


class Stored:
    """A stored trace row in TraceResult's shape (arrays, steps, tokens), for the rules."""

    def __init__(self, row: dict):
        self.arrays, self.steps, self.n_completion_tokens = row["arrays"], row["steps"], row["n_completion_tokens"] or 0
        self.tokens = row.get("tokens")


def real_pool(tracer, db_path: str, cache: Path) -> dict:
    """Pivot statistics of a traced pool; re-analysed with `tracer`, or from its stored arrays when None
    (then the attention token signals, which older traces lack, are left out)."""
    db = store.open_db(copy_db(db_path))
    model_id = store.latest_model_id(db)
    rows = model_chains(db, model_id)
    if tracer is None:
        log(f"{Path(db_path).name}: {len(rows)} stored chains, stored arrays")
        results = [Stored(row) for row in rows]
    else:
        log(f"{Path(db_path).name}: re-analysing {len(rows)} stored greedy chains")
        results = analysed(tracer, [(r["text"], r["completion"]) for r in rows], cache)
    traces = [{**row, "arrays": result.arrays, "steps": result.steps, "tokens": result.tokens,
               "n_completion_tokens": result.n_completion_tokens} for row, result in zip(rows, results)]
    features, _ = build_features(traces, store.all_sample_answers(db, model_id))
    wrong = np.array([int(not (f["majority_answer"] and r["gold"] and answers_match(f["majority_answer"], r["gold"])))
                      for f, r in zip(features, rows)])
    n_pivots = np.array([f["n_pivots"] for f in features])
    length = np.array([f["length"] for f in features], dtype=float)
    report = {"pool": Path(db_path).name, "model_id": model_id, "n_problems": len(rows),
              "arrays": "stored" if tracer is None else "re-analysed",
              "token_signals": sorted({k for r in results for k in token_null([r.arrays]).sorted_values}),
              "majority_wrong": int(wrong.sum()), "mean_steps": float(np.mean([f["n_steps"] for f in features])),
              "pivots_per_problem": round(float(n_pivots.mean()), 3),
              "share_with_pivot": round(float((n_pivots > 0).mean()), 3), "auroc_majority_wrong": {}}
    stats = pool_stats([t["arrays"] for t in traces])
    before = np.array([len(score_trace(t["arrays"], stats, t["n_completion_tokens"] or 0).pivots) for t in traces])
    report["step_rule_only"] = {"pivots_per_problem": round(float(before.mean()), 3),
                                "share_with_pivot": round(float((before > 0).mean()), 3)}
    for name in ("n_pivots", "pivot_density", "max_pivot_score") + PIVOT_FEATURES:
        x = np.nan_to_num(np.array([f[name] for f in features], dtype=float))
        report["auroc_majority_wrong"][name] = auroc_beyond_length(wrong, x, length)
    # natural arithmetic slips: the first equation whose stated result is wrong
    slips = []
    for row, result in zip(rows, results):
        right = {m.start() for m in correct_equations(row["completion"])}
        bad = [m for m in _EQUATION_RE.finditer(row["completion"]) if m.start() not in right]
        slips.append(first_wrong_step(result.steps, bad[0].start(2)) if bad else -1)
    with_slip = [i for i, s in enumerate(slips) if s >= 0]
    report["natural_slips"] = {"n_chains_with_slip": len(with_slip)}
    if with_slip:
        report["natural_slips"].update(localise(results, slips))
    return report


COLUMNS = (("with_pivot", "chains with a pivot"), ("recall", "first wrong step is a pivot"),
           ("random_same_size", "random, same size"), ("recall_near", "pivot within ±1"),
           ("random_same_size_near", "random ±1, same size"), ("precision", "precision"),
           ("top_step", "top step = first wrong"), ("random_step", "one random step"),
           ("longest_step", "longest step"), ("clean_with_pivot", "clean chains with a pivot"))


def _table(named: dict) -> list[str]:
    head = "| rule | chains | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, rep in named.items():
        cells = ["-" if rep.get(k) is None or rep[k] != rep[k] else f"{rep[k]:.2f}" for k, _ in COLUMNS]
        lines.append(f"| {name} | {rep['n_chains']} | " + " | ".join(cells) + " |")
    return lines


def markdown(out: dict) -> str:
    """The report as Markdown tables."""
    lines = [f"# Pivot localisation ({out.get('model_id')})", ""]
    for report in out["reports"]:
        lines += [f"## {report['pool']}", ""]
        if "overall" in report:
            rows = dict(report["overall"])
            rows.update({k.replace("combined rule, ", "combined, "): v for k, v in report.items()
                         if k.startswith("combined rule, kind=")})
            lines += _table(rows) + [""]
            for example in report.get("examples", []):
                lines.append(f"- {example['kind']}: `{example['equation']}` -> `{example['wrong_equation']}`, first wrong "
                             f"step {example['first_wrong_step'] + 1}, pivots {[p + 1 for p in example['pivots']]}, "
                             f"pivot tokens {example['pivot_tokens']}")
            lines.append("")
        else:
            lines.append(f"{report['n_problems']} problems ({report['arrays']} arrays, token signals "
                         f"{', '.join(report['token_signals'])}), majority wrong {report['majority_wrong']}, "
                         f"{report['mean_steps']:.1f} steps; pivots per problem {report['pivots_per_problem']}, "
                         f"share with a pivot {report['share_with_pivot']} (the step rule alone, as before this "
                         f"issue: {report['step_rule_only']['pivots_per_problem']} and "
                         f"{report['step_rule_only']['share_with_pivot']}).")
            lines += ["", "| feature | AUROC (majority wrong) | log length, 5-fold CV | length + feature, 5-fold CV |",
                      "|---|---|---|---|"]
            for name, a in report["auroc_majority_wrong"].items():
                lines.append(f"| {name} | {a.get('auroc')} | {a.get('length_cv', '')} | {a.get('length_plus_cv', '')} |")
            slips = report["natural_slips"]
            lines += ["", f"Natural arithmetic slips (first equation whose stated result is wrong): "
                          f"{slips['n_chains_with_slip']} chains.", ""]
            if slips["n_chains_with_slip"]:
                lines += _table({k: v for k, v in slips.items() if isinstance(v, dict)}) + [""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gsm", type=int, default=100, help="GSM8K gold chains to inject (0: none)")
    parser.add_argument("--demo-db", help="traced demo database: inject into the model's own right chains")
    parser.add_argument("--pool-db", action="append", default=[], help="traced pool to report pivot statistics on")
    parser.add_argument("--model", default="default", help="model spec (a local folder for a smoke run)")
    parser.add_argument("--demo-chains", type=int, default=40, help="model-own chains to inject (--demo-db)")
    parser.add_argument("--stored-arrays", action="store_true",
                        help="--pool-db: score the stored arrays instead of re-analysing (no model needed)")
    parser.add_argument("--gsm-examples", action="store_true",
                        help="GSM8K chains: analyse with the few-shot examples in the prompt (default: without, 3x cheaper)")
    parser.add_argument("--cache", default="/tmp/i11-cache", help="analysis cache folder")
    parser.add_argument("--out", default="bench/reports/pivot_localisation", help="report path without suffix")
    args = parser.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    needs_model = args.gsm or args.demo_db or (args.pool_db and not args.stored_arrays)
    tracer = LazyTracer(args.model) if needs_model else None
    few_shot = tracer.config if tracer else None
    out = {"model_id": tracer.model_id if tracer else None, "reports": []}
    path = Path(args.out + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(report):
        out["reports"].append(report)
        out["seconds"] = round(time.perf_counter() - started, 1)
        path.write_text(json.dumps(out, indent=1, default=float))
        path.with_suffix(".md").write_text(markdown(out))
        log(json.dumps(report, default=float)[:3000])

    if args.gsm:
        tracer.config = few_shot if args.gsm_examples else replace(few_shot, prompt_examples=())
        prompt = "few-shot prompt" if args.gsm_examples else "prompt without worked examples"
        save(injected_pool(tracer, gsm8k_pool(GSM8K, n=args.gsm),
                           cache / f"gsm{args.gsm}-{int(args.gsm_examples)}-{Path(tracer.model_id).name}.pkl",
                           f"GSM8K test gold chains (first {args.gsm} that inject), injected; {prompt}"))
    if args.demo_db:
        tracer.config = few_shot  # the prompt the chains were generated with
        report = demo_injected(tracer, args.demo_db, cache / f"demo_injected{args.demo_chains}.pkl",
                               limit=args.demo_chains)
        if report:
            save(report)
    for db_path in args.pool_db:
        if tracer:
            tracer.config = few_shot
        save(real_pool(None if args.stored_arrays else tracer, db_path, cache / f"{Path(db_path).stem}.pkl"))
    log(f"done in {time.perf_counter() - started:.0f} s -> {path}")


if __name__ == "__main__":
    main()
