"""The oracle evaluation: the report files, baselines on the same problems, honest accounting,
and the user's database left untouched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from pivottrace import evaluate, store
from pivottrace.report import FIGURE_TITLES
from pivottrace.cli import app
from pivottrace.datasets import demo_problems
from pivottrace.synthetic import synthetic_trace

N_PROBLEMS = 120


@pytest.fixture(scope="module")
def synthetic_db_path(tmp_path_factory):
    """A traced synthetic pool with gold answers, some labels and routes of the user's own."""
    path = tmp_path_factory.mktemp("eval") / "pool.db"
    db = store.open_db(path)
    problems = demo_problems(N_PROBLEMS, seed=3)
    store.insert_problems(db, problems)
    store.upsert_model(db, "synth", spec="synthetic", n_layers=6)
    rng = np.random.default_rng(3)
    for p in problems:
        store.save_trace(db, p.id, "synth", synthetic_trace(p, rng, n_layers=6))
    from pivottrace import pipeline

    pipeline.route(db, note="the user's own routing")
    store.add_user(db, "ann", "annotator", by=store.LocalOperator("tests"))
    item = store.next_item(db, "ann")
    store.save_label(db, problem_id=item["problem_id"], annotator="ann", verdict="flawed")
    return path


def snapshot(path) -> dict:
    db = store.open_db(path)
    return {table: list(db.query(f"select * from {table} order by rowid"))
            for table in ("labels", "routes", "router_versions", "features", "problems")}


def test_eval_writes_the_report_and_leaves_the_database_untouched(synthetic_db_path, tmp_path):
    before = snapshot(synthetic_db_path)
    config = evaluate.EvalConfig(budgets=(0.1, 0.3), rounds=3, png=shutil.which("chromium") is not None)
    report = evaluate.evaluate_db(store.open_db(synthetic_db_path), tmp_path / "out", config=config)
    assert snapshot(synthetic_db_path) == before  # the user's labels, routes and features are as they were

    for name in evaluate.REPORT_FILES:
        assert (tmp_path / "out" / name).stat().st_size > 0
    if config.png:  # this machine has Chromium: kaleido must have written every chart
        assert report.png_error is None
        assert sorted(p.name for p in report.pngs.values()) == sorted(f"{k}.png" for k in FIGURE_TITLES)
        assert all(p.read_bytes()[:4] == b"\x89PNG" for p in report.pngs.values())
    markdown = (tmp_path / "out" / "report.md").read_text()
    for strategy in ("pivottrace", "random", "confidence_only", "vote_share_only", "no_attention",
                     "labels_ignored", "uncertified", "two_way", "fixed_thresholds"):
        assert f"| {strategy} |" in markdown
    assert "## Budget 10% of the pool (12 labels)" in markdown and "## Cold start" in markdown
    assert "## Learning headroom: random labels" in markdown and "Whole-pool AUROC against the cold start" in markdown
    from pivottrace.views import evaluation_view

    summary = evaluation_view(tmp_path / "out").summary  # what the app's Evaluation page shows
    assert any(line.startswith("- Learning headroom") for line in summary)
    assert set(report.pool["headroom"]["shares"]) == {"0.3", "1"}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("plotly.js") >= 1 and "<table>" in html


def test_baselines_are_scored_on_the_same_problems_and_the_accounting_adds_up(synthetic_db_path):
    pool = evaluate.load_pool(store.open_db(synthetic_db_path))
    assert pool.size == N_PROBLEMS and pool.n_without_gold == 0
    results = evaluate.run(pool, config=evaluate.EvalConfig(budgets=(0.2,), rounds=2, png=False))
    assert {r.strategy for r in results} == {s.name for s in evaluate.strategies()}
    for r in results:
        assert r.n_scored == pool.size  # every strategy's AUROC/ECE covers the same problems
        assert r.wrong_total == int(pool.wrong.sum())
        assert r.caught + r.leaked + r.missed == pytest.approx(r.wrong_total)  # random: means over seeds
        assert r.labels <= r.budget and r.human_share == pytest.approx(r.labels / pool.size)
        assert r.train_size == pytest.approx(r.labels + r.self_train)
        if r.self_train and r.self_train_open is not None:
            assert r.self_train_open  # a certifying strategy self-trains only on a certified band
        if r.budget and r.strategy != "fixed_thresholds":  # fixed thresholds never spill: they may run dry
            assert r.labels == r.budget  # synthetic pools always leave something to annotate
    cold = {r.strategy: r for r in results if r.budget == 0}
    assert cold["pivottrace"].auroc == cold["random"].auroc  # same estimator before any label
    assert cold["confidence_only"].auroc != cold["pivottrace"].auroc
    spent = {r.strategy: r for r in results if r.budget > 0}
    assert spent["labels_ignored"].auroc == cold["labels_ignored"].auroc  # the ablation never learns
    assert spent["random"].seeds == evaluate.RANDOM_SEEDS and len(spent["random"].caught_range) == 2
    assert spent["random"].caught_range[0] <= spent["random"].caught <= spent["random"].caught_range[1]
    # the paired learning test: the rest of the pool, by the final estimator and by the cold start
    for r in spent.values():
        assert r.n_unlabelled == pool.size - r.labels
    ignored, ours = spent["labels_ignored"], spent["pivottrace"]
    assert ignored.auroc_unlabelled == ignored.auroc_unlabelled_cold  # nothing learned, nothing gained
    assert ours.auroc_unlabelled != ours.auroc_unlabelled_cold  # the posterior moved the ranking
    # the caught sets behind the paired test: exactly the wrong majorities each strategy labelled
    wrong_ids = {pid for pid, w in zip([r["problem_id"] for r in pool.rows], pool.wrong) if w}
    for r in spent.values():
        if r.caught_ids is not None:
            assert len(r.caught_ids) == r.caught and set(r.caught_ids) <= wrong_ids
    assert spent["random"].caught_ids is None  # a mean over seeds has no one caught set
    # the rounds behind the first-round ceiling: every label once, round by round, the first before any label
    wrong_of = dict(zip([r["problem_id"] for r in pool.rows], pool.wrong))
    for r in spent.values():
        if r.picked_rounds is None:
            continue
        flat = [pid for rnd in r.picked_rounds for pid in rnd]
        assert len(flat) == len(set(flat)) == r.labels and len(r.picked_rounds) == r.rounds
        assert set(r.caught_ids) == {pid for pid in flat if wrong_of[pid]}
        assert r.first_round_caught == sum(wrong_of[pid] for pid in r.picked_rounds[0])
    assert spent["random"].picked_rounds is None and spent["random"].hindsight_caught is None
    assert spent["labels_ignored"].hindsight_caught is None  # it ignores labels: no hindsight to speak of
    # hindsight keeps the first round and then picks by the estimator that saw every answer
    first = spent["pivottrace"].first_round_caught
    later = spent["pivottrace"].labels - len(spent["pivottrace"].picked_rounds[0])
    assert first <= spent["pivottrace"].hindsight_caught <= first + later


def test_a_shortfall_in_caught_wrong_majorities_is_tested_for_chance():
    from pivottrace import report
    from pivottrace.metrics import paired_catch_test

    same = paired_catch_test(["a", "b"], ["b", "a"])
    assert same == {"only_a": 0, "only_b": 0, "p_value": 1.0}
    lopsided = paired_catch_test([], [f"p{i}" for i in range(10)])  # ten problems only B caught
    assert lopsided["only_b"] == 10 and lopsided["p_value"] == pytest.approx(2 * 0.5 ** 10)

    def row(strategy, caught_ids):
        return {"strategy": strategy, "budget": 20, "budget_share": 0.2, "caught": len(caught_ids),
                "caught_ids": caught_ids, "auroc": 0.7, "self_train": 0, "self_train_precision": None,
                "leaked": 0}

    shared = [f"s{i}" for i in range(30)]
    clear = report.summary_lines([row("pivottrace", shared), row("confidence_only", shared + [f"c{i}" for i in range(12)]),
                                  row("vote_share_only", shared)])
    close = report.summary_lines([row("pivottrace", shared + ["x1", "x2"]),
                                  row("confidence_only", shared + ["c1", "c2", "c3"]), row("vote_share_only", shared)])
    caught_line = next(line for line in clear if line.startswith("- Wrong majorities caught vs the best"))
    assert "fewer at 20% (30 vs 42 `confidence_only`" in caught_line and ": significant)" in caught_line
    caught_line = next(line for line in close if line.startswith("- Wrong majorities caught vs the best"))
    assert "(32 vs 33 `confidence_only`" in caught_line and "within chance" in caught_line
    assert "first round" not in caught_line  # rounds not recorded (an older report): no ceiling claimed

    # with the rounds: the first round (picked before any label) caps what learning could have done
    def rounds(first_caught, hindsight):
        return {"picked_rounds": [[f"r{i}" for i in range(10)]], "first_round_caught": first_caught,
                "hindsight_caught": hindsight}

    against = [row("confidence_only", shared + [f"c{i}" for i in range(12)]), row("vote_share_only", shared)]
    capped = report.summary_lines([row("pivottrace", shared) | rounds(1, 41)] + against)
    caught_line = next(line for line in capped if line.startswith("- Wrong majorities caught vs the best"))
    assert "the first round's 10 picks, made before any label, caught 1" in caught_line
    assert "41 in all: still fewer, so the gap is the cold start's" in caught_line  # 41 < 42
    open_gap = report.summary_lines([row("pivottrace", shared) | rounds(1, 42)] + against)
    caught_line = next(line for line in open_gap if line.startswith("- Wrong majorities caught vs the best"))
    assert "42 in all: learning taken to its limit would have closed the gap" in caught_line


def test_the_report_warns_loudly_when_a_pool_has_too_few_right_answers():
    from pivottrace import report

    lines = report.warning_lines({"size": 200, "wrong": 198})
    assert any("WARNING: only 2 of 200 majority answers are right" in line for line in lines)
    assert report.warning_lines({"size": 200, "wrong": 100}) == []


def test_oracle_labels_follow_the_gold_answers(synthetic_db_path):
    pool = evaluate.load_pool(store.open_db(synthetic_db_path))
    everything = evaluate.play(pool, evaluate.strategies()[0], pool.size, rounds=2)
    assert everything.labels == pool.size and everything.caught == everything.wrong_total
    assert everything.leaked == 0 and everything.train_precision == 1.0


def test_load_report_round_trip_and_a_missing_report(synthetic_db_path, tmp_path):
    pool = evaluate.load_pool(store.open_db(synthetic_db_path))
    config = evaluate.EvalConfig(budgets=(0.1,), rounds=1, strategies=("pivottrace", "random"), png=False)
    written = evaluate.write_report(pool, evaluate.run(pool, config=config), tmp_path / "r", config=config)
    loaded = evaluate.load_report(tmp_path / "r")
    assert loaded.results == json.loads(json.dumps(written.results))
    assert set(loaded.figures) == set(FIGURE_TITLES)
    assert loaded.markdown == written.markdown and loaded.png_error == "PNG export switched off"
    with pytest.raises(evaluate.EvaluationError, match="No evaluation report"):
        evaluate.load_report(tmp_path / "nowhere")


def test_model_text_is_escaped_in_the_report(tmp_path):
    rows = [{"problem_id": f"p{i}", "model_id": "<script>x</script>", "majority_answer": "1",
             "vote_share": 1.0 if i % 2 else 0.5} for i in range(12)]
    pool = evaluate.pool_from_rows(rows, {f"p{i}": "1" if i % 3 else "2" for i in range(12)},
                                   model_id="<script>x</script>")
    config = evaluate.EvalConfig(budgets=(0.5,), rounds=1, strategies=("pivottrace",), png=False)
    report = evaluate.write_report(pool, evaluate.run(pool, config=config), tmp_path / "x", config=config)
    html = (tmp_path / "x" / "report.html").read_text()
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert "<script>x</script>" not in report.markdown


def test_cli_eval_writes_a_report_and_rejects_bad_input(synthetic_db_path, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["eval", "--db", str(synthetic_db_path), "--out", str(out), "--budgets", "10,20",
                                 "--rounds", "2", "--strategies", "pivottrace,random", "--no-png"])
    assert result.exit_code == 0, result.output
    assert "Evaluated 120 problems" in result.output and (out / "report.md").is_file()
    bad = runner.invoke(app, ["eval", "--db", str(synthetic_db_path), "--out", str(out), "--budgets", "ten"])
    assert bad.exit_code == 1 and "--budgets takes percentages" in bad.output
    unknown = runner.invoke(app, ["eval", "--db", str(synthetic_db_path), "--out", str(out),
                                  "--strategies", "magic", "--no-png"])
    assert unknown.exit_code == 1 and "Unknown strategies" in unknown.output
    store.open_db(tmp_path / "empty.db")  # a missing --db is its own error (test_storage_errors)
    empty = runner.invoke(app, ["eval", "--db", str(tmp_path / "empty.db"), "--out", str(out)])
    assert empty.exit_code == 1 and "Nothing is traced yet" in empty.output


def test_eval_rereads_answers_stored_by_an_older_extraction(tmp_path):
    """The evaluation judges the completions' answers as read now, not as stored at trace time."""
    db = store.open_db(tmp_path / "old.db")
    problems = demo_problems(12, seed=5)
    store.insert_problems(db, problems)
    store.upsert_model(db, "synth", spec="synthetic", n_layers=6)
    rng = np.random.default_rng(5)
    for p in problems:
        result = synthetic_trace(p, rng, n_layers=6)
        gold = p.gold.split("####")[-1].strip()
        result.trace.completion = f"Answer: 0 + {gold} = {gold} items."
        result.trace.answer = "0"  # what the old first-number reading stored
        result.samples = [result.trace.completion] * len(result.samples)
        result.sample_answers = ["0"] * len(result.samples)
        store.save_trace(db, p.id, "synth", result)
    pool = evaluate.load_pool(db)
    assert pool.size == 12 and int(pool.wrong.sum()) == 0  # every majority is the gold, read as the result
    assert store.sample_answers(db, problems[0].id, "synth")[0] == "0"  # read-only: nothing was rewritten


def feature_pool(n: int, wrong: np.ndarray, seed: int = 0) -> evaluate.EvalPool:
    """An EvalPool of random feature rows (every signal independent) with the given truth."""
    from tests.test_posterior import pool as feature_rows

    return evaluate.EvalPool(rows=feature_rows(n, seed), wrong=np.asarray(wrong, dtype=int), model_id="m")


def test_no_problem_is_scored_by_a_model_that_saw_its_label():
    """Flip one labelled problem's outcome: its own out-of-fold score must not move (its fold's
    model never saw it), while problems in other folds are scored by models that did."""
    rng = np.random.default_rng(0)
    pool = feature_pool(200, rng.random(200) < 0.5)
    table = evaluate.FeatureTable.from_rows(pool.rows)
    labelled = rng.choice(200, size=80, replace=False)
    outcomes = {table.ids[i]: int(pool.wrong[i]) for i in labelled}
    ours = evaluate.strategies()[0]
    before, auroc = evaluate._out_of_sample(table, outcomes, ours, pool.wrong)
    target = table.ids[labelled[0]]
    flipped = dict(outcomes, **{target: 1 - outcomes[target]})
    after, _ = evaluate._out_of_sample(table, flipped, ours, pool.wrong)
    assert after[labelled[0]] == pytest.approx(before[labelled[0]], abs=1e-12)
    assert np.abs(after - before).max() > 1e-4  # the other folds' models did learn from it
    folds = evaluate.pool_folds(pool.wrong)
    assert sorted(np.concatenate(folds).tolist()) == list(range(200))  # a partition of the pool
    assert auroc is not None and 0.0 <= auroc <= 1.0


def test_learning_headroom_finds_a_learnable_signal_and_nothing_in_noise():
    """Outcomes that follow the chain's length (a signal the prior weights lightly) leave room to
    learn: random labels lift the AUROC well past its standard error. Coin-flip outcomes leave none."""
    rows = feature_pool(300, np.zeros(300)).rows
    length = np.array([r["length"] for r in rows])
    rng = np.random.default_rng(1)
    follows = rng.random(300) < 1 / (1 + np.exp(-(length - length.mean()) / 25))
    learnable = evaluate.learning_headroom(feature_pool(300, follows), repeats=2)
    for share in ("0.3", "1"):
        entry = learnable["shares"][share]
        assert entry["gain"] > max(0.05, 3 * entry["gain_se"])
        assert entry["auroc"] == pytest.approx(entry["auroc_cold"] + entry["gain"])
    assert learnable["shares"]["1"]["labels"] == 240  # every label outside the fold
    noise = evaluate.learning_headroom(feature_pool(300, rng.random(300) < 0.5), repeats=2)
    assert abs(noise["shares"]["1"]["auroc"] - 0.5) < 0.1
    assert evaluate.learning_headroom(feature_pool(300, np.ones(300))) == {}  # one outcome: nothing to say


def test_hindsight_follows_the_first_round_with_the_estimator_that_saw_every_answer():
    rng = np.random.default_rng(3)
    n = 120
    wrong = (np.arange(n) % 3 == 0).astype(int)  # [N] 40 wrong majorities
    # token confidence separates them perfectly; the vote misleads (the wrong majorities are unanimous),
    # so the cold start ranks them last and only an estimator that saw the answers puts them first
    logprob = np.where(wrong == 1, -2.0, -0.5) + rng.normal(0.0, 0.05, n)  # [N]
    share = np.where(wrong == 1, 1.0, rng.choice([0.4, 0.6], size=n))  # [N]
    rows = [{"problem_id": f"p{i:03d}", "model_id": "m", "majority_answer": "7",
             "vote_share": float(share[i]), "mean_logprob": float(logprob[i])} for i in range(n)]
    table = evaluate.FeatureTable.from_rows(rows)
    ours = evaluate.strategies()[0]
    right_first = [["p001", "p002", "p004"], [f"p{i:03d}" for i in range(5, 17)]]  # 3 right, then 12 more
    assert evaluate.hindsight_caught(table, wrong, ours, right_first) == 12  # every later pick is wrong
    wrong_first = [["p000", "p003", "p006"], [f"p{i:03d}" for i in range(7, 19)]]
    assert evaluate.hindsight_caught(table, wrong, ours, wrong_first) == 15
    ignoring = next(s for s in evaluate.strategies() if not s.learn)
    assert evaluate.hindsight_caught(table, wrong, ignoring, right_first) is None


def test_the_catch_bound_bench_replays_the_rounds_it_reports(synthetic_db_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("catch_bound", Path(__file__).parents[1] / "bench" / "catch_bound.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pool = evaluate.load_pool(store.open_db(synthetic_db_path))
    wrong = dict(zip([r["problem_id"] for r in pool.rows], pool.wrong))
    chosen = {s.name: s for s in evaluate.strategies()}
    budget = int(round(0.3 * pool.size))
    ours, confident = (evaluate.play(pool, chosen[name], budget) for name in ("pivottrace", "confidence_only"))
    # switching after no round at all is the baseline itself; after every round, PivotTrace itself
    assert bench.switched(ours, confident, 0, wrong) == confident.caught
    assert bench.switched(ours, confident, len(ours.picked_rounds), wrong) == ours.caught
    mixed = bench.mixed_start(ours.picked_rounds, confident.picked_rounds)
    assert len(mixed[0]) == len(set(mixed[0])) == len(ours.picked_rounds[0]) and mixed[1:] == ours.picked_rounds[1:]
    assert set(mixed[0]) <= set(ours.picked_rounds[0]) | set(confident.picked_rounds[0])
    [header, rule, row] = bench.budget_table(pool, (0.3,))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == str(ours.caught) and cells[5].split()[0] == str(ours.hindsight_caught)
    assert len(cells) == header.count("|") - 1 == rule.count("|") - 1
    table = bench.label_free_table(pool)
    assert table[2].startswith("| vote_share | +1.00 |")  # the vote agrees with itself
