"""Split a reasoning chain into steps, and find self-correction cues in each step.

Input: completion text. Output: contiguous character spans that cover the whole text, and per
step the number of reflection markers. Pure text: no tokenizer, no model, no scoring.
"""

from __future__ import annotations

import re

# Reflection markers (DESIGN.md §3, "self-correction cue"): curated from the self-verification
# literature ("aha moment", Thought Anchors). Matched case-insensitively on word boundaries.
CUE_PATTERNS = (
    r"wait", r"actually", r"hmm+", r"let me (?:re-?)?check", r"re-?check", r"double[- ]check",
    r"alternatively", r"however", r"mistake", r"oops", r"on second thought", r"let me reconsider",
    r"that(?:'s| is) (?:not right|wrong|incorrect)", r"i made an error", r"correction", r"instead",
    r"re-?calculate", r"let me verify", r"verify", r"no,",
)
_CUE_RE = re.compile(r"(?<![\w-])(?:" + "|".join(CUE_PATTERNS) + r")(?![\w-])", re.I)

# A boundary after: a blank line; any line break (numbered items, bullets, equations sit on
# their own lines); or a sentence end (. ! ?) followed by whitespace and a capital, digit or
# bullet. "3.5" and "e.g. the" do not split.
_BOUNDARY_RE = re.compile(r"\n\s*\n|\n|(?<=[.!?])[ \t]+(?=[A-Z0-9*\-(])")
MIN_STEP_CHARS = 4  # shorter fragments ("1.", "**") are merged into the following step


def segment_steps(text: str) -> list[tuple[int, int]]:
    """Contiguous (start, end) character spans covering `text`; whitespace joins the step before it.

    >>> segment_steps("First add 2. Then 3.\\n\\nAnswer: 5")
    [(0, 13), (13, 22), (22, 31)]
    """
    if not text:
        return []
    cuts = [0]
    for match in _BOUNDARY_RE.finditer(text):
        if match.end() < len(text):
            cuts.append(match.end())
    cuts.append(len(text))
    spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
    merged: list[tuple[int, int]] = []
    pending_start = None
    for start, end in spans:
        if pending_start is not None:
            start = pending_start
            pending_start = None
        if len(text[start:end].strip()) < MIN_STEP_CHARS and end < len(text):
            pending_start = start
            continue
        merged.append((start, end))
    if pending_start is not None:  # a short tail joins the last step
        if merged:
            merged[-1] = (merged[-1][0], len(text))
        else:
            merged.append((pending_start, len(text)))
    if merged and not text[merged[0][0]:merged[0][1]].strip() and len(merged) > 1:
        merged[1] = (merged[0][0], merged[1][1])
        merged.pop(0)
    return merged


def cue_counts(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Q[s]: number of reflection markers in each step."""
    return [len(_CUE_RE.findall(text[a:b])) for a, b in spans]


def cue_words(text: str) -> list[str]:
    """The reflection markers found in `text`, lower-cased, in order."""
    return [m.group(0).lower() for m in _CUE_RE.finditer(text)]
