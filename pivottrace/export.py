"""Training sets for RLVR trainers: verl (parquet), TRL GRPOTrainer (JSONL or parquet), OpenRLHF
(JSONL); and process-reward rows from human step labels for TRL's PRMTrainer ("prm", see prm.py).

What goes in:
- label_source "human": problems with a label in force (store.effective_labels). Verdict
  `correct`: the ground truth is the majority answer the annotator accepted (the label's shown
  answer when one was recorded, else the stored majority answer of the route's model). Verdict
  `wrong`: the annotator's gold answer. `flawed`: never exported, whatever the route.
- label_source "majority_vote": unlabelled `self_train` problems, the majority answer as a
  pseudo-label, with its vote share; `low_priority` and `deferred` ones only when asked for.
Unlabelled `annotate` problems wait for their label. The hidden gold (problems.gold) is never read.

Trainer fit:
- verl: `data_source` defaults to VERL_DEFAULT_DATA_SOURCE, a key that verl's own
  `default_compute_score` routes to a scorer reading the last `\\boxed{}` (what the default
  instruction asks for). PivotTrace's math-verify scorer (rewards.verl_compute_score) is the
  better choice; `verl_reward_overrides` gives its `custom_reward_function` lines. A
  `--data-source` that verl scores in another answer format than the instruction asks for gets a
  warning (ExportResult.warnings).
- OpenRLHF: a `datasource` column (each problem's source, or --data-source) for its per-source
  metrics; rewards.reward_func is its function reward.
- Every export writes a card (card.py) beside its files: README.md and card.json.

Files depend only on the store's state and the options: rows ordered by problem id, a seeded split
that keeps each problem in the same split as the pool grows, no timestamps. Each file is written
to a temporary name and renamed, so a failed export leaves the old file as it was. An empty
selection or bad options raise ExportError instead of writing an empty file. It does not train,
score or change the store. Rewards for these files live in rewards.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import card, store, trainers
from .vocab import route_summary

FORMATS = ("verl", "trl", "openrlhf", "prm")
FILE_TYPES = {"verl": ("parquet",), "trl": ("jsonl", "parquet"), "openrlhf": ("jsonl",), "prm": ("jsonl", "parquet")}
SUFFIX_TYPES = {".parquet": "parquet", ".jsonl": "jsonl"}
# asks for the final answer in the form answers.extract_answer (and so rewards.py) reads first,
# and the form verl's MATH scorer reads (the only one it reads)
DEFAULT_INSTRUCTION = "Let's think step by step and put the final answer within \\boxed{}."
# a data_source that verl 0.9's default_compute_score sends to verl.utils.reward_score.math_reward
# (last \boxed{} against the label, 1.0 or 0.0), so the export trains without a custom scorer; the
# pool's own name stays in extra_info.source
VERL_DEFAULT_DATA_SOURCE = "lighteval/MATH"
BOXED = "\\boxed"
# verl 0.9.1's default_compute_score dispatch (verl/utils/reward_score/__init__.py): the scorer
# each data_source reaches, and the answer marker that scorer reads (None: it does not score a
# final math answer at all)
VERL_MATH_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
VERL_DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning")
VERL_PRIME_SOURCES = ("numina_aops_forum", "numina_synthetic_math", "numina_amc_aime", "numina_synthetic_amc",
                      "numina_cn_k12", "numina_olympiads")
VERL_CODE_SOURCES = ("codecontests", "apps", "codeforces", "taco")
VERL_SEARCH_SOURCES = ("searchR1_nq", "searchR1_triviaqa", "searchR1_popqa", "searchR1_hotpotqa",
                       "searchR1_2wikimultihopqa", "searchR1_musique", "searchR1_bamboogle")
ABILITY = "math"  # verl's `ability` column; every PivotTrace problem has a checkable answer
OPTIONAL_ROUTES = ("low_priority", "deferred")
MALFORMED_SHOWN = 5  # problem ids named in a malformed-selection message

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
VERL_SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(MESSAGE)),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
    ("extra_info", pa.struct([
        ("split", pa.string()), ("index", pa.int64()), ("question", pa.string()),
        ("label_source", pa.string()), ("vote_share", pa.float64()),
        ("router_version", pa.int64()), ("problem_id", pa.string()), ("source", pa.string()),
        ("route", pa.string()), ("model_id", pa.string()),
    ])),
])
TRL_SCHEMA = pa.schema([
    ("prompt", pa.list_(MESSAGE)),
    ("solution", pa.string()),
    ("label_source", pa.string()),
    ("vote_share", pa.float64()),
    ("problem_id", pa.string()),
])
OPENRLHF_EXTRA_KEYS = ("datasource", "label_source", "vote_share", "problem_id")


class ExportError(ValueError):
    """The selection or the options cannot make a training set."""


@dataclass
class ExportOptions:
    include_low_priority: bool = False  # add unlabelled low_priority problems (majority-vote labels)
    include_deferred: bool = False  # add unlabelled deferred problems (majority-vote labels)
    test_fraction: float = 0.0  # expected share of problems in the test split, in [0, 1)
    seed: int = 0  # salt of the split hash: another seed, another split
    instruction: str = DEFAULT_INSTRUCTION  # appended to each question in the prompt ("" = none)
    # verl `data_source` and OpenRLHF `datasource`; None: VERL_DEFAULT_DATA_SOURCE for verl, each
    # problem's source name for OpenRLHF
    data_source: str | None = None
    input_key: str = "input"  # OpenRLHF --data.input_key
    label_key: str = "label"  # OpenRLHF --data.label_key
    file_type: str | None = None  # "jsonl" or "parquet"; None: from the output's suffix


@dataclass
class Example:
    """One training problem with its label."""

    problem_id: str
    question: str
    source: str
    ground_truth: str
    label_source: str  # "human" or "majority_vote"
    vote_share: float | None  # the majority answer's share of the K+1 answers; None for human labels
    route: str
    router_version: int | None
    model_id: str | None
    split: str = "train"
    index: int = 0  # position within its split


@dataclass
class ExportResult:
    format: str
    files: dict[str, Path]  # split -> file written
    rows: dict[str, int]  # split -> rows
    label_sources: dict[str, int]  # "human" / "majority_vote" -> rows
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> problems left out
    router_version: int | None = None  # newest router version among the rows
    warnings: list[str] = field(default_factory=list)  # options a trainer would score wrongly
    card: dict = field(default_factory=dict)  # what card.json holds (card.py)


# --------------------------------------------------------------------------- selection

def select_examples(db, *, include_low_priority: bool = False,
                    include_deferred: bool = False) -> tuple[list[Example], dict[str, int]]:
    """The training problems, ordered by problem id, and {reason: count} of the ones left out.

    Raises ExportError when a human label has no answer to train on (a `correct` verdict whose
    problem has no majority answer): it names the problems, and nothing is written.
    """
    routes = ("self_train",) + (("low_priority",) if include_low_priority else ()) + \
        (("deferred",) if include_deferred else ())
    labels = {row["problem_id"]: row for row in store.effective_labels(db)}
    examples, skipped, malformed = [], {}, []

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for row in store.export_rows(db, routes):
        label = labels.get(row["problem_id"])
        vote_share = None
        if label is not None:
            if label["verdict"] == "flawed":
                skip("flagged flawed by an annotator")
                continue
            if label["verdict"] == "wrong":
                truth = label["gold_answer"]
            else:
                truth = label["shown_answer"] or row["majority_answer"]
            if not truth:
                malformed.append(row["problem_id"])
                continue
            label_source = "human"
        elif row["route"] in routes:
            truth = row["majority_answer"]
            if truth is None:
                skip(f"{row['route']} without a majority answer")
                continue
            label_source, vote_share = "majority_vote", row["vote_share"]
        else:  # an annotate item whose labels were skipped or undone: it still waits for one
            continue
        examples.append(Example(
            problem_id=row["problem_id"], question=row["text"], source=row["source"],
            ground_truth=str(truth), label_source=label_source,
            vote_share=None if vote_share is None else float(vote_share), route=row["route"],
            router_version=row["router_version"], model_id=row["model_id"]))
    if malformed:
        shown = ", ".join(malformed[:MALFORMED_SHOWN]) + (", ..." if len(malformed) > MALFORMED_SHOWN else "")
        raise ExportError(
            f"{len(malformed)} labelled problem(s) have no answer to train on ({shown}): "
            "they were accepted as correct but have no majority answer. Undo those labels and "
            "label them 'wrong' with the gold answer.")
    return examples, skipped


def split_of(problem_id: str, *, test_fraction: float, seed: int) -> str:
    """'test' or 'train' from a seeded hash of the id: the same problem lands in the same split on
    every export, so a later, larger export never moves a test problem into train."""
    if test_fraction <= 0:
        return "train"
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    return "test" if position < test_fraction else "train"


def assign_splits(examples: list[Example], *, test_fraction: float, seed: int) -> dict[str, list[Example]]:
    """{split: examples} with `split` and `index` set; raises ExportError when a split is empty."""
    splits: dict[str, list[Example]] = {"train": []}
    if test_fraction > 0:
        splits["test"] = []
    for example in examples:
        example.split = split_of(example.problem_id, test_fraction=test_fraction, seed=seed)
        example.index = len(splits[example.split])
        splits[example.split].append(example)
    empty = [name for name, rows in splits.items() if not rows]
    if empty:
        raise ExportError(
            f"The {' and '.join(empty)} split would be empty ({len(examples)} problems, test "
            f"fraction {test_fraction:g}, seed {seed}); change --test-fraction or --seed.")
    return splits


# --------------------------------------------------------------------------- rows per trainer

def prompt_text(example: Example, instruction: str) -> str:
    """The user message: the question, then the instruction (as verl's GSM8K preprocessing does)."""
    return f"{example.question} {instruction}" if instruction else example.question


def verl_row(example: Example, options: ExportOptions) -> dict:
    """One row as verl's examples/data_preprocess/gsm8k.py makes it, plus PivotTrace's extra_info."""
    return {
        "data_source": options.data_source or VERL_DEFAULT_DATA_SOURCE,
        "prompt": [{"role": "user", "content": prompt_text(example, options.instruction)}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": example.ground_truth},
        "extra_info": {
            "split": example.split, "index": example.index, "question": example.question,
            "label_source": example.label_source, "vote_share": example.vote_share,
            "router_version": example.router_version, "problem_id": example.problem_id,
            "source": example.source, "route": example.route, "model_id": example.model_id,
        },
    }


def trl_row(example: Example, options: ExportOptions) -> dict:
    """GRPOTrainer: a conversational prompt; every other column reaches reward functions as a kwarg."""
    return {
        "prompt": [{"role": "user", "content": prompt_text(example, options.instruction)}],
        "solution": example.ground_truth, "label_source": example.label_source,
        "vote_share": example.vote_share, "problem_id": example.problem_id,
    }


def openrlhf_row(example: Example, options: ExportOptions) -> dict:
    """OpenRLHF: the prompt text under --data.input_key (a string, which --data.apply_chat_template
    wraps as a user message), the ground truth under --data.label_key, and `datasource`, the
    column its PromptDataset groups metrics by."""
    return {
        options.input_key: prompt_text(example, options.instruction),
        options.label_key: example.ground_truth,
        "datasource": options.data_source or example.source,
        "label_source": example.label_source, "vote_share": example.vote_share,
        "problem_id": example.problem_id,
    }


ROW_BUILDERS = {"verl": verl_row, "trl": trl_row, "openrlhf": openrlhf_row}
SCHEMAS = {"verl": VERL_SCHEMA, "trl": TRL_SCHEMA}


# --------------------------------------------------------------------------- verl's scorers

def verl_scorer(data_source: str) -> tuple[str | None, tuple[str, ...] | None]:
    """(scorer, the answer markers it reads) for a data_source, as verl 0.9.1's
    default_compute_score dispatches it; (None, None) when verl has no scorer for it, and markers
    None when the scorer grades something other than a final math answer."""
    if data_source == "openai/gsm8k":
        return "gsm8k", ("####",)
    if data_source in VERL_MATH_SOURCES:
        return "math_reward", (BOXED,)
    if data_source in VERL_DAPO_SOURCES or data_source.startswith("aime"):
        return "math_dapo", ("Answer:", BOXED)
    if data_source in VERL_PRIME_SOURCES:
        return "prime_math", (BOXED,)
    if data_source == "hiyouga/geometry3k":
        return "geo3k", (BOXED,)
    if data_source in VERL_CODE_SOURCES:
        return "code (sandbox or prime_code)", None
    if data_source in VERL_SEARCH_SOURCES:
        return "search_r1_like_qa_em", None
    return None, None


def verl_warnings(data_source: str, instruction: str) -> list[str]:
    """Why verl's default reward would not score this export as PivotTrace's scorer does; [] when it would."""
    custom = " ".join(trainers.verl_reward_overrides())
    use_ours = f"or train with PivotTrace's scorer ({custom})."
    scorer, markers = verl_scorer(data_source)
    if scorer is None:
        return [f"verl has no scorer for data_source {data_source!r}: its default_compute_score raises "
                f"NotImplementedError. Leave --data-source out (default {VERL_DEFAULT_DATA_SOURCE!r}) {use_ours}"]
    if markers is None:
        return [f"verl scores data_source {data_source!r} with its {scorer} scorer, which does not grade "
                f"a final math answer. Leave --data-source out {use_ours}"]
    found = [marker for marker in markers if marker in instruction]
    notes = []
    if not found:
        wanted = " or ".join(repr(marker) for marker in markers)
        notes.append(
            f"verl scores data_source {data_source!r} with its {scorer} scorer, which reads the answer "
            f"after {wanted}, but the instruction does not ask for it: verl would score right answers 0. "
            f"Ask for that form with --instruction, leave --data-source out, {use_ours}")
    if scorer == "math_dapo":
        notes.append(f"verl's math_dapo scorer (data_source {data_source!r}) gives -1 for a wrong answer, "
                     f"not 0 as PivotTrace's scorer does: leave --data-source out {use_ours}")
    if scorer == "geo3k":
        notes.append("verl's geo3k scorer gives 10 % of the reward for a <think>...</think> format, not "
                     f"for the answer: leave --data-source out {use_ours}")
    return notes


# --------------------------------------------------------------------------- files

def split_path(out: Path, split: str) -> Path:
    """The train split goes to `out`; the test split next to it as `<stem>_test<suffix>`."""
    return out if split == "train" else out.with_name(f"{out.stem}_{split}{out.suffix}")


def _write_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_jsonl(path: Path, rows: list[dict]) -> None:
    def write(target: Path) -> None:
        with open(target, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    _write_atomic(path, write)


def write_text(path: Path, text: str) -> None:
    def write(target: Path) -> None:
        target.write_text(text, encoding="utf-8", newline="\n")
    _write_atomic(path, write)


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    _write_atomic(path, lambda target: pq.write_table(table, target))


def _validate(fmt: str, out: Path, options: ExportOptions) -> str:
    """Check the options once; returns the file type."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    allowed = FILE_TYPES[fmt]
    file_type = options.file_type or SUFFIX_TYPES.get(out.suffix.lower())
    if file_type is None:
        raise ExportError(f"Cannot tell the file type from {out.name!r}: name it .{' or .'.join(allowed)}.")
    if file_type not in allowed:
        raise ExportError(f"{fmt} takes {' or '.join(allowed)} files, not {file_type}.")
    if not 0 <= options.test_fraction < 1:
        raise ExportError(f"The test fraction must be in [0, 1), not {options.test_fraction:g}.")
    if out.exists() and out.is_dir():
        raise ExportError(f"{out} is a directory; give a file name.")
    for existing in card.card_paths(out.parent):
        if out.name == existing.name:
            raise ExportError(f"{out.name} is the name of the export's card; name the training file otherwise.")
        if existing.exists() and not card.is_card(existing):
            raise ExportError(f"{existing} is not an export card and would be overwritten by one: export "
                              f"into a folder of its own (e.g. out/{fmt}/{out.name}).")
    if fmt == "openrlhf":
        keys = (options.input_key, options.label_key)
        if not all(key and key.strip() for key in keys):
            raise ExportError("The OpenRLHF input and label keys must not be empty.")
        if options.input_key == options.label_key:
            raise ExportError(f"The OpenRLHF input and label keys are both {options.input_key!r}.")
        clash = [key for key in keys if key in OPENRLHF_EXTRA_KEYS]
        if clash:
            raise ExportError(f"{clash[0]!r} is already a column of the export; pick another key.")
    return file_type


def export(db, *, fmt: str, out: str | Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Write the training set for trainer `fmt` (verl, trl or openrlhf) to `out` (and its test
    split next to it), and its card (card.json, README.md) in the same folder. Raises ExportError
    on bad options or an empty selection; nothing is written then."""
    out = Path(out)
    file_type = _validate(fmt, out, options)
    if fmt == "prm":
        return _export_prm(db, out, file_type, options)
    examples, skipped = select_examples(db, include_low_priority=options.include_low_priority,
                                        include_deferred=options.include_deferred)
    if not examples:
        counts = store.route_counts(db)
        raise ExportError(
            "Nothing to export: no problem has a human label (correct/wrong) or the self_train "
            f"route (routes now: {route_summary(counts)}). Route the "
            "pool and label some problems, or add --include-low-priority / --include-deferred.")
    splits = assign_splits(examples, test_fraction=options.test_fraction, seed=options.seed)
    build = ROW_BUILDERS[fmt]
    files, rows = {}, {}
    for split, chosen in splits.items():
        path = split_path(out, split)
        records = [build(example, options) for example in chosen]
        if file_type == "parquet":
            write_parquet(path, records, SCHEMAS[fmt])
        else:
            write_jsonl(path, records)
        files[split], rows[split] = path, len(records)
    sources: dict[str, int] = {}
    for example in examples:
        sources[example.label_source] = sources.get(example.label_source, 0) + 1
    versions = [e.router_version for e in examples if e.router_version is not None]
    warnings = verl_warnings(options.data_source or VERL_DEFAULT_DATA_SOURCE, options.instruction) \
        if fmt == "verl" else []
    result = ExportResult(fmt, files, rows, sources, skipped, max(versions) if versions else None, warnings)
    result.card = card.build_card(db, result, options=options)
    card_file, readme_file = card.card_paths(out.parent)
    write_text(card_file, card.card_json(result.card))
    write_text(readme_file, card.card_readme(result.card))
    return result


def _export_prm(db, out: Path, file_type: str, options: ExportOptions) -> ExportResult:
    """The "prm" format: human step labels only (prm.prm_rows), split like the other formats."""
    from .prm import PRM_SCHEMA, prm_rows

    records, skipped = prm_rows(db)
    if not records:
        raise ExportError("Nothing to export: no problem has a human step label. Mark the first wrong step "
                          "on the Annotate page after a 'wrong' verdict.")
    splits: dict[str, list[dict]] = {"train": []}
    if options.test_fraction > 0:
        splits["test"] = []
    for record in records:
        splits[split_of(record["problem_id"], test_fraction=options.test_fraction, seed=options.seed)].append(record)
    empty = [name for name, rows in splits.items() if not rows]
    if empty:
        raise ExportError(f"The {' and '.join(empty)} split would be empty ({len(records)} problems); "
                          "change --test-fraction or --seed.")
    files, rows = {}, {}
    for split, chosen in splits.items():
        path = split_path(out, split)
        if file_type == "parquet":
            write_parquet(path, chosen, PRM_SCHEMA)
        else:
            write_jsonl(path, chosen)
        files[split], rows[split] = path, len(chosen)
    return ExportResult("prm", files, rows, {"human": len(records)}, skipped)
