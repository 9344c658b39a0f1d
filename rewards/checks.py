"""Task-grounded verification detectors: does a completion check a candidate answer against the task?

These are not rewards (nothing here changes a score); they feed the ``aha/verification_*`` metrics
(docs/metrics.md). Each detector is a pure function of ``(text, problem)`` returning :class:`Checks`: the
character spans of the checks found and how many distinct candidates the text tried. Like the rewards, they
never evaluate model output as code: equations are read with the allow-listed countdown parser
(``rewards/expr.py``) and evaluated in exact rationals.

How an equation is found, linearly: a greedy run of expression characters (ASCII digits, ``+ - * / × ÷``,
parentheses, spaces and tabs; never a newline) that starts at a digit or ``(``, immediately followed by a
relation (``=``, ``==``, ``≠``, ``!=``, ``<``, ``>``, ``equals``, ``is``) and a number. When that number
starts another expression (``3 + 5 = 8 + 7 = 15``) the equation is a link of a chain (``chained``): its number
is a derived value, never a checked or stated result. Runs are disjoint and
each is read once, so the scan is linear in the text; a run longer than ``MAX_RUN`` characters is skipped.

Simplifications (all documented in docs/metrics.md): unary minus is not read (``-3 + 5`` is read as ``3 + 5``
only if the run starts at the digit, so it is dropped as a candidate); a value written in words ("twenty") is
not a number; the comparison that makes an equation a *check* must sit on the same line, within ``TAIL``
characters after the claimed value and before the next ``=``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction

from tinyzero.rewards.expr import ExprError, Parsed, evaluate, parse

MAX_RUN = 200  # longest expression run read; longer runs are not candidates (no model writes one to check)
TAIL = 40  # characters after the claimed value searched for the comparison with the target

# A run of expression characters, then (anchored at the run's end) a relation and a number.
_RUN = re.compile(r"[0-9(][0-9 \t+\-*/×÷()]*")
_REL = re.compile(r"(==|=|≠|!=|<|>|equals\b|is\b)[ \t]*(-?[0-9]{1,30})(?![0-9]|\.[0-9])", re.IGNORECASE)
# After the number: an operator and an operand mean the number starts the next expression of a chain
# ("3 + 5 = 8 + 7 = 15"), so it is a derived value, not a claimed result (bounded: matching stays linear).
_CHAIN = re.compile(r"[ \t]{0,3}[-+*/×÷][ \t]{0,3}[0-9(]")
# Verdicts that compare a value with the target without naming it ("that's too big", "= 22 ✓").
_VERDICT = re.compile(
    r"✓|✔|✅|✗|✘|❌|\b(?:correct|incorrect|wrong|works|bingo|too\s(?:big|large|high|much|small|low|little)"
    r"|not\senough)\b",
    re.IGNORECASE,
)
_INT = re.compile(r"(?<![0-9])-?[0-9]{1,30}(?![0-9])")
_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/"})


@dataclass(frozen=True)
class Checks:
    """What a detector found in one text.

    spans: (start, end) character offsets of each check, in order, non-overlapping
    candidates: distinct candidate answers the text evaluated (0 where the task has no such notion)
    """

    spans: tuple[tuple[int, int], ...] = ()
    candidates: int = 0


@dataclass(frozen=True)
class Equation:
    """``expr rel number`` as written: its span, the canonical expression, its literals, the claimed value."""

    start: int
    end: int  # end of the claimed number
    expr: str  # whitespace removed, × ÷ mapped to * /
    parsed: Parsed
    literals: tuple[int, ...]
    rel: str
    claimed: int
    chained: bool  # the claimed number starts the next expression of a chain

    def value(self) -> Fraction | None:
        """The exact value of the expression; None on division by zero."""
        try:
            return evaluate(self.parsed, {str(n): n for n in self.literals})
        except ExprError:
            return None


def equations(text: str) -> Iterator[Equation]:
    """Every ``expr rel number`` with at least one operator, in order (see the module docstring)."""
    for run in _RUN.finditer(text):
        raw = run.group()
        if len(raw) > MAX_RUN:
            continue
        rel = _REL.match(text, run.end())
        if rel is None:
            continue
        expr = "".join(raw.split()).translate(_UNICODE_OPS)
        # "(3 + 5 = 8)": the run holds an opening parenthesis whose partner lies past the relation.
        start = run.start()
        while expr.startswith("(") and expr.count("(") > expr.count(")"):
            expr = expr[1:]
            start = text.index("(", start) + 1
        if not any(op in expr for op in "+-*/"):
            continue
        try:
            parsed = parse(expr)
        except ExprError:
            continue
        # Literals are at most MAX_RUN digits long: converting them is cheap. The detectors compare the value
        # the text *claims*; the exact value is computed only on request (``Equation.value``), as it is slower.
        literals = tuple(int(lit) for lit in parsed.literals)
        chained = _CHAIN.match(text, rel.end()) is not None
        yield Equation(start, rel.end(), expr, parsed, literals, rel.group(1).lower(), int(rel.group(2)), chained)


def _line_tail(text: str, pos: int) -> str:
    """Up to TAIL characters after ``pos``, cut at the end of the line and at the next ``=``."""
    tail = text[pos : pos + TAIL]
    for stop in ("\n", "="):
        cut = tail.find(stop)
        if cut >= 0:
            tail = tail[:cut]
    return tail


def countdown_checks(text: str, problem: Mapping) -> Checks:
    """Candidate expressions over the problem's numbers whose value is compared with the target.

    A candidate is an equation whose literals are all the problem's numbers or values the text derived
    earlier (``3 * 5 = 15`` makes 15 usable, so ``15 + 7 = 22 ✓`` counts). It is a *check* when it
    compares with the target: the relation is ``≠ != < >`` against the target itself, or after ``= V`` the
    rest of the line (up to the next ``=``) names the target ("= 20, not 22") or gives a verdict ("too big",
    "✓"). A comparison against a number that is not the target is not a check.
    """
    numbers, target = problem.get("numbers", problem.get("nums")), problem.get("target")
    if not isinstance(numbers, list | tuple) or not isinstance(target, int):
        return Checks()
    usable = {n for n in numbers if isinstance(n, int)}
    spans: list[tuple[int, int]] = []
    tried: set[str] = set()
    for eq in equations(text):
        if not all(lit in usable for lit in eq.literals):
            continue
        usable.add(eq.claimed)
        if eq.chained:
            continue
        tried.add(eq.expr)
        if eq.rel in ("≠", "!=", "<", ">"):
            is_check, end = eq.claimed == target, eq.end
        else:
            tail = _line_tail(text, eq.end)
            # The comparison's end closes the span: the earliest mention of the target or verdict.
            ends = [m.end() for m in _INT.finditer(tail) if int(m.group()) == target][:1]
            verdict = _VERDICT.search(tail)
            ends += [verdict.end()] if verdict else []
            is_check = bool(ends)
            end = eq.end + min(ends) if ends else eq.end
        if is_check and (not spans or eq.start >= spans[-1][1]):
            spans.append((eq.start, end))
    return Checks(tuple(spans), len(tried))


def arithmetic_checks(text: str, problem: Mapping) -> Checks:
    """Re-computing the result a second way.

    The text first states a result for the question (an equation ``a op b = R``). A check is any later
    equation that is not the question itself and either reaches a stated result R by another expression
    (``40 + 45 = 85``) or undoes the operation from R back to an operand (``85 - 38 = 47``, literals holding R,
    value an operand). ``candidates``: distinct results R stated for the question.
    """
    a, b, op = problem.get("a"), problem.get("b"), problem.get("op")
    if not isinstance(a, int) or not isinstance(b, int) or op not in ("+", "-", "*"):
        return Checks()
    question = (abs(a), abs(b))
    results: set[int] = set()
    spans: list[tuple[int, int]] = []
    for eq in equations(text):
        if eq.chained:
            continue
        if eq.literals == question and op in eq.expr and eq.rel in ("=", "==", "equals", "is"):
            results.add(eq.claimed)
            continue
        if not results or eq.rel not in ("=", "==", "equals", "is"):
            continue
        reaches = eq.claimed in results
        undoes = bool(results.intersection(eq.literals)) and eq.claimed in (a, b)
        if reaches or undoes:
            spans.append((eq.start, eq.end))
    return Checks(tuple(spans), len(results))
