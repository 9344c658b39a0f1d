"""A bounded, allow-listed parser and exact evaluator for countdown equations.

Grammar (ASCII only; whitespace between tokens is ignored)::

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := INTEGER | '(' expr ')'
    INTEGER:= one or more of 0123456789

Anything else is rejected: unary minus, powers, decimals, exponents, underscores, hex, ``=``, other
operators and non-ASCII digits. Parsing is an iterative shunting-yard pass (no recursion, so deep
nesting cannot overflow the stack), linear in the input, whose length the caller bounds. Values are
exact rationals (:class:`fractions.Fraction`); nothing is ever handed to ``eval``.

Simplification: literals are kept as digit strings until the caller has checked them against the
problem's numbers, so a hostile 1,000-digit literal is never converted to an int.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

DIGITS = frozenset("0123456789")
WHITESPACE = frozenset(" \t\n\r\x0b\x0c")
OPERATORS = {"+": 1, "-": 1, "*": 2, "/": 2}  # operator -> precedence; all left-associative


class ExprError(ValueError):
    """The text is not a well-formed equation; ``reason`` is machine-readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Parsed:
    """An equation in reverse Polish order; literals are canonical digit strings (no leading zeros)."""

    rpn: tuple[str, ...]
    literals: tuple[str, ...]


def canonical_digits(digits: str) -> str:
    """``"007"`` -> ``"7"``, ``"000"`` -> ``"0"``: the value of a digit literal, still as text."""
    return digits.lstrip("0") or "0"


def tokenize(text: str) -> list[str]:
    """Split into integer literals, operators and parentheses; reject any other character."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in DIGITS:
            j = i + 1
            while j < n and text[j] in DIGITS:
                j += 1
            tokens.append(text[i:j])
            i = j
            continue
        if ch in OPERATORS or ch in "()":
            tokens.append(ch)
        elif ch not in WHITESPACE:
            raise ExprError("bad_character")
        i += 1
    return tokens


def parse(text: str) -> Parsed:
    """Check the grammar and convert to reverse Polish notation."""
    output: list[str] = []
    stack: list[str] = []
    literals: list[str] = []
    expect_operand = True
    for tok in tokenize(text):
        if expect_operand:
            if tok == "(":
                stack.append(tok)
            elif tok[0] in DIGITS:
                lit = canonical_digits(tok)
                literals.append(lit)
                output.append(lit)
                expect_operand = False
            else:  # an operator or ')' where a number belongs: unary minus, "()", "1+*2", ...
                raise ExprError("syntax")
        elif tok in OPERATORS:
            while stack and stack[-1] != "(" and OPERATORS[stack[-1]] >= OPERATORS[tok]:
                output.append(stack.pop())
            stack.append(tok)
            expect_operand = True
        elif tok == ")":
            while stack and stack[-1] != "(":
                output.append(stack.pop())
            if not stack:
                raise ExprError("syntax")  # unbalanced ')'
            stack.pop()
        else:  # a number or '(' right after an operand: implicit multiplication is not allowed
            raise ExprError("syntax")
    if expect_operand:
        raise ExprError("syntax")  # empty, or ends with an operator
    while stack:
        op = stack.pop()
        if op == "(":
            raise ExprError("syntax")  # unbalanced '('
        output.append(op)
    return Parsed(tuple(output), tuple(literals))


def evaluate(parsed: Parsed, values: dict[str, int]) -> Fraction:
    """Evaluate exactly; ``values`` maps each canonical literal to its int. Raises ExprError."""
    stack: list[Fraction] = []
    for tok in parsed.rpn:
        if tok in OPERATORS:
            right = stack.pop()
            left = stack.pop()
            if tok == "+":
                stack.append(left + right)
            elif tok == "-":
                stack.append(left - right)
            elif tok == "*":
                stack.append(left * right)
            else:
                if right == 0:
                    raise ExprError("division_by_zero")
                stack.append(left / right)
        else:
            stack.append(Fraction(values[tok]))
    return stack[0]

