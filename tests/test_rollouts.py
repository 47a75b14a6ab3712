"""Rollouts sampled elsewhere: reading verl / vLLM / TRL / generic files, matching them to problems,
and the whole path from a verl rollout dump to an exported training set."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import OPERATOR

from pivottrace import pipeline, store, views
from pivottrace.cli import app
from pivottrace.datasets import LoadResult, Problem, PoolFormatError, demo_problems, problem_id
from pivottrace.rollouts import (ColumnOptions, RolloutGroup, match_groups, model_id_for, question_text,
                                 read_rollouts)

QWEN_STRIPPED = ("system\nYou are a helpful assistant.\nuser\n{q} Let's think step by step and output the final "
                 "answer after \"####\".\nassistant\n")  # what verl's dump holds: special tokens skipped


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_verl_dump_groups_k_samples_per_prompt_and_reports_bad_rows_by_line(tmp_path):
    a, b = QWEN_STRIPPED.format(q="What is 2 + 3?"), QWEN_STRIPPED.format(q="What is 7 - 4?")
    path = write_jsonl(tmp_path / "12.jsonl", [
        {"input": a, "output": "2 + 3 = 5. #### 5", "score": 1.0, "step": 12},
        {"input": b, "output": "7 - 4 = 3. #### 3", "score": 1.0, "step": 12},
        "{not json",
        {"input": a, "output": "2 + 3 = 6. #### 6", "score": 0.0, "step": 12},
        {"input": a, "score": 0.0, "step": 12},
        {"input": b, "output": "#### 4", "score": "high", "step": 12},
        {"input": a, "output": "#### 5", "score": 1.0, "step": 12, "acc": True},
    ])
    loaded = read_rollouts(path, fmt="verl")
    assert [(r.line, r.reason.split(":")[0]) for r in loaded.rejected] == [
        (3, "bad JSON"), (5, "missing field 'output'"), (6, "field 'score' is not a number")]
    assert loaded.rows == 4
    groups = {g.question: g for g in loaded.groups}
    first = groups["What is 2 + 3? Let's think step by step and output the final answer after \"####\"."]
    assert first.completions == ["2 + 3 = 5. #### 5", "2 + 3 = 6. #### 6", "#### 5"]
    assert first.scores == [1.0, 0.0, 1.0] and first.lines == [1, 4, 7] and first.step == 12
    assert first.prompt == a  # analysed with the prompt the model saw


def test_step_comes_from_the_file_name_when_rows_have_none(tmp_path):
    path = write_jsonl(tmp_path / "40.jsonl", [{"input": "user\nWhat is 1 + 1?\nassistant\n", "output": "2"}])
    assert read_rollouts(path, fmt="verl").groups[0].step == 40
    other = write_jsonl(tmp_path / "rollouts_v2.jsonl", [{"prompt": "What is 1 + 1?", "completion": "2"}])
    assert read_rollouts(other, fmt="jsonl").groups[0].step is None  # no step guessed from a generic name
    assert model_id_for("org/policy", 40) == "org/policy@step40"
    assert model_id_for("org/policy", None) == "org/policy"


def test_vllm_rows_hold_a_prompt_and_n_completions(tmp_path):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 6 * 7?"}]
    path = write_jsonl(tmp_path / "vllm.jsonl", [
        {"messages": messages, "n": 2, "choices": [{"message": {"content": "42"}}, {"message": {"content": "41"}}]},
        {"prompt": "Q: What is 9 + 1?\nA:", "outputs": [{"text": " 10"}, {"text": " 11"}, " 10"]},
        {"prompt": "Q: 1?", "n": 3, "outputs": ["1"]},
        {"prompt": "Q: 2?", "outputs": []},
        {"prompt": "Q: 3?", "outputs": [{"logprobs": None}]},
        {"prompt": "system\nBe brief.\nuser\n \nassistant\n", "outputs": ["a", "b"]},
    ])
    loaded = read_rollouts(path, fmt="vllm")
    assert [g.completions for g in loaded.groups] == [["42", "41"], [" 10", " 11", " 10"]]
    assert loaded.groups[0].prompt == messages and loaded.groups[0].question == "What is 6 * 7?"
    assert [r.line for r in loaded.rejected] == [3, 4, 5, 6]
    assert loaded.rejected[-1].reason == "no problem text in the prompt"
    assert "n is 3 but the row holds 1" in loaded.rejected[0].reason


def test_trl_completion_log_parquet_sums_its_reward_columns(tmp_path):
    prompt = "<|im_start|>user\nWhat is 5 + 5?<|im_end|>\n<|im_start|>assistant\n"
    path = tmp_path / "completions_00007.parquet"
    pd.DataFrame({"step": [7, 7], "prompt": [prompt, prompt], "completion": ["10", "11"],
                  "accuracy_reward": [1.0, 0.0], "format_reward": [0.5, 0.5],
                  "advantage": [0.7, -0.7]}).to_parquet(path)
    (group,) = read_rollouts(path, fmt="trl").groups
    assert group.question == "What is 5 + 5?" and group.step == 7
    assert group.completions == ["10", "11"] and group.scores == [1.5, 0.5]


def test_generic_jsonl_reads_the_named_columns(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"pid": "abc", "q": "What is 3 + 3?", "a": "6", "reward": 1},
        {"q": "What is 3 + 3?", "a": "7"},
    ])
    columns = ColumnOptions(prompt="q", completion="a", problem_id="pid", score="reward", step=None)
    loaded = read_rollouts(path, fmt="jsonl", columns=columns)
    assert loaded.groups[0].id_hint == "abc" and loaded.groups[0].completions == ["6"]
    assert [(r.line, r.reason) for r in loaded.rejected] == [(2, "missing field 'pid'")]
    with pytest.raises(PoolFormatError, match="Unknown rollout format"):
        read_rollouts(path, fmt="openrlhf")


def test_question_text_finds_the_last_user_turn():
    assert question_text(QWEN_STRIPPED.format(q="Tom has 3 apples.")).startswith("Tom has 3 apples.")
    llama = "system\n\nCutting Knowledge Date: December 2023\n\nuser\n\nHow many legs?assistant\n\n"
    assert question_text(llama) == "How many legs?"
    assert question_text("Just a plain prompt.") == "Just a plain prompt."


def test_prompts_match_stored_problems_by_id_then_text_then_containment():
    problems = [{"id": "p1", "text": "Ava has 3 apples. How many?"},
                {"id": "p2", "text": "Ben has  5 cards.\nHow many cards?"},
                {"id": "p3", "text": "Cara has 2 pens."}]
    groups = [RolloutGroup(prompt="x", question="anything", step=1, id_hint="p3"),
              RolloutGroup(prompt="user\nben has 5 cards. how many cards?\nassistant\n",
                           question="ben has 5 cards. how many cards?", step=1),
              RolloutGroup(prompt="Solve: Ava has 3 apples. How many? Think step by step.",
                           question="Solve: Ava has 3 apples. How many? Think step by step.", step=1),
              RolloutGroup(prompt="Dan has 9 hats.", question="Dan has 9 hats.", step=1)]
    match_groups(groups, problems)
    assert [(g.problem_id, g.matched_by) for g in groups] == [
        ("p3", "id"), ("p2", "text"), ("p1", "contained"), (None, None)]


def _verl_rows(tracer, problems, *, k, step):
    """What verl's rollout dump holds for `problems`: prompts decoded without special tokens, K samples each."""
    rows = []
    for problem, samples in zip(problems, tracer.sample([p.text for p in problems], k)):
        prompt = tracer._prompts([problem.text])[0]
        decoded = tracer.tokenizer.decode(tracer.tokenizer(prompt, add_special_tokens=False)["input_ids"],
                                          skip_special_tokens=True)
        rows += [{"input": decoded, "output": text, "score": 0.0, "step": step} for text in samples]
    return rows


def test_verl_rollouts_imported_analysed_routed_labelled_in_the_app_and_exported(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """Done-when of issue 14, from a file written here with the tiny model."""
    from streamlit.testing.v1 import AppTest

    from pivottrace.trace import TraceConfig, Tracer

    db_path = tmp_path / "pool.db"
    db = store.open_db(db_path)
    pool = demo_problems(4, seed=3)
    pipeline.ingest_loaded(db, LoadResult(pool, []))
    store.add_user(db, "lee", "lead", by=OPERATOR)
    store.add_user(db, "ann", "annotator", by=OPERATOR)
    store.set_budget(db, user="lee", total=5)
    outsider = Problem(problem_id("Zoe has 4 kites. She buys 2 more. How many kites?"),
                       "Zoe has 4 kites. She buys 2 more. How many kites?", "x")
    tracer = Tracer(str(tiny_model_dir), config=TraceConfig(max_new_tokens=16, dtype="float32"))
    rows = _verl_rows(tracer, pool[:3] + [outsider], k=3, step=7)
    rollout_file = write_jsonl(tmp_path / "7.jsonl", rows + ["{broken"])

    runner = CliRunner()
    result = runner.invoke(app, ["import-rollouts", str(rollout_file), "--format", "verl",
                                 "--checkpoint", str(tiny_model_dir), "--db", str(db_path)])
    assert result.exit_code == 2, result.output  # a bad row: reported, the rest loaded
    assert "line 13: bad JSON" in result.output
    assert "Matched problems: 3 by contained; new problems: 1." in result.output
    model_id = f"{tiny_model_dir.resolve()}@step7"
    assert store.rollout_models(db) == [model_id] and db["rollouts"].count == 12
    again = runner.invoke(app, ["import-rollouts", str(rollout_file), "--format", "verl",
                                "--checkpoint", str(tiny_model_dir), "--db", str(db_path)])
    assert "stored 0" in again.output and db["rollouts"].count == 12  # re-import adds nothing

    result = runner.invoke(app, ["analyse", "--device", "cpu", "--dtype", "float32", "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    traces = list(db.query("select problem_id, model_id, completion, prompt from traces"))
    assert len(traces) == 4 and {t["model_id"] for t in traces} == {model_id}
    first_of = {}
    for row in rows:
        first_of.setdefault(row["input"], row)
    assert {t["completion"] for t in traces} == {r["output"] for r in first_of.values()}
    rendered = {tracer._prompts([p.text])[0] for p in pool[:3] + [outsider]}
    assert {t["prompt"] for t in traces} == rendered  # the prompt the model saw, special tokens restored
    assert db["samples"].count == 4 * 2  # the other K-1 completions vote
    assert db["routes"].count == 4 and db["features"].count == 4
    assert runner.invoke(app, ["analyse", "--db", str(db_path)]).output.strip().endswith("nothing left to analyse.")

    monkeypatch.setenv("PIVOTTRACE_DB", str(db_path))
    item = store.next_item(db, "ann")
    assert item is not None, store.route_counts(db)
    at = AppTest.from_file(str(pytest.importorskip("pathlib").Path(__file__).parent.parent / "pages/annotate.py"),
                           default_timeout=120)
    from test_app_pages import session_token

    at.session_state[views.SESSION_KEY] = session_token("ann")  # signed in as ann
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    shown = store.next_item(db, "ann")["problem_id"]
    at.text_input(key=f"gold-{shown}").input("42")
    at.button(key="wrong").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [(r["problem_id"], r["verdict"]) for r in store.effective_labels(db)] == [(shown, "wrong")]

    out = tmp_path / "train.parquet"
    result = runner.invoke(app, ["export", "--format", "verl", "--out", str(out), "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    exported = pd.read_parquet(out)
    assert "42" in json.dumps(exported.to_dict(orient="records"), default=str)


def test_imported_chains_get_the_same_statistics_as_our_own_trace(tmp_path, tiny_model_dir):
    """A TRL log keeps the rendered prompt (special tokens included): analysing its chains gives what
    tracing them here gave, array for array."""
    from pivottrace.trace import TraceConfig, Tracer

    tracer = Tracer(str(tiny_model_dir), config=TraceConfig(n_samples=2, max_new_tokens=16, dtype="float32"))
    pool = demo_problems(3, seed=8)
    traced_db = store.open_db(tmp_path / "traced.db")
    pipeline.ingest_loaded(traced_db, LoadResult(pool, []))
    pipeline.trace_pool(traced_db, tracer, show_progress=False)
    rows = []
    for p in pool:
        own = store.load_trace(traced_db, p.id)
        samples = [r["completion"] for r in traced_db.query(
            "select completion from samples where problem_id = ? order by idx", [p.id])]
        rows += [{"step": 2, "prompt": own["prompt"], "completion": c, "reward": 0.0}
                 for c in [own["completion"]] + samples]
    log = tmp_path / "completions_00002.parquet"
    pd.DataFrame(rows).to_parquet(log)

    db = store.open_db(tmp_path / "imported.db")
    pipeline.ingest_loaded(db, LoadResult(pool, []))
    report = pipeline.import_rollouts(db, log, fmt="trl", checkpoint=str(tiny_model_dir))
    assert report.matched == {"contained": 3} and not report.new_problems
    pipeline.analyse_pool(db, tracer, model_id=report.model_ids[0], show_progress=False)
    for p in pool:
        own, imported = store.load_trace(traced_db, p.id), store.load_trace(db, p.id)
        assert imported["prompt"] == own["prompt"] and imported["steps"] == own["steps"]
        for key, array in own["arrays"].items():
            np.testing.assert_allclose(imported["arrays"][key], array, atol=1e-5, rtol=0, err_msg=key)
    assert store.all_sample_answers(db, report.model_ids[0]) == {
        (pid, report.model_ids[0]): answers for (pid, _), answers in store.all_sample_answers(traced_db).items()}


def test_a_verl_prompt_gets_its_special_tokens_back_only_when_the_template_proves_them(tiny_model_dir):
    from transformers import AutoTokenizer

    from pivottrace.rollouts import restore_chat_prompt
    from pivottrace.trace import PROMPT_EXAMPLES, build_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = build_prompt(tokenizer, "Tom has 3 apples. He eats one. How many?", examples=PROMPT_EXAMPLES)
    stripped = tokenizer.decode(tokenizer(prompt, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    assert "<|im_start|>" in prompt and "<|im_start|>" not in stripped
    assert restore_chat_prompt(stripped, tokenizer) == prompt
    assert restore_chat_prompt("Q: What is 2 + 2?\nA:", tokenizer) is None
    other_system = stripped.replace("named SmolLM", "named Bob")  # renders fine, but is not what it was
    assert restore_chat_prompt(other_system, tokenizer) in (None, prompt.replace("named SmolLM", "named Bob"))
    llama_style = "system\n\nBe brief.user\n\nWhat is 2 + 2?assistant\n\n"
    assert restore_chat_prompt(llama_style, tokenizer) is None
