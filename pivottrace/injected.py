"""An injected-error pool: correct worked solutions with one error planted at a known place.

Input: correct chains (GSM8K gold solutions, or any chain whose "a op b = c" lines are right).
Output: `InjectedChain`s, each a completion text with one arithmetic error planted in one
equation and carried forward (later equations that used the changed number are recomputed, and
later mentions of it, the final answer included, follow), plus the character position where the
first wrong text starts. Teacher-forcing these through the analysis pass gives chains whose first
wrong step is known, so pivot localisation can be measured without people (localisation.py).
Three error kinds, the slips a weak reasoner makes:
- "operation": the first operator of the equation is swapped (+ <-> -, * -> +, / -> *);
- "number": the result is off by a small amount (an arithmetic slip);
- "dropped": one operand is left out (with two operands: replaced by another number in the text).
It does not run a model, split steps or score anything.
"""

from __future__ import annotations

import ast
import json
import operator
import random
import re
from dataclasses import dataclass
from pathlib import Path

ERROR_KINDS = ("operation", "number", "dropped")
_NUM = r"\d[\d,]*(?:\.\d+)?"
# "a op b (op c)* = r", with optional $ before numbers; x / × are read as *.
_EQUATION_RE = re.compile(rf"(?<![\w.,])\$?({_NUM}(?:\s*[-+*/x×]\s*\$?{_NUM})+)\s*=\s*\$?({_NUM})(?![\d,]*\.\d)")
_NUMBER_RE = re.compile(rf"(?<![\w.,]){_NUM}(?![\w])")
_TOKEN_RE = re.compile(rf"\$?({_NUM})|([-+*/x×])")
_GSM_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SWAP = {"+": "-", "-": "+", "*": "+", "x": "+", "×": "+", "/": "*"}


class InjectionError(ValueError):
    """The chain has no equation the injector can change."""


@dataclass
class InjectedChain:
    problem: str  # problem text
    clean: str  # the correct completion
    completion: str  # the completion with the error planted and carried forward
    error_char: int  # index in `completion` of the first character that differs from `clean`
    kind: str  # one of ERROR_KINDS
    equation: str  # the equation as it was
    wrong_equation: str  # as planted
    clean_answer: str
    answer: str  # final answer of the injected chain


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def _fmt(value: float, like: str = "") -> str:
    """`value` as the text writes numbers: an integer when whole, thousands commas when `like` has them."""
    if abs(value - round(value)) < 1e-9:
        return f"{int(round(value)):,}" if "," in like else str(int(round(value)))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def evaluate(expression: str) -> float:
    """Value of "a op b ..." (numbers and + - * / x ×, commas and $ allowed), normal precedence."""
    clean = expression.replace("$", "").replace(",", "").replace("×", "*").replace("x", "*")
    node = ast.parse(clean, mode="eval").body

    def walk(n):
        if isinstance(n, ast.BinOp) and type(n.op) in _OPS:
            return _OPS[type(n.op)](walk(n.left), walk(n.right))
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)):
            return float(n.value)
        raise InjectionError(f"not plain arithmetic: {expression!r}")

    return walk(node)


def correct_equations(text: str) -> list[re.Match]:
    """The equations of `text` whose stated result is right (to 0.01)."""
    out = []
    for match in _EQUATION_RE.finditer(text):
        try:
            if abs(evaluate(match.group(1)) - _value(match.group(2))) < 1e-2:
                out.append(match)
        except (InjectionError, ZeroDivisionError, SyntaxError):
            continue
    return out


def _wrong_expression(expression: str, kind: str, rng: random.Random) -> str:
    """The expression with the error of `kind` planted ("number" leaves it as it is)."""
    tokens = list(_TOKEN_RE.finditer(expression))
    ops = [t for t in tokens if t.group(2)]
    numbers = [t for t in tokens if t.group(1)]
    if kind == "operation":
        first = ops[0]
        return expression[:first.start()] + _SWAP[first.group(2)] + expression[first.end():]
    if kind == "dropped":
        if len(numbers) >= 3:  # leave out the last operand and the operator before it
            return expression[:ops[-1].start()].rstrip()
        target = rng.choice(numbers)  # two operands: one becomes a nearby, different number
        value = _value(target.group(1))
        new = value + rng.choice([d for d in range(-3, 4) if d and value + d > 0])
        return expression[:target.start(1)] + _fmt(new, target.group(1)) + expression[target.end(1):]
    return expression


def inject(problem: str, clean: str, *, rng: random.Random, kind: str | None = None,
           equation_index: int | None = None) -> InjectedChain:
    """Plant one error of `kind` (random if None) in a random correct equation of `clean`."""
    equations = correct_equations(clean)
    if not equations:
        raise InjectionError("no correct 'a op b = c' equation to change")
    kinds = [kind] if kind else rng.sample(ERROR_KINDS, len(ERROR_KINDS))
    order = [equation_index] if equation_index is not None else rng.sample(range(len(equations)), len(equations))
    for index in order:
        match = equations[index]
        expression, result = match.group(1), _value(match.group(2))
        for chosen in kinds:
            wrong = _wrong_expression(expression, chosen, rng)
            try:
                new = evaluate(wrong)
            except (ZeroDivisionError, InjectionError, SyntaxError):
                continue
            if chosen == "number":
                new = result + rng.choice([d for d in (-3, -2, -1, 1, 2, 3, 10) if result + d >= 0])
            if new < 0 or abs(new - result) < 1e-9 or abs(new - round(new, 2)) > 1e-9:
                continue
            return _carry(problem, clean, match, wrong, result, new, chosen)
    raise InjectionError("no equation takes an error of that kind")


def _carry(problem: str, clean: str, match: re.Match, wrong: str, old: float, new: float, kind: str) -> InjectedChain:
    """Write the wrong equation, then carry the changed values through the rest of the text."""
    changed = {_fmt(old): new}  # value shown in the clean text -> its value in the injected chain
    planted = _equation(clean, match, wrong, new)
    out = [clean[:match.start()], planted]
    rest, position = clean[match.end():], 0
    for later in _EQUATION_RE.finditer(rest):
        out.append(_replace_numbers(rest[position:later.start()], changed))
        expression = _replace_numbers(later.group(1), changed)
        try:
            value = evaluate(expression)
        except (ZeroDivisionError, InjectionError, SyntaxError):
            value = _value(later.group(2))
        if abs(value - _value(later.group(2))) > 1e-9:
            changed[_fmt(_value(later.group(2)))] = value
        out.append(_equation(rest, later, expression, value))
        position = later.end()
    out.append(_replace_numbers(rest[position:], changed))
    completion = "".join(out)
    first_diff = next((i for i, (a, b) in enumerate(zip(clean, completion)) if a != b), min(len(clean), len(completion)))
    answer_line = re.findall(r"Answer:\s*\$?(-?" + _NUM + ")", completion)
    clean_line = re.findall(r"Answer:\s*\$?(-?" + _NUM + ")", clean)
    return InjectedChain(problem, clean, completion, first_diff, kind, match.group(0), planted,
                         clean_line[-1] if clean_line else "", answer_line[-1] if answer_line else "")


def _equation(text: str, match: re.Match, expression: str, result: float) -> str:
    """The equation `match` of `text` with its expression and result replaced, spacing and $ kept."""
    return (text[match.start():match.start(1)] + expression + text[match.end(1):match.start(2)]
            + _fmt(result, match.group(2)) + text[match.end(2):match.end()])


def _replace_numbers(text: str, changed: dict[str, float]) -> str:
    """Numbers in `text` whose value was changed, written with their new value."""
    def swap(m: re.Match) -> str:
        key = _fmt(_value(m.group(0)))
        return _fmt(changed[key], m.group(0)) if key in changed else m.group(0)

    return _NUMBER_RE.sub(swap, text)


def gsm8k_chain(answer: str) -> str:
    """A GSM8K gold solution as a chain in the prompt's format: calculator annotations removed,
    "#### n" turned into the final "Answer: n" line."""
    body, _, final = answer.partition("####")
    body = _GSM_ANNOTATION_RE.sub("", body).strip()
    return f"{body}\nAnswer: {final.strip()}"


def gsm8k_pool(path: str | Path, *, n: int, seed: int = 0, skip: int = 0) -> list[InjectedChain]:
    """Injected chains from the first GSM8K problems (after `skip`) whose gold has a changeable
    equation, kinds taking turns; up to `n` chains."""
    rng = random.Random(seed)
    chains: list[InjectedChain] = []
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            if index < skip:
                continue
            if len(chains) >= n:
                break
            row = json.loads(line)
            clean = gsm8k_chain(row["answer"])
            kind = ERROR_KINDS[len(chains) % len(ERROR_KINDS)]
            try:
                chains.append(inject(row["question"], clean, rng=rng, kind=kind))
            except InjectionError:
                try:
                    chains.append(inject(row["question"], clean, rng=rng))
                except InjectionError:
                    continue
    return chains
