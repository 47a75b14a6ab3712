"""Export: verl / TRL / OpenRLHF files read back with pandas and pyarrow, selection, splits, errors."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pivottrace import pipeline, store
from pivottrace.cli import app
from pivottrace.datasets import demo_problems
from pivottrace.export import (DEFAULT_INSTRUCTION, VERL_DEFAULT_DATA_SOURCE, ExportError, ExportOptions,
                               export, select_examples, split_of, verl_warnings)
from pivottrace.rewards import math_reward
from pivottrace.synthetic import synthetic_trace

HIDDEN_GOLD = "HIDDEN-GOLD-MUST-NOT-LEAK"


@pytest.fixture
def labelled_db(tmp_path):
    """A routed pool of 60 problems with three labels in force (correct, wrong, flawed) and one undone."""
    db = store.open_db(tmp_path / "e.db")
    problems = demo_problems(60, seed=3)
    store.insert_problems(db, problems)
    rng = np.random.default_rng(3)
    for p in problems:
        store.save_trace(db, p.id, "synth", synthetic_trace(p, rng))
    db.execute("update problems set gold = ?", [HIDDEN_GOLD])  # export must never read it
    store.add_user(db, "lee", "lead", by=store.LocalOperator("tests"))
    store.add_user(db, "ann", "annotator", by=store.LocalOperator("tests"))
    store.add_user(db, "bob", "annotator", by=store.LocalOperator("tests"))
    store.set_budget(db, user="lee", total=8)
    pipeline.route(db)  # features and a router version; then routes fixed here, so that these
    # tests check the export whatever route.py decides: 10 annotate, the rest in three routes
    version = db.execute("select max(id) from router_versions").fetchone()[0]
    cycle = ("self_train", "low_priority", "deferred", "self_train")
    store.save_routes(db, [
        {"problem_id": row["problem_id"], "model_id": "synth",
         "route": "annotate" if i < 10 else cycle[i % 4], "uncertainty": 0.5, "value": 1.0 - i / 100}
        for i, row in enumerate(store.load_features(db, "synth"))], version)
    ids, majority = [], None
    for verdict, gold in (("correct", None), ("wrong", "42"), ("flawed", None), ("wrong", "7")):
        item = store.next_item(db, "ann")
        ids.append(item["problem_id"])
        shown = item["features"]["majority_answer"]
        majority = majority or shown
        store.save_label(db, problem_id=item["problem_id"], annotator="ann", verdict=verdict,
                         gold_answer=gold, shown_answer=shown)
    assert majority is not None and len(set(ids)) == 4
    store.undo_last_label(db, "ann")  # ids[3] goes back to the queue: not exported
    db.labelled = {"correct": ids[0], "wrong": ids[1], "flawed": ids[2], "undone": ids[3],
                   "majority": majority}
    return db


def features_of(db, problem_id):
    return db.execute("select f.majority_answer, f.vote_share from features f join routes r "
                      "on r.problem_id = f.problem_id and r.model_id = f.model_id "
                      "where f.problem_id = ?", [problem_id]).fetchone()


def self_train_ids(db, routes=("self_train",)):
    marks = ", ".join("?" for _ in routes)
    return {r[0] for r in db.execute(
        f"select r.problem_id from routes r join features f on f.problem_id = r.problem_id "
        f"and f.model_id = r.model_id join problems p on p.id = r.problem_id where r.route in ({marks}) "
        "and f.majority_answer is not null and p.verdict is null", list(routes))}


# --------------------------------------------------------------------------- verl

def test_verl_parquet_matches_gsm8k_preprocessing(labelled_db, tmp_path):
    db, labels = labelled_db, labelled_db.labelled
    result = export(db, fmt="verl", out=tmp_path / "train.parquet")
    table = pq.read_table(tmp_path / "train.parquet")
    assert table.column_names == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert table.schema.field("prompt").type == pa.list_(pa.struct([("role", pa.string()),
                                                                    ("content", pa.string())]))
    assert table.schema.field("reward_model").type == pa.struct([("style", pa.string()),
                                                                 ("ground_truth", pa.string())])
    extra = table.schema.field("extra_info").type
    assert [extra.field(i).name for i in range(extra.num_fields)] == [
        "split", "index", "question", "label_source", "vote_share", "router_version",
        "problem_id", "source", "route", "model_id"]
    assert extra.field("index").type == pa.int64() and extra.field("vote_share").type == pa.float64()

    frame = pd.read_parquet(tmp_path / "train.parquet")
    rows = {row["extra_info"]["problem_id"]: row for row in frame.to_dict("records")}
    expected = self_train_ids(db) | {labels["correct"], labels["wrong"]}
    assert set(rows) == expected and result.rows == {"train": len(expected)}
    assert labels["flawed"] not in rows and labels["undone"] not in rows

    wrong = rows[labels["wrong"]]
    text = store.get_problem(db, labels["wrong"])["text"]
    # verl's default_compute_score routes this data_source to its \\boxed{} scorer; the pool's name stays
    assert wrong["data_source"] == VERL_DEFAULT_DATA_SOURCE and wrong["ability"] == "math"
    assert wrong["extra_info"]["source"] == "demo"
    assert list(wrong["prompt"]) == [{"role": "user", "content": f"{text} {DEFAULT_INSTRUCTION}"}]
    assert wrong["reward_model"] == {"style": "rule", "ground_truth": "42"}
    info = wrong["extra_info"]
    assert info["split"] == "train" and info["question"] == text
    assert info["label_source"] == "human" and info["vote_share"] is None
    assert info["route"] == "annotate" and info["router_version"] == result.router_version

    assert rows[labels["correct"]]["reward_model"]["ground_truth"] == labels["majority"]
    pseudo_id = sorted(self_train_ids(db))[0]
    majority, share = features_of(db, pseudo_id)
    pseudo = rows[pseudo_id]
    assert pseudo["reward_model"]["ground_truth"] == majority
    assert pseudo["extra_info"]["label_source"] == "majority_vote"
    assert pseudo["extra_info"]["vote_share"] == pytest.approx(share)
    assert sorted(r["extra_info"]["index"] for r in rows.values()) == list(range(len(rows)))
    assert result.label_sources == {"human": 2, "majority_vote": len(expected) - 2}
    assert result.skipped.get("flagged flawed by an annotator") == 1


def test_low_priority_and_deferred_only_when_asked(labelled_db, tmp_path):
    db = labelled_db
    both = ("self_train", "low_priority", "deferred")
    extra = self_train_ids(db, ("low_priority", "deferred"))
    assert extra, "the fixture pool should have low_priority or deferred problems"
    default = {e.problem_id for e in select_examples(db)[0]}
    assert not default & extra
    wider, _ = select_examples(db, include_low_priority=True, include_deferred=True)
    pseudo = {e.problem_id for e in wider if e.label_source == "majority_vote"}
    assert pseudo == self_train_ids(db, both)


def test_hidden_gold_never_reaches_a_file(labelled_db, tmp_path):
    options = ExportOptions(include_low_priority=True, include_deferred=True)
    for fmt, name in (("verl", "v.parquet"), ("trl", "t.jsonl"), ("openrlhf", "o.jsonl")):
        export(labelled_db, fmt=fmt, out=tmp_path / name, options=options)
        assert HIDDEN_GOLD.encode() not in (tmp_path / name).read_bytes()


# --------------------------------------------------------------------------- TRL and OpenRLHF

def test_trl_jsonl_and_parquet_agree_and_feed_the_reward(labelled_db, tmp_path):
    db, labels = labelled_db, labelled_db.labelled
    export(db, fmt="trl", out=tmp_path / "t.jsonl")
    export(db, fmt="trl", out=tmp_path / "t.parquet")
    columns = ["prompt", "solution", "label_source", "vote_share", "problem_id"]
    lines = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text("utf-8").splitlines()]
    assert all(list(line) == columns for line in lines)
    table = pq.read_table(tmp_path / "t.parquet")
    assert table.column_names == columns
    assert table.schema.field("vote_share").type == pa.float64()
    assert table.to_pylist() == lines

    frame = pd.read_json(tmp_path / "t.jsonl", lines=True, dtype={"solution": str})
    by_id = frame.set_index("problem_id")
    assert by_id.loc[labels["wrong"], "solution"] == "42"
    assert by_id.loc[labels["wrong"], "label_source"] == "human"
    text = store.get_problem(db, labels["wrong"])["text"]
    assert by_id.loc[labels["wrong"], "prompt"] == [{"role": "user", "content": f"{text} {DEFAULT_INSTRUCTION}"}]

    # GRPOTrainer hands the other columns to reward functions as keyword arguments
    batch = table.to_pylist()
    kwargs = {name: [row[name] for row in batch] for name in ("label_source", "vote_share", "problem_id")}
    right = [[{"role": "assistant", "content": f"So it is \\boxed{{{row['solution']}}}."}] for row in batch]
    off = [[{"role": "assistant", "content": "So it is \\boxed{-99999}."}] for row in batch]
    solutions = [row["solution"] for row in batch]
    assert math_reward(right, solutions, **kwargs) == [1.0] * len(batch)
    assert math_reward(off, solutions, **kwargs) == [0.0] * len(batch)


def test_openrlhf_jsonl_uses_the_named_keys(labelled_db, tmp_path):
    db, labels = labelled_db, labelled_db.labelled
    options = ExportOptions(input_key="context", label_key="answer", instruction="")
    export(db, fmt="openrlhf", out=tmp_path / "o.jsonl", options=options)
    table = pa_json.read_json(tmp_path / "o.jsonl")
    assert table.column_names == ["context", "answer", "datasource", "label_source", "vote_share", "problem_id"]
    rows = {r["problem_id"]: r for r in table.to_pylist()}
    assert rows[labels["wrong"]]["context"] == store.get_problem(db, labels["wrong"])["text"]
    assert rows[labels["wrong"]]["answer"] == "42"
    assert rows[labels["correct"]]["answer"] == labels["majority"]
    frame = pd.read_json(tmp_path / "o.jsonl", lines=True, dtype={"answer": str})
    assert len(frame) == len(rows) and set(frame["label_source"]) == {"human", "majority_vote"}
    assert set(frame["datasource"]) == {"demo"}  # OpenRLHF's PromptDataset groups metrics by it
    named = export(db, fmt="openrlhf", out=tmp_path / "n" / "o.jsonl", options=ExportOptions(data_source="pool-a"))
    assert {r["datasource"] for r in pa_json.read_json(named.files["train"]).to_pylist()} == {"pool-a"}


# --------------------------------------------------------------------------- reproducibility

def test_exporting_twice_gives_identical_files(labelled_db, tmp_path):
    options = ExportOptions(test_fraction=0.3, seed=5)
    for fmt, name in (("verl", "v.parquet"), ("trl", "t.parquet"), ("trl", "t.jsonl"),
                      ("openrlhf", "o.jsonl")):
        first = export(labelled_db, fmt=fmt, out=tmp_path / "a" / name, options=options)
        again = export(store.open_db(labelled_db.conn.execute("pragma database_list").fetchone()[2]),
                       fmt=fmt, out=tmp_path / "b" / name, options=options)
        for split in ("train", "test"):
            assert first.files[split].read_bytes() == again.files[split].read_bytes()


def test_splits_are_seeded_disjoint_and_stable_as_the_pool_grows(labelled_db, tmp_path):
    db = labelled_db
    options = ExportOptions(test_fraction=0.3, seed=1)
    result = export(db, fmt="verl", out=tmp_path / "s.parquet", options=options)
    assert result.files["test"] == tmp_path / "s_test.parquet"
    train = pd.read_parquet(result.files["train"])
    test = pd.read_parquet(result.files["test"])
    train_ids = {info["problem_id"] for info in train["extra_info"]}
    test_ids = {info["problem_id"] for info in test["extra_info"]}
    assert not train_ids & test_ids and train_ids | test_ids == {e.problem_id for e in select_examples(db)[0]}
    assert {info["split"] for info in test["extra_info"]} == {"test"}
    assert [info["index"] for info in test["extra_info"]] == list(range(len(test)))
    every = train_ids | test_ids
    reseeded = {e for e in every if split_of(e, test_fraction=0.3, seed=2) == "test"}
    assert reseeded != test_ids  # another seed, another split

    # a larger export (one more label) keeps every earlier problem in its split
    item = store.next_item(db, "bob")
    store.save_label(db, problem_id=item["problem_id"], annotator="bob", verdict="wrong", gold_answer="3")
    grown = export(db, fmt="verl", out=tmp_path / "g.parquet", options=options)
    grown_test = {info["problem_id"] for info in pd.read_parquet(grown.files["test"])["extra_info"]}
    assert grown_test - {item["problem_id"]} == test_ids


# --------------------------------------------------------------------------- errors

def test_empty_selection_is_an_error_and_writes_nothing(tmp_path):
    db = store.open_db(tmp_path / "empty.db")
    with pytest.raises(ExportError, match="Nothing to export"):
        export(db, fmt="verl", out=tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("fmt, name, options, message", [
    ("rllib", "x.jsonl", ExportOptions(), "Unknown format"),
    ("verl", "x.jsonl", ExportOptions(), "verl takes parquet"),
    ("openrlhf", "x.parquet", ExportOptions(), "openrlhf takes jsonl"),
    ("trl", "x.txt", ExportOptions(), "Cannot tell the file type"),
    ("verl", "x.parquet", ExportOptions(test_fraction=1.0), "test fraction"),
    ("openrlhf", "x.jsonl", ExportOptions(input_key="q", label_key="q"), "both 'q'"),
    ("openrlhf", "x.jsonl", ExportOptions(label_key="problem_id"), "already a column"),
    ("openrlhf", "x.jsonl", ExportOptions(input_key="datasource"), "already a column"),
    ("trl", "card.json", ExportOptions(file_type="jsonl"), "name of the export's card"),
    ("verl", "x.parquet", ExportOptions(test_fraction=1e-9), "test split would be empty"),
])
def test_bad_options_are_clear_errors(labelled_db, tmp_path, fmt, name, options, message):
    (tmp_path / name).write_text("keep me")
    with pytest.raises(ExportError, match=message):
        export(labelled_db, fmt=fmt, out=tmp_path / name, options=options)
    assert (tmp_path / name).read_text() == "keep me"  # a failed export loses nothing


def test_a_correct_label_without_an_answer_is_named(labelled_db, tmp_path):
    db, labels = labelled_db, labelled_db.labelled
    db.execute("update labels set shown_answer = null where problem_id = ?", [labels["correct"]])
    db.execute("update features set majority_answer = null where problem_id = ?", [labels["correct"]])
    with pytest.raises(ExportError, match=labels["correct"]):
        export(db, fmt="trl", out=tmp_path / "t.jsonl")
    assert not (tmp_path / "t.jsonl").exists()


def test_cli_export_and_clean_error(labelled_db, tmp_path):
    path = labelled_db.conn.execute("pragma database_list").fetchone()[2]
    runner = CliRunner()
    done = runner.invoke(app, ["export", "--format", "openrlhf", "--out", str(tmp_path / "o.jsonl"),
                               "--input-key", "prompt", "--label-key", "gt", "--db", path])
    assert done.exit_code == 0, done.output
    assert "Wrote" in done.output and "human 2" in done.output
    assert list(json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0]))[:2] == ["prompt", "gt"]
    store.open_db(tmp_path / "empty.db")  # a missing --db is its own error (test_storage_errors)
    failed = runner.invoke(app, ["export", "--format", "verl", "--out", str(tmp_path / "x.parquet"),
                                 "--db", str(tmp_path / "empty.db")])
    assert failed.exit_code == 1
    assert "Error: Nothing to export" in failed.output and "Traceback" not in failed.output


# --------------------------------------------------------------------------- verl's scorers and the card

GSM8K_INSTRUCTION = "Let's think step by step and output the final answer after \"####\"."


@pytest.mark.parametrize("data_source, instruction, expected", [
    (VERL_DEFAULT_DATA_SOURCE, DEFAULT_INSTRUCTION, None),  # the default fits verl's own scorer
    ("HuggingFaceH4/MATH-500", DEFAULT_INSTRUCTION, None),
    ("openai/gsm8k", DEFAULT_INSTRUCTION, "score right answers 0"),  # wants '#### N'
    ("openai/gsm8k", GSM8K_INSTRUCTION, None),
    (VERL_DEFAULT_DATA_SOURCE, GSM8K_INSTRUCTION, "score right answers 0"),  # wants \boxed{}
    (VERL_DEFAULT_DATA_SOURCE, "", "score right answers 0"),
    ("math_dapo", DEFAULT_INSTRUCTION, "-1 for a wrong answer"),
    ("aime2024", DEFAULT_INSTRUCTION, "-1 for a wrong answer"),
    ("searchR1_nq", DEFAULT_INSTRUCTION, "does not grade"),
    ("demo", DEFAULT_INSTRUCTION, "NotImplementedError"),
])
def test_verl_warnings_follow_verls_dispatch(data_source, instruction, expected):
    warnings = verl_warnings(data_source, instruction)
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0]
        assert "reward.custom_reward_function.name=verl_compute_score" in warnings[0]


def test_verl_export_warns_in_the_result_the_card_and_the_cli(labelled_db, tmp_path):
    options = ExportOptions(data_source="openai/gsm8k")
    result = export(labelled_db, fmt="verl", out=tmp_path / "v" / "train.parquet", options=options)
    assert len(result.warnings) == 1 and "'####'" in result.warnings[0]
    assert json.loads((tmp_path / "v" / "card.json").read_text())["warnings"] == result.warnings
    assert "## Warnings" in (tmp_path / "v" / "README.md").read_text()
    quiet = export(labelled_db, fmt="verl", out=tmp_path / "q" / "train.parquet")
    assert quiet.warnings == [] and export(labelled_db, fmt="trl", out=tmp_path / "t" / "t.jsonl",
                                           options=options).warnings == []  # TRL has no data_source
    path = labelled_db.conn.execute("pragma database_list").fetchone()[2]
    done = CliRunner().invoke(app, ["export", "--format", "verl", "--out", str(tmp_path / "c" / "train.parquet"),
                                    "--data-source", "openai/gsm8k", "--db", path])
    assert done.exit_code == 0 and "Warning: verl scores data_source 'openai/gsm8k'" in done.output


def test_card_counts_precision_and_commands(labelled_db, tmp_path):
    db = labelled_db
    result = export(db, fmt="verl", out=tmp_path / "v" / "train.parquet",
                    options=ExportOptions(test_fraction=0.3, seed=5))
    card = json.loads((tmp_path / "v" / "card.json").read_text())
    assert card == json.loads(json.dumps(result.card))
    assert card["files"] == {"train": "train.parquet", "test": "train_test.parquet"}
    assert card["rows"] == result.rows and sum(card["label_sources"].values()) == sum(result.rows.values())
    assert card["label_sources"] == result.label_sources == {"human": 2, "majority_vote": card["label_sources"]["majority_vote"]}
    assert card["left_out"] == {"flagged flawed by an annotator": 1}
    assert card["router_version"] == result.router_version
    thresholds = store.latest_router_version(db)["thresholds"]
    assert card["target_precision"] == pytest.approx(thresholds["target_precision"])
    # the fixture's verdicts in force: correct, wrong (flawed does not judge the answer; one undone)
    precision = card["measured_precision"]
    assert (precision["right"], precision["labelled"], precision["value"]) == (1, 2, 0.5)
    low, high = precision["interval"]
    assert low == pytest.approx(0.0126, abs=1e-4) and high == pytest.approx(0.9874, abs=1e-4)  # exact 95 % CP
    verl = card["commands"]["verl"]
    train, test = (tmp_path / "v" / "train.parquet").resolve(), (tmp_path / "v" / "train_test.parquet").resolve()
    assert f"data.train_files={train}" in verl[1] and f"data.val_files={test}" in verl[1]
    assert "reward.custom_reward_function.name=verl_compute_score" in verl[1]
    assert "$MODEL" in verl[1] and verl[0].startswith("export PYTHONPATH=")
    assert card["commands"]["trl"][0].startswith("pivottrace export --format trl")
    readme = (tmp_path / "v" / "README.md").read_text()
    assert "| train | `train.parquet` |" in readme and "1 of 2 human verdicts" in readme
    assert verl[1] in readme


def test_card_commands_for_trl_and_openrlhf(labelled_db, tmp_path):
    export(labelled_db, fmt="openrlhf", out=tmp_path / "o" / "train.jsonl",
           options=ExportOptions(input_key="question", label_key="answer"))
    line = json.loads((tmp_path / "o" / "card.json").read_text())["commands"]["openrlhf"][1]
    for flag in ("--data.input_key question", "--data.label_key answer", "--data.apply_chat_template",
                 f"--data.prompt_dataset {(tmp_path / 'o' / 'train.jsonl').resolve()}", "--reward.remote_url "):
        assert flag in line
    export(labelled_db, fmt="trl", out=tmp_path / "t" / "train.parquet")
    script = "\n".join(json.loads((tmp_path / "t" / "card.json").read_text())["commands"]["trl"])
    assert "load_dataset('parquet'" in script and "reward_funcs=math_reward" in script
    compile(script, "card", "exec")  # the lines are Python


def test_an_export_never_overwrites_a_readme_that_is_not_its_card(labelled_db, tmp_path):
    (tmp_path / "README.md").write_text("# My project\n")
    with pytest.raises(ExportError, match="not an export card"):
        export(labelled_db, fmt="trl", out=tmp_path / "t.jsonl")
    assert (tmp_path / "README.md").read_text() == "# My project\n" and not (tmp_path / "t.jsonl").exists()
    export(labelled_db, fmt="trl", out=tmp_path / "own" / "t.jsonl")
    export(labelled_db, fmt="verl", out=tmp_path / "own" / "v.parquet")  # a card replaces a card
    assert json.loads((tmp_path / "own" / "card.json").read_text())["format"] == "verl"


def test_clopper_pearson_matches_known_values():
    from pivottrace.card import clopper_pearson
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.3085, abs=1e-4)  # 1 - 0.025 ** (1/10)
    low, high = clopper_pearson(10, 10)
    assert low == pytest.approx(0.6915, abs=1e-4) and high == 1.0
    low, high = clopper_pearson(7, 10)
    assert (low, high) == (pytest.approx(0.3475, abs=1e-4), pytest.approx(0.9333, abs=1e-4))
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
