"""Table-driven reward cases, hostile inputs included, plus property tests (echoing the prompt earns nothing)."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyzero.envs import render_prompt
from tinyzero.envs.arithmetic import ANSWER_FORMATS, Arithmetic, ArithmeticOptions
from tinyzero.envs.countdown import Countdown, CountdownOptions
from tinyzero.rewards import (
    arithmetic_reward,
    countdown_reward,
    extract_answer,
    last_integer_answer,
    last_integer_reward,
)

P = {"numbers": [3, 5, 7], "target": 22}  # 3 * 5 + 7


def tag(body: str) -> str:
    return f"<think>working</think> <answer>{body}</answer>"


COUNTDOWN_CASES = [
    # (completion, problem, score, correct, reason)
    (tag("3 * 5 + 7"), P, 1.0, True, "correct"),
    (tag("7 + 5 * 3"), P, 1.0, True, "correct"),
    (tag("(3*5)+7"), P, 1.0, True, "correct"),
    (tag("\n  3 * 5\n + 7 \t"), P, 1.0, True, "correct"),  # content spans lines
    (tag("3 * 5 + 7") + "\n", P, 1.0, True, "correct"),  # newline after </answer> (reference: 0)
    (tag("3 * 5 + 7") + " and that is my answer", P, 1.0, True, "correct"),
    (tag("1 + 1") + " " + tag("3 * 5 + 7"), P, 1.0, True, "correct"),  # last complete pair wins
    (tag("3 * 5 + 7") + " " + tag("1 + 1"), P, 0.0, False, "wrong_numbers"),
    (tag("3 * 5 + 7") + " <answer>1 + 1", P, 1.0, True, "correct"),  # unfinished pair is ignored
    ("<answer>junk<answer>3*5+7</answer>", P, 1.0, True, "correct"),
    ("<answer>3*5+7</answer></answer>", P, 1.0, True, "correct"),
    ("<Answer>3*5+7</Answer>", P, 0.0, False, "no_answer"),  # tags are case-sensitive
    ("3 * 5 + 7", P, 0.0, False, "no_answer"),
    ("<answer>3 * 5 + 7", P, 0.0, False, "no_answer"),
    ("3 * 5 + 7</answer>", P, 0.0, False, "no_answer"),
    ("", P, 0.0, False, "no_answer"),
    (tag(""), P, 0.0, False, "empty"),
    (tag("   "), P, 0.0, False, "empty"),
    (tag("3.5 + 7"), P, 0.0, False, "bad_character"),  # reference: uses "3 and 5"
    (tag("3 * 5 + 7.0"), P, 0.0, False, "bad_character"),
    (tag("99**98**97"), {"numbers": [99, 98, 97], "target": 1}, 0.0, False, "syntax"),  # reference: hangs
    (tag("3 ** 5 + 7"), P, 0.0, False, "syntax"),
    (tag("3 ^ 5 + 7"), P, 0.0, False, "bad_character"),
    (tag("-3 + 5 * 7"), {"numbers": [3, 5, 7], "target": 32}, 0.0, False, "syntax"),  # unary minus
    (tag("5 * 7 + -3"), {"numbers": [3, 5, 7], "target": 32}, 0.0, False, "syntax"),
    (tag("3 * 5 + 7 = 22"), P, 0.0, False, "bad_character"),
    (tag("0x3 * 5 + 7"), P, 0.0, False, "bad_character"),
    (tag("3 * 5 + 1_0"), {"numbers": [3, 5, 10], "target": 25}, 0.0, False, "bad_character"),
    (tag("3e0 * 5 + 7"), P, 0.0, False, "bad_character"),
    (tag("\u0663 * 5 + 7"), P, 0.0, False, "bad_character"),  # Arabic-Indic three
    (tag("\uff13 * 5 + 7"), P, 0.0, False, "bad_character"),  # full-width three
    (tag("3\u00a0* 5 + 7"), P, 0.0, False, "bad_character"),  # no-break space is not ASCII whitespace
    (tag("\u20033 * 5 + 7"), P, 0.0, False, "bad_character"),  # Unicode space is not stripped
    (tag("3 * 5 % 7"), P, 0.0, False, "bad_character"),
    (tag("[3 * 5] + 7"), P, 0.0, False, "bad_character"),
    (tag("3 5 + 7"), P, 0.0, False, "syntax"),  # two literals side by side
    (tag("3 (5 + 7)"), P, 0.0, False, "syntax"),  # implicit multiplication
    (tag("(3 * 5 + 7"), P, 0.0, False, "syntax"),
    (tag("3 * 5) + 7"), P, 0.0, False, "syntax"),
    (tag("()3 * 5 + 7"), P, 0.0, False, "syntax"),
    (tag("3 * 5 + 7 +"), P, 0.0, False, "syntax"),
    (tag("3 * 5 + 7 + 7"), P, 0.0, False, "wrong_numbers"),  # a number twice
    (tag("3 * 5"), {"numbers": [3, 5, 7], "target": 15}, 0.0, False, "wrong_numbers"),  # one unused
    (tag("35 - 7 - 6"), {"numbers": [3, 5, 7, 6], "target": 22}, 0.0, False, "wrong_numbers"),
    (tag("3 * 5 - 7"), P, 0.1, False, "wrong_value"),
    (tag("1 / 2 * 4"), {"numbers": [1, 2, 4], "target": 2}, 1.0, True, "correct"),  # exact rationals
    (tag("4 / 3 * 3"), {"numbers": [4, 3, 3], "target": 4}, 1.0, True, "correct"),
    (tag("7 / 2"), {"numbers": [7, 2], "target": 3}, 0.1, False, "wrong_value"),  # 3.5, not 3
    (tag("3 + 5 / (5 - 5)"), {"numbers": [3, 5, 5, 5], "target": 3}, 0.1, False, "division_by_zero"),
    (tag("03 * 5 + 7"), P, 1.0, True, "correct"),  # a leading zero does not change the value
    (tag("(" * 300 + "3 * 5 + 7" + ")" * 300), P, 1.0, True, "correct"),  # deep nesting, no recursion
    (tag("3 *" + " " * 992 + "5 + 7"), P, 1.0, True, "correct"),  # 1,000 characters exactly
    (tag("3 *" + " " * 993 + "5 + 7"), P, 0.0, False, "too_long"),  # 1,001 characters
    (tag(" " * 5000 + "3 * 5 + 7" + "\n" * 5000), P, 1.0, True, "correct"),  # outer whitespace is stripped
    (tag("9" * 5000), P, 0.0, False, "too_long"),
    # TinyZero's parquet names the numbers "nums"; the reward reads either name.
    (tag("3*5+7"), {"nums": [3, 5, 7], "target": 22}, 1.0, True, "correct"),
]


@pytest.mark.parametrize("completion, problem, score, correct, reason", COUNTDOWN_CASES)
def test_countdown_table(completion, problem, score, correct, reason):
    result = countdown_reward(completion, problem)
    assert (result.score, result.correct, result.reason) == (score, correct, reason)


def test_countdown_format_score_is_configurable():
    assert countdown_reward(tag("3+5+7"), P, format_score=0.0).score == 0.0
    assert countdown_reward(tag("3+5+7"), P, format_score=0.25).score == 0.25
    assert countdown_reward(tag("3*5+7"), P, format_score=0.0).score == 1.0


A = {"answer": 47}

ARITHMETIC_CASES = [
    (tag("47"), A, 1.0, True),
    (tag("  47\n"), A, 1.0, True),
    (tag("047"), A, 1.0, True),
    (tag("47") + "\nso that's it", A, 1.0, True),
    (tag("46") + tag("47"), A, 1.0, True),
    (tag("47") + tag("46"), A, 0.1, False),
    (tag("+47"), A, 0.0, False),
    (tag("47.0"), A, 0.0, False),
    (tag("4 7"), A, 0.0, False),
    (tag("4_7"), A, 0.0, False),
    (tag("forty-seven"), A, 0.0, False),
    (tag("-47"), A, 0.1, False),
    (tag("\u0664\u0667"), A, 0.0, False),  # Arabic-Indic digits
    (tag("47\u00a0"), A, 0.0, False),
    (tag(""), A, 0.0, False),
    (tag("9" * 5000), A, 0.1, False),  # simply wrong, not a crash
    (tag("-12"), {"answer": -12}, 1.0, True),
    (tag("- 12"), {"answer": -12}, 0.0, False),
    (tag("--12"), {"answer": -12}, 0.0, False),
    (tag("-0"), {"answer": 0}, 1.0, True),
    (tag("0"), {"answer": 0}, 1.0, True),
    (tag("9" * 5000), {"answer": int("9" * 4000)}, 0.1, False),
    ("47", A, 0.0, False),
    ("<answer>47", A, 0.0, False),
    ("<ANSWER>47</ANSWER>", A, 0.0, False),
]


@pytest.mark.parametrize("completion, problem, score, correct", ARITHMETIC_CASES)
def test_arithmetic_table(completion, problem, score, correct):
    result = arithmetic_reward(completion, problem)
    assert (result.score, result.correct) == (score, correct)


@pytest.mark.parametrize(
    "completion, answer, correct",
    [
        ("12 + 35 = 47.", 47, True),
        ("The answer is 47", 47, True),
        ("47 is wrong, it is 46", 47, False),
        ("so 5-3 = 2", 2, True),
        ("it is -3", -3, True),
        ("5-3", 3, False),  # '-' after a digit is subtraction: ends in an operand, not an answer
        ("5-3", -3, False),
        ("5 - 3 = 2. So 2", 2, True),
        ("What is 20 - 10?", 10, False),  # the question echoed: 10 is an operand
        ("What is 20 - 10?\nThe answer is 10.", 10, True),
        ("7 * (1)", 1, False),
        ("(3 + 4) - 10", -10, False),  # subtraction after a closing parenthesis
        ("(3 + 4) - 10", 10, False),
        ("so it is (-3)", -3, True),
        ("20 - 23 = -3", -3, True),
        ("20 - 23 = - 3", -3, True),  # a sign may stand apart from its digits
        ("20 \u2212 10", 10, False),  # U+2212 minus sign restating the question
        ("7 \u00d7 1", 1, False),  # multiplication sign
        ("no digits here", 47, False),
        ("", 47, False),
        ("\u0664\u0667", 47, False),
        ("9" * 10000, 47, False),
        # Digits glued to other notation are not an integer (issue 18: each was read as the number shown).
        ("10^2", 2, False),
        ("= 0.90", 90, False),
        ("1_000", 0, False),
        ("4.7e1", 1, False),
        ("0x0", 0, False),
        ("0xFF", 0, False),
        ("1e-5", -5, False),
        ("10^-2", -2, False),
        ("10 ^ 2", 2, False),  # '^' with spaces: an operator, so 2 is an operand
        # ... while a full stop after an integer is punctuation.
        ("= 42", 42, True),
        ("42.", 42, True),
        ("The answer is 42.", 42, True),
        ("The answer is 42.\n\n", 42, True),
        ("pi is 3.14, so the answer is 3.", 3, True),
        ("10x", 10, True),  # "ten times": x after a 10, not a hex prefix
    ],
)
def test_last_integer(completion, answer, correct):
    assert last_integer_reward(completion, {"answer": answer}).correct is correct


@pytest.mark.parametrize("completion", ["10^2", "= 0.90", "-0.5", ".5", "1_000", "x_1", "4.7e1", "4.7E+1", "1e-5",
                                        "0x0", "0X1F", "0xFF", "v1.2.3"])
def test_digits_glued_to_other_notation_are_not_integer(completion):
    result = last_integer_reward(completion, {"answer": 0})
    assert (result.score, result.correct, result.reason) == (0.0, False, "not_integer")
    assert last_integer_answer(completion) is None  # the parser eval's majority vote counts


def test_last_integer_reasons():
    assert [last_integer_reward(t, {"answer": 1}).reason for t in ("no digits", "20 - 10", "10^2", "= 1.")] == \
        ["no_integer", "operand", "not_integer", "correct"]


def test_extract_answer_spans_lines():
    assert extract_answer("<answer>a\nb</answer>") == "a\nb"
    assert extract_answer("</answer><answer>") is None


# The promise (docs/rewards.md, README): any completion, even a megabyte of hostile text, scores in milliseconds.
# Measured on a 2-core AMD EPYC (AVX-512), best of five: at most 7.5 ms (the megabyte of digits under
# last_integer); Python loops over the text, as before this bound, took 40-50 ms. The best of nine runs drops
# the pauses other processes cause on a shared 2-core machine (best of five read 25.4 ms once, with three test
# processes and a training run on its 2 cores); 30 ms leaves 4x room over 7.5 ms and still catches a Python loop.
MEGABYTE_MS = 30.0


def best_ms(fn, *args, runs: int = 9) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


@pytest.mark.parametrize(
    "completion",
    [
        "<answer>" * 100_000 + "</answer>",
        "</answer>" * 100_000,
        "<answer>" + "(" * 500_000 + "</answer>",
        "<answer>" + "1+" * 400_000 + "1</answer>",
        "x" * 1_000_000,
        "<answer>" + "9" * 1_000_000 + "</answer>",
        "9" * 1_000_000,
        ("<answer>" + "3*5+7" + "</answer>") * 60_000,
        "1 - " * 250_000 + "1",  # last_integer: a megabyte of operators to look back over
        "(" * 1_000_000 + "5",
        "- " * 500_000 + "5",
        "0." * 500_000 + "5",  # last_integer: glued notation is judged from the characters next to the digits
    ],
    ids=lambda text: f"{len(text)}-chars-{text[:12]!r}",
)
def test_hostile_megabyte_inputs_score_in_milliseconds(completion):
    for reward, problem in ((countdown_reward, P), (arithmetic_reward, A), (last_integer_reward, A)):
        result = reward(completion, problem)
        assert 0.0 <= result.score <= 1.0
        elapsed = best_ms(reward, completion, problem)
        assert elapsed < MEGABYTE_MS, f"{reward.__name__} took {elapsed:.1f} ms"


def test_malformed_problem_raises_value_error():
    with pytest.raises(ValueError):
        countdown_reward(tag("1"), {"target": 3})
    with pytest.raises(ValueError):
        arithmetic_reward(tag("1"), {"answer": "1"})


tag_soup = st.lists(
    st.sampled_from(["<answer>", "</answer>", "(", ")", "+", "-", "*", "/", " ", "\n", "3", "5", "7", "0"])
    | st.text(max_size=5),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=2000), tag_soup))
def test_random_strings_never_raise(text):
    for reward, problem in ((countdown_reward, P), (arithmetic_reward, A), (last_integer_reward, A)):
        start = time.perf_counter()
        result = reward(text, problem)
        # A hang guard on one unrepeated call (its time includes any pause of the machine); the promise of
        # milliseconds is tested above, on inputs 500x longer.
        assert time.perf_counter() - start < 0.5
        assert result.score in (0.0, 0.1, 1.0)
        assert result.correct == (result.score == 1.0)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 10**15), a=st.integers(0, 10**6),
       lead=st.sampled_from(["", "The answer is ", "12 + 30 = ", "so x = ", "Result:\n", "(", "is -"]))
def test_an_integer_is_read_only_where_it_stands_alone(n, a, lead):
    """Ordinary endings ("= 42", "42.", "The answer is 42.") still answer n; n glued to a decimal point, power,
    separator, exponent or hex prefix does not, whatever n the problem wants."""
    sign = "-" if lead == "is -" and n else ""
    for ending in ("", ".", ".\n", "!", " ", ")", ".)"):
        text = f"{lead}{n}{ending}"
        result = last_integer_reward(text, {"answer": int(f"{sign}{n}")})
        assert (result.correct, result.reason) == (True, "correct"), text
    for shape in (f"{a}.{n}", f".{n}", f"{a}^{n}", f"{a}^-{n}", f"{a}_{n}", f"{a}e{n}", f"{a}e-{n}", f"{a}E+{n}", f"0x{n}",
                  f"0X{n}", f"{a}.{n}."):
        text = lead + shape
        for answer in (n, -n):
            result = last_integer_reward(text, {"answer": answer})
            assert (result.score, result.correct, result.reason) == (0.0, False, "not_integer"), text


# ------------------------------------------------------------------------------ echoing the question
def chatml(text: str) -> str:
    """A user turn as ChatML renders it (the tiny models', Qwen's and SmolLM2's chat format)."""
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def prompt_echoes(env, problem) -> list[str]:
    """The prompt as the model saw it (task text, base template, chat template), and quoted."""
    task = env.task_text(problem)
    shown = [task, render_prompt(env, problem, "base"), chatml(task)]
    return shown + [f'You asked: "{task}"', f"> {task}\n", "<answer>" + task + "</answer>"]


@st.composite
def arithmetic_problems(draw):
    """Problems of every digit count and operator, weighted towards those whose answer equals an operand
    (20 - 10, 0 + 7, 1 * 7, 7 - 0, 7 * 1): there an echo ends with the right number."""
    digits = draw(st.integers(1, 8))
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    op = draw(st.sampled_from("+-*"))
    shape = draw(st.sampled_from(["random", "answer_is_b", "answer_is_a"]))
    if shape == "answer_is_b" and 2 * b <= hi:
        a, op = 2 * b, "-"
    elif shape == "answer_is_a":
        op, b = draw(st.sampled_from([("+", 0), ("-", 0), ("*", 1)]))
    answer = a + b if op == "+" else a - b if op == "-" else a * b
    return {"a": a, "b": b, "op": op, "answer": answer}, digits


def restatements(a: int, op: str, b: int) -> list[str]:
    """The question's expression written back, in the operator spellings a model might use."""
    spellings = {"+": ["+"], "-": ["-", "\u2212"], "*": ["*", "\u00d7", "\u00b7"]}[op]
    out = []
    for sym in spellings:
        for expr in (f"{a} {sym} {b}", f"{a}{sym}{b}", f"({a} {sym} {b})", f"{a} {sym} ({b})"):
            out += [expr, f"{expr} = ?", f"{expr} =", f"Let me compute {expr}.", f"<answer>{expr}</answer>",
                    f"What is {expr}?\n{expr}"]
    return out


@settings(max_examples=300, deadline=None)
@given(arithmetic_problems())
def test_echoing_or_restating_an_arithmetic_question_earns_nothing(case):
    problem, digits = case
    envs = [Arithmetic(ArithmeticOptions(digits=digits, answer_format=fmt)) for fmt in ANSWER_FORMATS]
    texts = [e for env in envs for e in prompt_echoes(env, problem)]
    texts += restatements(problem["a"], problem["op"], problem["b"])
    texts += [texts[0] + "\n" + r for r in restatements(problem["a"], problem["op"], problem["b"])[:6]]
    for text in texts:
        for env in envs:  # every prompt's echo, under every answer format's reward
            result = env.reward(text, problem)
            assert (result.score, result.correct, result.components["format"]) == (0.0, False, 0.0), (text, env)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), count=st.integers(2, 6), high=st.integers(1, 1000))
def test_echoing_a_countdown_question_earns_nothing(seed, count, high):
    env = Countdown(CountdownOptions(min_count=count, max_count=count, high=high, target_max=max(high, 100)))
    problem = env.sample(random.Random(seed))
    numbers, target = [str(n) for n in problem["numbers"]], str(problem["target"])
    copies = [target, ", ".join(numbers), f"[{', '.join(numbers)}]", " ".join(numbers), numbers[0],
              f"{', '.join(numbers)} = {target}", f"{target} = {target}", f"[{', '.join(numbers)}] -> {target}"]
    texts = prompt_echoes(env, problem) + [f"<answer>{c}</answer>" for c in copies]
    texts += [texts[0] + f" <answer>{c}</answer>" for c in copies]
    for text in texts:
        result = env.reward(text, problem)
        assert (result.score, result.correct, result.components["format"]) == (0.0, False, 0.0), text
