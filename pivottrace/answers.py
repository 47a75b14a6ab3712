"""Answer extraction, normalisation, equivalence and majority voting.

Input: raw text (a gold solution or a model completion). Output: a short answer string, a
canonical key for voting, and equality through math-verify. It does not generate, score or
store anything. Every math-verify call runs with its signal-based timeouts switched off, so the
functions here are safe off the main thread (Streamlit, thread pools, TRL reward workers).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import logging

import numpy as np
from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

# math-verify warns on every call that its timeouts are off; off is deliberate (thread safety).
logging.getLogger("math_verify").setLevel(logging.ERROR)

_NUMBER = r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\.\d+"
_GSM8K_GOLD = re.compile(r"####\s*(.+?)\s*$", re.S)
_ANSWER_LINE = re.compile(r"(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*(.+)", re.I)
_NUMBER_RE = re.compile(_NUMBER)
# A fraction on an answer line: LaTeX \frac{a}{b} / \dfrac{a}{b}, or a plain a/b.
_FRACTION_RE = re.compile(r"-?\\d?frac\s*\{[^{}]+\}\s*\{[^{}]+\}|-?\d+\s*/\s*\d+(?![\d.])")


_SPACED_BOX_OPEN = re.compile(r"(\\(?:boxed|fbox)\s+)\{")  # "\\boxed {"; the common "\\boxed{" is
# marked with str.replace, which runs at C speed where a regex substitution calls Python per match
_OPEN, _CLOSE = ord("{"), ord("}")


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # "{" and "}" never occur inside a multi-byte character


def _boxed_contents(text: str) -> list[str]:
    """Contents of every \\boxed{...} / \\fbox{...}, with nested braces balanced, in the order
    the boxes open; a box never closed is left out.

    Linear time: one pass of a brace counter over the text (numpy), then each box's "{" is paired
    with the first later "}" that brings the count back below it. Scanning forward from each box
    took quadratic time on text full of unclosed boxes (a 1 MB answer: hours).
    """
    if "{" not in text:
        return []
    marked = text.replace("\\boxed{", "\\boxed\0").replace("\\fbox{", "\\fbox\0")
    if _SPACED_BOX_OPEN.search(marked):
        marked = _SPACED_BOX_OPEN.sub(lambda match: match.group(1) + "\0", marked)
    if marked.count("\0") == text.count("\0"):
        return []  # no box
    data = _utf8(text)
    chars = np.frombuffer(data, dtype=np.uint8)  # [n] bytes
    braces = np.flatnonzero((chars == _OPEN) | (chars == _CLOSE))  # [B] byte offsets of "{" and "}"
    step = np.where(chars[braces] == _OPEN, 1, -1)  # [B]
    depth = np.cumsum(step)  # [B] open braces after each brace
    depth -= np.minimum(np.minimum.accumulate(depth), 0)  # a "}" with nothing open closes nothing
    marks = np.frombuffer(_utf8(marked), dtype=np.uint8)  # [n] the same bytes, each box's "{" a 0
    boxes = np.flatnonzero(marks[braces] != chars[braces])  # [K] braces that open a box
    closes = np.flatnonzero(step < 0)  # [C]
    if not len(closes):
        return []
    by_depth = closes[np.argsort(depth[closes], kind="stable")]  # [C] grouped by depth after, in text order
    width = len(braces) + 1
    keys = depth[by_depth].astype(np.int64) * width + by_depth  # [C] ascending
    # a box's "{" at depth d closes at the first later "}" that leaves depth d - 1
    wanted = (depth[boxes].astype(np.int64) - 1) * width + boxes  # [K]
    at = np.searchsorted(keys, wanted)  # [K]
    found = np.minimum(at, len(keys) - 1)  # [K]
    closed = (at < len(keys)) & (keys[found] // width == depth[boxes] - 1)  # [K]
    starts, ends = braces[boxes[closed]].tolist(), braces[by_depth[found[closed]]].tolist()
    return [data[start + 1:end].decode("utf-8", "surrogatepass").strip() for start, end in zip(starts, ends)]


def _clean_number(text: str) -> str:
    return text.replace(",", "").replace("$", "").replace(" ", "")


def extract_gold(raw: str | None) -> str | None:
    """The gold answer from a dataset's answer field: GSM8K `#### n`, MATH `\\boxed{}`, or as is."""
    if raw is None:
        return None
    raw = str(raw).strip()
    if not raw:
        return None
    match = _GSM8K_GOLD.search(raw)
    if match:
        return _clean_number(match.group(1)) if _NUMBER_RE.fullmatch(match.group(1).strip()) else match.group(1).strip()
    boxed = _boxed_contents(raw)
    if boxed:
        return boxed[-1]
    return raw


def extract_answer(completion: str | None) -> str | None:
    """The model's final answer, or None when it gave none.

    Order: the last `\\boxed{}`; the last "Answer: x" / "The answer is x" line; `#### x`.
    On that line the answer is the result of its equation: the first fraction or number to the
    right of the last `=` (or `=>`, `→`), so "Answer: 8 + 3 = 11 stickers." reads 11 and
    "2 * $6 = $12 - $2 = $10" reads 10; GSM8K calculator marks `<<9*2=18>>` are dropped first.
    A line without `=` gives its first fraction or number ("The answer is 15 because ..." -> 15).
    A completion with none of these has no answer: we do not guess from stray numbers, since
    "no answer found" is itself a useful signal.
    """
    if not completion:
        return None
    boxed = _boxed_contents(completion)
    if boxed:
        return boxed[-1]
    candidates = []
    for line in completion.splitlines():
        match = _ANSWER_LINE.search(line)
        if match:
            candidates.append(match.group(1))
    match = _GSM8K_GOLD.search(completion)
    if match:
        candidates.append(match.group(1).splitlines()[0])
    for candidate in reversed(candidates):
        answer = _answer_on_line(candidate)
        if answer:
            return answer
    return None


_CALCULATOR_MARK = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<9*2=18>>" annotations
_EQUALS = re.compile(r"=>|→|⇒|(?<![<>!=])=(?!=)")  # the result sign of an equation ("==", "<=" are not)


def _answer_on_line(text: str) -> str | None:
    """The answer on one answer line: the result of its last equation, else its first number."""
    text = _CALCULATOR_MARK.sub("", text).strip()
    parts = _EQUALS.split(text)
    # the right-hand side of the last `=` that has something readable after it
    for side in reversed(parts[1:]) if len(parts) > 1 else ():
        found = _first_number(side)
        if found:
            return found
    found = _first_number(parts[0])
    if found:
        return found
    text = text.rstrip(".").strip()
    return text[:64] or None


def _first_number(text: str) -> str | None:
    """The first fraction or number in `text` (commas and `$` dropped), or None."""
    text = text.strip().rstrip(".").strip()
    fraction = _FRACTION_RE.search(text)
    number = _NUMBER_RE.search(text)
    if fraction and (number is None or fraction.start() <= number.start()):
        return fraction.group(0).replace(" ", "")
    if number:
        return _clean_number(number.group(0))
    return None


def canonical(answer: str | None) -> str | None:
    """A voting key: numbers as plain decimals ("1,234.0" -> "1234"), other text lower-cased."""
    if answer is None:
        return None
    text = _clean_number(str(answer).strip()).rstrip(".")
    fraction = re.fullmatch(r"(-?)(?:\\d?frac\{(\d+)\}\{(\d+)\}|(\d+)/(\d+))", text)
    if fraction and int(fraction.group(3) or fraction.group(5)) != 0:
        sign, a, b, c, d = fraction.groups()
        text = str((-1 if sign else 1) * int(a or c) / int(b or d))
    try:
        value = float(text)
    except ValueError:
        return re.sub(r"\s+", " ", str(answer).strip().lower()) or None
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return repr(value)


def parse_gold_input(text: str) -> str:
    """Validate an annotator's typed gold answer; raise ValueError when math-verify cannot read it."""
    text = (text or "").strip()
    if not text:
        raise ValueError("The gold answer is empty.")
    if len(text) > 200:
        raise ValueError("The gold answer is longer than 200 characters.")
    if canonical(text) is not None and _NUMBER_RE.fullmatch(text.replace(" ", "")):
        return canonical(text)
    parsed = _parse(text)
    if not parsed or isinstance(parsed[0], str):  # math-verify gives back only the string when it fails
        raise ValueError(f"Cannot read {text!r} as a number or LaTeX expression.")
    return text


def _parse(text: str):
    wrapped = text if ("$" in text or "\\boxed" in text) else f"${text}$"
    return mv_parse(wrapped, parsing_timeout=None)


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """True when two answers are mathematically equal (math-verify; `\\frac{1}{2}` == 0.5)."""
    if predicted is None or gold is None:
        return False
    a, b = canonical(predicted), canonical(gold)
    if a == b:
        return True
    try:
        gold_parsed, pred_parsed = _parse(str(gold)), _parse(str(predicted))
        if not gold_parsed or not pred_parsed:
            return False
        return bool(mv_verify(gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # math-verify raises on exotic input; unequal is the safe reading
        return False


@dataclass
class Vote:
    """Agreement of K sampled answers. `counts` maps canonical answer -> votes (None = no answer)."""

    majority: str | None
    share: float  # votes for the majority / K, in [0, 1]
    n_distinct: int  # distinct answers, "no answer" counted as one
    entropy: float  # Shannon entropy of the vote distribution, nats
    counts: dict = field(default_factory=dict)


def majority_vote(answers: list[str | None]) -> Vote:
    """Group answers by canonical key and vote. Ties go to the answer seen first.

    "No answer" counts against agreement but never wins: a problem whose samples all fail to
    answer has majority None and share 0.
    """
    keys = [canonical(a) for a in answers]
    counts = Counter(keys)
    total = len(keys)
    if total == 0:
        return Vote(None, 0.0, 0, 0.0, {})
    order = {k: i for i, k in reversed(list(enumerate(keys)))}
    ranked = sorted((k for k in counts if k is not None), key=lambda k: (-counts[k], order[k]))
    majority = ranked[0] if ranked else None
    share = counts[majority] / total if majority is not None else 0.0
    probs = [c / total for c in counts.values()]
    entropy = float(-sum(p * math.log(p) for p in probs if p > 0))
    return Vote(majority, share, len(counts), entropy, {str(k): v for k, v in counts.items()})
