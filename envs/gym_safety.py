"""Which reasoning-gym verifiers run in this process, and the guards the others get (docs/gym.md).

The table was made by reading each task's ``score_answer`` in reasoning-gym 0.1.25 and every helper it calls.
A verifier is ``IN_PROCESS`` only when all it does with the model's answer is string work (equality, ``lower``,
``split``, ``strip``, substring search, per-character comparison) or ``int()`` / ``float()`` of pieces of it,
each bounded by the answer's length (which is capped before any verifier sees it). Everything else — sympy,
``eval``, ``json.loads``, regular expressions, ``Decimal``, ``complex``, game or board simulations, data-file
lookups, anything not read — runs in the resource-limited worker (``tinyzero.envs.gym_worker``).

Two groups in the worker get an extra guard because their verifiers evaluate the answer as code:
- ``EVALS_ANSWER``: they call Python's ``eval`` on it; inside the worker ``eval`` in reasoning-gym's modules is
  replaced by ``literal_value``, which accepts literals and integer arithmetic only;
- ``PARSES_MATH``: they hand it to sympy's ``parse_expr``, which runs it as Python with builtins in reach
  (``open(0)`` works); answers must first pass ``math_answer_ok``, an allow-list of characters and names.
Simplification: the worker is not a sandbox (no seccomp, no namespaces); the guards remove the code paths we
found, and the limits bound what is left.
"""

from __future__ import annotations

import ast
import re

# Classes that inherit reasoning-gym's default score_answer (exact match, else the oracle as a substring of the
# answer: len(oracle) / len(answer)) — found with `type(ds).score_answer is ProceduralDataset.score_answer`.
DEFAULT_VERIFIER = frozenset({
    "acre", "aiw", "arc_1d", "base_conversion", "basic_arithmetic", "bf", "binary_alternation", "caesar_cipher",
    "count_bits", "count_primes", "course_schedule", "gcd", "isomorphic_strings", "largest_island", "lcm",
    "leg_counting", "letter_counting", "list_functions", "mahjong_puzzle", "maze", "modulo_grid",
    "number_filtering", "number_sequence", "ransom_note", "rotate_matrix", "rotten_oranges", "simple_equations",
    "simple_geometry", "string_manipulation", "string_splitting", "string_synthesis", "syllogism",
    "word_sequence_reversal",
})

# Overriding verifiers read and found to be bounded string work (one line each in docs/gym.md says what).
READ_SAFE = frozenset({
    "ab", "circuit_logic", "color_cube_rotation", "dice", "emoji_mystery", "family_relationships",
    "figlet_font", "futoshiki", "game_of_life_halting", "kakurasu", "knights_knaves", "letter_jumble",
    "manipulate_matrix", "mini_sudoku", "needle_haystack", "number_format", "palindrome_generation",
    "path_star", "prime_factorization", "rectangle_count", "self_reference", "sentence_reordering",
    "shortest_path", "spell_backward", "sudoku", "survo", "word_ladder", "zebra_puzzles",
})

IN_PROCESS = DEFAULT_VERIFIER | READ_SAFE

# What each READ_SAFE verifier does with the answer (all bounded by the answer's capped length).
READ_SAFE_WHY = {
    "ab": "exact match",
    "circuit_logic": "exact match, or match after strip (partial credit by length)",
    "color_cube_rotation": "lower-cased exact match (0.01 for any other answer)",
    "dice": "lower-cased match with newlines removed",
    "emoji_mystery": "exact match, else per-character comparison",
    "family_relationships": "lower-cased exact match",
    "figlet_font": "lower-cased match, else per-character comparison",
    "futoshiki": "per-line strip, int() of single digit characters, grid comparison",
    "game_of_life_halting": "bool(answer) == bool(oracle), and bool('False') is True: any non-empty answer scores 1 "
                            "(gym_checks checks the boolean first)",
    "kakurasu": "int() of single 0/1 characters, row and column sums over the metadata's grid size",
    "knights_knaves": "lower/replace/split into words, set comparison",
    "letter_jumble": "lower-cased match, else word-by-word comparison",
    "manipulate_matrix": "exact match, else split into rows and words and re-joined",
    "mini_sudoku": "per-line strip, int() of single digit characters, grid comparison",
    "needle_haystack": "lower-cased match with spaces removed",
    "number_format": "float() of the stripped answer, compared within 0.01",
    "palindrome_generation": "reverse and sorted letters compared",
    "path_star": "whitespace-normalised exact match",
    "prime_factorization": "split on ×, int() of each factor, sorted lists and math.prod compared",
    "rectangle_count": "int() of the answer, distance to the oracle",
    "self_reference": "exact match",
    "sentence_reordering": "exact match, else word-by-word comparison",
    "shortest_path": "split into moves, walked over the stored grid (at most one step per word)",
    "spell_backward": "lower-cased match, else per-character comparison",
    "sudoku": "per-line strip, int() of single digit characters, grid comparison",
    "survo": "split into rows, int() of each token, grid comparison",
    "word_ladder": "split on commas, per-word checks against a word set",
    "zebra_puzzles": "lower-cased match with newlines removed",
}

# Verifiers that call eval() on the answer (binary_matrix, n_queens, spiral_matrix, string_insertion) or on the
# oracle/problem text (number_sorting, bitwise_arithmetic): eval is swapped for literal_value in the worker.
EVALS_ANSWER = frozenset({
    "binary_matrix", "bitwise_arithmetic", "n_queens", "number_sorting", "spiral_matrix", "string_insertion",
})

# Verifiers that give the answer to sympy's parse_expr (which evaluates it as Python).
PARSES_MATH = frozenset({
    "countdown", "intermediate_integration", "polynomial_multiplication", "puzzle24", "simple_integration",
})

# Why each worker task is there: the first thing in its verifier that is not bounded string work.
WORKER_WHY = {
    "advanced_geometry": "float() then numpy rounding of parsed coordinates",
    "arc_agi": "parses a grid; metadata holds tuples (entries are regenerated from the seed)",
    "binary_matrix": "eval() of the answer",
    "bitwise_arithmetic": "eval() of the problem, int(answer, 0)",
    "boxnet": "json.loads and regular expressions over the answer, then a simulation",
    "calendar_arithmetic": "date parsing and math.exp",
    "chain_sum": "Decimal() of the answer",
    "codeio": "json.loads of the answer and a tree edit distance (zss)",
    "coin_flip": "Fraction() / float() of the answer",
    "complex_arithmetic": "complex() of the answer and a loop",
    "composite": "delegates to the verifiers of the tasks it mixes",
    "countdown": "sympy parse_expr of the answer",
    "cryptarithm": "parses and checks a letter-to-digit mapping",
    "decimal_arithmetic": "Decimal arithmetic with powers",
    "decimal_chain_sum": "Decimal() of the answer",
    "fraction_simplification": "regular expression over the answer, int() of its parts",
    "game_of_life": "json.loads of the answer",
    "graph_color": "json.loads of the answer",
    "group_anagrams": "json.loads of the answer",
    "gsm_symbolic": "regular expression over the answer",
    "intermediate_integration": "sympy parse_expr, diff and simplify of the answer",
    "jugs": "json.loads of the answer, then a simulation",
    "knight_swap": "json.loads of the answer, then a simulation",
    "n_queens": "eval() of the answer",
    "number_sorting": "eval() and json.loads",
    "palindrome_partitioning": "json.loads of the answer",
    "polynomial_equations": "float() of parts, math.exp, matching loops",
    "polynomial_multiplication": "sympy parse_expr of the answer",
    "pool_matrix": "numpy.loadtxt of the answer",
    "power_function": "Decimal() of the answer, quantize",
    "products": "Decimal() of the answer",
    "propositional_logic": "its own expression parser and evaluator over the answer",
    "puzzle24": "sympy parse_expr of the answer",
    "quantum_lock": "regular expression over the answer, then a simulation",
    "rearc": "parses a grid; metadata holds tuples (entries are regenerated from the seed)",
    "rubiks_cube": "regular expressions and a cube simulation of the answer's moves (with powers)",
    "rush_hour": "a board simulation of the answer's moves",
    "simple_integration": "sympy parse_expr, diff and simplify of the answer",
    "sokoban": "a game simulation of the answer's moves",
    "spiral_matrix": "eval() of the answer",
    "string_insertion": "eval() of the answer",
    "time_intervals": "date/time parsing of the answer",
    "tower_of_hanoi": "regular expressions and a simulation of the answer's moves",
    "tsumego": "regular expression over the answer",
    "word_sorting": "re.split of the answer",
}


def placement(task: str) -> str:
    """``in-process`` or ``worker``; a task this table does not know (a newer reasoning-gym) goes to the worker."""
    return "in-process" if task in IN_PROCESS else "worker"


# --- the guard for PARSES_MATH: the answer may only be arithmetic over single letters and math functions.
MATH_NAMES = frozenset({
    "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp", "log", "ln",
    "sqrt", "pi", "oo", "abs", "Abs",
})
_MATH_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-*/^()., \t\n×÷−=")
_NAME = re.compile(r"[A-Za-z]+")  # no backtracking: one character class, maximal runs


def math_answer_ok(text: str) -> bool:
    """True when ``text`` is only digits, operators, brackets and names that are single letters or MATH_NAMES.

    Blocks what turns parse_expr into a Python prompt: builtins (``open``, ``getattr``, ``chr``), underscores,
    quotes, attribute access (a dot is allowed only between digits, as in ``2.5``)."""
    if not set(text) <= _MATH_CHARS:
        return False
    for i, ch in enumerate(text):
        if ch == "." and not (0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()):
            return False
    return all(len(name) == 1 or name in MATH_NAMES for name in _NAME.findall(text))


# --- the stand-in for eval() inside the worker: literals and integer arithmetic, nothing else.
MAX_LITERAL_CHARS = 100_000
MAX_BITS = 4096  # integers past this many bits are refused, so no shift or product can grow without bound
_INT_OPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b, ast.BitAnd: lambda a, b: a & b,
    ast.BitOr: lambda a, b: a | b, ast.BitXor: lambda a, b: a ^ b,
    ast.LShift: lambda a, b: a << b, ast.RShift: lambda a, b: a >> b,
}
_UNARY = {ast.USub: lambda a: -a, ast.UAdd: lambda a: +a, ast.Invert: lambda a: ~a}


def literal_value(source, *_ignored):
    """What ``eval(source)`` gives for literals (numbers, strings, lists, tuples, dicts) and integer arithmetic
    (+ - * // % & | ^ << >> ~), or ValueError. Names, calls, attributes, powers and comprehensions are refused,
    as is any integer over MAX_BITS bits; the parser's own nesting limit bounds depth (SyntaxError)."""
    if not isinstance(source, str) or len(source) > MAX_LITERAL_CHARS:
        raise ValueError("not a literal of bounded size")
    return _value(ast.parse(source.strip(), mode="eval").body)


def _checked(value):
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ValueError("integer too large")
    return value


def _value(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool | type(None)):
        return _checked(node.value)
    if isinstance(node, ast.List | ast.Tuple):
        items = [_value(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict) and all(k is not None for k in node.keys):
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _value(node.operand)
        if isinstance(operand, int | float) and not (isinstance(operand, float) and isinstance(node.op, ast.Invert)):
            return _checked(_UNARY[type(node.op)](operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _INT_OPS:
        left, right = _value(node.left), _value(node.right)
        if type(left) is int and type(right) is int:
            if isinstance(node.op, ast.LShift) and not 0 <= right <= MAX_BITS:
                raise ValueError("shift out of range")
            return _checked(_INT_OPS[type(node.op)](left, right))
    raise ValueError(f"not allowed in a literal: {type(node).__name__}")
