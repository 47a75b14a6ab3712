"""Read completions sampled elsewhere (verl, vLLM / OpenAI, TRL, generic JSONL) and group K per prompt.

Input: a rollout file, its format and the checkpoint that sampled it. Output: `RolloutGroup`s, one
per (prompt, checkpoint step), holding the prompt the model saw and its K completions in file order,
plus a `RejectedRow` for every bad line (the same line-numbered report as ingest), and the match of
each group to a stored problem (`match_groups`: by id, else by normalised prompt text).
Formats:
  verl   the trainer's `trainer.rollout_data_dir` dump, `<step>.jsonl` with one row per sample:
         `input` (the prompt, decoded without special tokens), `output`, `score`, `step`.
  vllm   one row per prompt: `prompt` (text or chat messages) or `messages`, and its n completions in
         `outputs` / `choices` / `completions` (strings, {"text"} or {"message": {"content"}}).
  trl    GRPOTrainer's completion logs (`completions/completions_<step>.parquet`, or JSONL): one row
         per sample with `prompt`, `completion`, `step`, reward columns.
  jsonl  one row per sample with columns named by the options (prompt, completion, id, step, score).
It does not analyse chains (trace.py) and writes nothing (pipeline.import_rollouts stores them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import BLANK, MAX_TEXT_CHARS, PoolFormatError, RejectedRow, problem_id, read_rows

FORMATS = ("verl", "vllm", "trl", "jsonl")
MAX_COMPLETION_CHARS = 400_000  # ~100k tokens: longer than any reasoning chain we analyse
_SPECIAL_TOKEN_RE = re.compile(r"<\|[^|>]{1,40}\|>|<s>|</s>")  # chat-template markers in a prompt string
# The last user turn of a rendered chat prompt, with or without its special tokens (verl decodes with
# skip_special_tokens, leaving bare role names on their own lines: "...\nuser\n<question>\nassistant\n").
_USER_LINE_RE = re.compile(r"(?:^|\n)[ \t]*user[ \t]*\n", re.I)
# The generation prompt's role at the end: on its own line (ChatML), or glued to the question (Llama 3's
# "<|start_header_id|>assistant<|end_header_id|>" with its tokens skipped: "...legs?assistant\n\n").
_ASSISTANT_TAIL_RE = re.compile(r"(?:^|\n|(?<=[^\w\s]))[ \t]*assistant\s*$", re.I)
_STEP_IN_NAME_RE = {"verl": re.compile(r"^(\d+)$"),  # verl names its dumps <step>.jsonl
                    "trl": re.compile(r"^completions_(\d+)$")}  # TRL completions_<step:05d>.parquet


@dataclass
class ColumnOptions:
    """Column names of a generic (`jsonl`) rollout file; the other formats fix their own."""

    prompt: str = "prompt"
    completion: str = "completion"
    problem_id: str | None = None  # a column holding the stored problem id, when the file has one
    step: str | None = "step"
    score: str | None = "score"


@dataclass
class RolloutGroup:
    """K completions of one prompt sampled by one checkpoint step."""

    prompt: str | list  # what the model saw: rendered text, or chat messages [{role, content}]
    question: str  # the problem text as far as it can be told from the prompt (for matching / new problems)
    step: int | None
    completions: list[str] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # source line of each completion
    id_hint: str | None = None  # a problem id given in the file
    problem_id: str | None = None  # set by match_groups
    matched_by: str | None = None  # "id" | "text" | "contained" | None (a new problem)


@dataclass
class RolloutFile:
    groups: list[RolloutGroup]
    rejected: list[RejectedRow]
    rows: int  # sample rows read (good ones)


def normalise(text: str) -> str:
    """Prompt text for matching: chat markers dropped, whitespace collapsed, case folded."""
    return re.sub(r"\s+", " ", _SPECIAL_TOKEN_RE.sub(" ", text)).strip().casefold()


def question_text(prompt: str | list) -> str:
    """The problem text inside a prompt: the last user turn of chat messages or of a rendered chat
    prompt (special tokens and role lines dropped), else the whole prompt."""
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]).strip() if users else ""
    text = _SPECIAL_TOKEN_RE.sub("\n", prompt)
    turns = list(_USER_LINE_RE.finditer(text))
    if turns:
        return _ASSISTANT_TAIL_RE.sub("", text[turns[-1].end():]).strip()
    return text.strip()


_ROLE_LINE_RE = re.compile(r"(?:^|\n)(system|user|assistant)\n", re.I)  # a role name alone on its line


def restore_chat_prompt(prompt: str, tokenizer) -> str | None:
    """The rendered chat prompt a verl dump lost its special tokens from, when it can be proved.

    verl decodes the prompt with skip_special_tokens, leaving "system\n...\nuser\n...\nassistant\n".
    The turns are read back from the role lines, rendered again with the model's chat template, and
    the rendering is kept only if decoding it without special tokens gives `prompt` back exactly;
    None otherwise (the prompt is then analysed as it is).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    marks = list(_ROLE_LINE_RE.finditer(prompt))
    if len(marks) < 2 or marks[-1].group(1).lower() != "assistant" or prompt[marks[-1].end():].strip():
        return None
    turns = []
    for mark, following in zip(marks, marks[1:]):
        turns.append({"role": mark.group(1).lower(), "content": prompt[mark.end():following.start()]})
    try:
        rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        roundtrip = tokenizer.decode(ids, skip_special_tokens=True)
    except Exception:  # a template that refuses these turns (e.g. roles out of order): keep the prompt
        return None
    return rendered if roundtrip == prompt else None


def step_from_name(path: Path, fmt: str) -> int | None:
    """The training step in a verl or TRL file name; None for other names and formats."""
    pattern = _STEP_IN_NAME_RE.get(fmt)
    match = pattern.match(path.stem) if pattern else None
    return int(match.group(1)) if match else None


def read_rollouts(path: str | Path, *, fmt: str, columns: ColumnOptions | None = None) -> RolloutFile:
    """Read a rollout file into groups (file order kept). Bad rows are reported; good ones still load."""
    path = Path(path)
    if fmt not in FORMATS:
        raise PoolFormatError(f"Unknown rollout format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise PoolFormatError(f"No such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".jsonl", ".ndjson", ".json"):
        raise PoolFormatError(f"Unknown rollout file type {suffix!r}: use .jsonl or .parquet")
    rows = read_rows(path)
    columns = columns or ColumnOptions()
    file_step = step_from_name(path, fmt)
    groups: dict[tuple, RolloutGroup] = {}
    rejected: list[RejectedRow] = []
    n_rows = 0
    for line, row, *_ in rows:
        if row is BLANK:
            continue
        if isinstance(row, RejectedRow):
            rejected.append(row)
            continue
        try:
            samples = _samples(row, fmt, columns)
        except _BadRow as err:
            rejected.append(RejectedRow(line, str(err)))
            continue
        for prompt, completion, score, step, id_hint in samples:
            step = file_step if step is None else step
            key = (json.dumps(prompt, sort_keys=True), step)
            group = groups.get(key)
            if group is None:
                question = question_text(prompt)
                if not question.strip() or len(question) > MAX_TEXT_CHARS:
                    rejected.append(RejectedRow(line, "no problem text in the prompt" if not question.strip() else
                                                f"the prompt's problem text is {len(question):,} characters; "
                                                f"the limit is {MAX_TEXT_CHARS:,}"))
                    break  # the row's other samples share the prompt: one report for the line
                group = groups[key] = RolloutGroup(prompt=prompt, question=question, step=step,
                                                   id_hint=id_hint)
            group.completions.append(completion)
            group.scores.append(score)
            group.lines.append(line)
            n_rows += 1
    return RolloutFile(list(groups.values()), rejected, n_rows)


class _BadRow(ValueError):
    """One row cannot be read; the message says why (becomes a RejectedRow)."""


def _text(row: dict, name: str, *, limit: int) -> str:
    if name not in row or row[name] is None:
        raise _BadRow(f"missing field {name!r}")
    value = row[name]
    if not isinstance(value, str):
        raise _BadRow(f"field {name!r} is not text")
    if len(value) > limit:
        raise _BadRow(f"field {name!r} is {len(value):,} characters; the limit is {limit:,}")
    return value


def _prompt(row: dict, name: str) -> str | list:
    value = row.get(name)
    if isinstance(value, list):  # chat messages
        if not value or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role")
                                for m in value):
            raise _BadRow(f"field {name!r} is not a list of {{role, content}} messages")
        if not question_text(value):
            raise _BadRow(f"field {name!r} has no user message")
        return [{"role": str(m["role"]), "content": m["content"]} for m in value]
    prompt = _text(row, name, limit=4 * MAX_TEXT_CHARS)
    if not prompt.strip():
        raise _BadRow(f"field {name!r} is empty")
    return prompt


def _number(row: dict, name: str | None, *, integer: bool = False):
    if not name or row.get(name) is None:
        return None
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _BadRow(f"field {name!r} is not a number")
    if integer and value != int(value):
        raise _BadRow(f"field {name!r} is not a whole number")
    return int(value) if integer else float(value)


def _completion_text(item, index: int) -> str:
    """A completion of a vLLM / OpenAI row: a string, {"text"}, or {"message": {"content"}}."""
    if isinstance(item, dict):
        item = item.get("text", (item.get("message") or {}).get("content"))
    if not isinstance(item, str):
        raise _BadRow(f"completion {index} has no text")
    if len(item) > MAX_COMPLETION_CHARS:
        raise _BadRow(f"completion {index} is {len(item):,} characters; the limit is {MAX_COMPLETION_CHARS:,}")
    return item


def _samples(row, fmt: str, columns: ColumnOptions) -> list[tuple]:
    """(prompt, completion, score, step, id_hint) for each sample in one row."""
    if not isinstance(row, dict):
        raise _BadRow("row is not an object with named fields")
    if fmt == "verl":
        return [(_prompt(row, "input"), _text(row, "output", limit=MAX_COMPLETION_CHARS),
                 _number(row, "score"), _number(row, "step", integer=True), None)]
    if fmt == "trl":
        rewards = [k for k in row if k not in ("mode", "step", "prompt", "completion", "advantage")
                   and isinstance(row[k], (int, float)) and not isinstance(row[k], bool)]
        score = sum(float(row[k]) for k in rewards) if rewards else None  # TRL's reward: the sum of its functions
        return [(_prompt(row, "prompt"), _text(row, "completion", limit=MAX_COMPLETION_CHARS), score,
                 _number(row, "step", integer=True), None)]
    if fmt == "vllm":
        name = "prompt" if "prompt" in row else "messages"
        prompt = _prompt(row, name)
        outputs = next((row[k] for k in ("outputs", "choices", "completions") if k in row), None)
        if not isinstance(outputs, list) or not outputs:
            raise _BadRow("no completions (outputs / choices / completions)")
        if isinstance(row.get("n"), int) and row["n"] != len(outputs):
            raise _BadRow(f"n is {row['n']} but the row holds {len(outputs)} completions")
        return [(prompt, _completion_text(item, i), None, _number(row, "step", integer=True), None)
                for i, item in enumerate(outputs)]
    id_hint = None
    if columns.problem_id:
        if row.get(columns.problem_id) is None:
            raise _BadRow(f"missing field {columns.problem_id!r}")
        id_hint = str(row[columns.problem_id])
    return [(_prompt(row, columns.prompt), _text(row, columns.completion, limit=MAX_COMPLETION_CHARS),
             _number(row, columns.score), _number(row, columns.step, integer=True), id_hint)]


def match_groups(groups: list[RolloutGroup], problems: list[dict]) -> None:
    """Set each group's problem_id from stored problems [{id, text}]: by the id the file gives, else by
    normalised text (the prompt's question equals a problem, or the prompt contains a problem's text:
    the longest such). Groups left with problem_id None are new problems (see new_problem_id)."""
    by_id = {p["id"] for p in problems}
    by_text = {normalise(p["text"]): p["id"] for p in problems}
    longest_first = sorted(((normalise(p["text"]), p["id"]) for p in problems), key=lambda x: -len(x[0]))
    contained_cache: dict[str, str | None] = {}
    for group in groups:
        if group.id_hint is not None and group.id_hint in by_id:
            group.problem_id, group.matched_by = group.id_hint, "id"
            continue
        question = normalise(group.question)
        if question in by_text:
            group.problem_id, group.matched_by = by_text[question], "text"
            continue
        prompt = normalise(group.prompt if isinstance(group.prompt, str) else group.question)
        if prompt not in contained_cache:
            contained_cache[prompt] = next((pid for text, pid in longest_first if text and text in prompt), None)
        if contained_cache[prompt] is not None:
            group.problem_id, group.matched_by = contained_cache[prompt], "contained"


def new_problem_id(group: RolloutGroup) -> str:
    """The id a group's question gets as a new problem (the ingest content hash)."""
    return problem_id(group.question)


def model_id_for(checkpoint: str, step: int | None) -> str:
    """The trace's model id: the checkpoint (path or hub id), plus "@step<N>" when the rollouts say which step."""
    return checkpoint if step is None else f"{checkpoint}@step{step}"
