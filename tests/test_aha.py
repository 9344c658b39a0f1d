"""The aha metrics on crafted transcripts whose counts are known, the negatives included."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from tinyzero.analysis.aha import (
    DEFAULT_LEXICON,
    Tracker,
    aha_step,
    analyse,
    annotate_plain,
    batch_metrics,
    compile_lexicon,
    detector_of,
)
from tinyzero.envs import make_env
from tinyzero.errors import TinyZeroError
from tinyzero.rewards.checks import arithmetic_checks, countdown_checks

LEX = compile_lexicon(DEFAULT_LEXICON)
COUNTDOWN = make_env("countdown")
ARITHMETIC = make_env("arithmetic")
PROBLEM = {"numbers": [3, 5, 7], "target": 22}


def families(text: str, prompt: str | None = None) -> list[str]:
    return [f for *_, f in analyse(text, LEX, prompt=prompt).reflections]


@pytest.mark.parametrize("text, expected", [
    ("Wait, that is wrong.", ["wait"]),
    ("The waitress waited; await it.", []),  # whole words only
    ("WAIT. Let me double-check: I re-examine and reconsider.", ["wait", "double_check", "reexamine", "reconsider"]),
    ("recheck, re-check, re check", ["recheck", "recheck", "recheck"]),
    ("Let's check. Let’s verify? Alternatively, think again, try again, check it again.",
     ["let_me_check", "verify", "alternatively", "think_again", "try_again", "check_again"]),
    ("unverified, doublechecker, rethinking", ["rethink"]),
    ("I will reevaluate and re-evaluate.", ["reevaluate", "reevaluate"]),
])
def test_reflection_phrases(text, expected):
    assert sorted(families(text)) == sorted(expected)


def test_a_quoted_prompt_does_not_count():
    prompt = COUNTDOWN.task_text(PROBLEM) + " Verify your answer before you write it, and double-check it."
    echo = "You said: " + prompt + " OK."
    assert families(echo, prompt) == []
    assert families(echo) == ["verify", "double_check"]  # without the prompt, the copy would count
    assert families(echo + " Wait.", prompt) == ["wait"]
    checks = analyse(echo, LEX, prompt=prompt, problem=PROBLEM, detector=detector_of(COUNTDOWN)).checks
    assert checks.spans == () and checks.candidates == 0


@pytest.mark.parametrize("text, checks, candidates", [
    ("3 + 5 = 8, not 22.", 1, 1),
    ("3 * 5 = 15 ≠ 22", 1, 1),
    ("3 + 5 + 7 ≠ 22", 1, 1),
    ("(3 + 5) * 7 = 56, that's too big.", 1, 1),
    ("3 × 5 + 7 = 22 ✓", 1, 1),
    ("3 * 5 = 15, 15 + 7 = 22 correct", 1, 2),  # 15 was derived: the second equation is a candidate
    ("Try 3 + 5 = 8, not 22. Then 7 * 3 = 21, not 22. So 3 * 5 + 7 = 22 ✓", 3, 3),
    ("3 * 5 = 15, not 16.", 0, 1),  # compared with a number that is not the target
    ("3 + 5 = 8. 8 + 7 = 15.", 0, 2),  # evaluated, never compared with the target
    ("9 + 13 = 22, not 21 ✓", 0, 0),  # 9 and 13 are not the problem's numbers
    ("3 + 5 = 8\n22 is the target", 0, 1),  # the comparison must be on the same line
    ("The answer is 22.", 0, 0),
    ("3 + 5 = 8 + 7 = 15, not 22", 1, 1),  # the chain's last link is the candidate
])
def test_countdown_checks(text, checks, candidates):
    found = countdown_checks(text, PROBLEM)
    assert (len(found.spans), found.candidates) == (checks, candidates), found


def test_countdown_spans_mark_the_checks():
    text = "Wait, 3 + 5 = 8, not 22. Let me try 3 * 5 + 7 = 22 ✓"
    a = analyse(text, LEX, problem=PROBLEM, detector=detector_of(COUNTDOWN))
    assert annotate_plain(a) == "[[Wait]], {{3 + 5 = 8, not 22}}. Let me try {{3 * 5 + 7 = 22 ✓}}"


@pytest.mark.parametrize("text, checks, candidates", [
    ("47 + 38 = 85. Check: 85 - 38 = 47.", 1, 1),  # undone back to an operand
    ("47 + 38 = 85. Another way: 40 + 30 + 15 = 85.", 1, 1),  # the same result reached differently
    ("47 + 38 = 85", 0, 1),
    ("47 + 38 = 84, 47 + 38 = 85", 0, 2),  # two results, no check
    ("85 - 38 = 47", 0, 0),  # no result stated for the question first
    ("23 + 87 = 23 + 82 = 23 + 8 + 23", 0, 0),  # a chain: the 23 after "=" starts an expression, no value
    ("47 + 38 = 85, 85 - 30 = 55", 0, 1),  # back to a number that is not an operand
])
def test_arithmetic_checks(text, checks, candidates):
    found = arithmetic_checks(text, {"a": 47, "b": 38, "op": "+", "answer": 85})
    assert (len(found.spans), found.candidates) == (checks, candidates), found


def test_the_example_task_supplies_a_detector():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        env = make_env("sort_numbers:SortNumbers")
    finally:
        sys.path.pop(0)
    problem = {"numbers": [35, 12, 80], "answer": [12, 35, 80]}
    found = env.verification_checks("12 < 35 and 35 < 80, and 4 < 9. So 12, 35, 80 (not 35, 12, 80)", problem)
    assert len(found.spans) == 2 and found.candidates == 2


def test_batch_metrics_counts():
    texts = ["Wait, 3 + 5 = 8, not 22. 3 * 5 + 7 = 22 ✓", "3 * 5 + 7", "Let me verify: 3 * 5 = 15, not 16",
             "The waitress"]
    analyses = [analyse(t, LEX, problem=PROBLEM, detector=detector_of(COUNTDOWN)) for t in texts]
    m = batch_metrics(analyses, LEX, correct=[True, True, False, False])
    assert m["reflection_rate"] == 0.5 and m["reflection/wait"] == 0.25 and m["reflection/verify"] == 0.25
    assert m["reflection/let_me_check"] == 0.25 and m["reflection/double_check"] == 0.0
    assert m["verification_rate"] == 0.25
    assert m["candidates_mean"] == (2 + 0 + 1 + 0) / 4
    assert m["reflection_rate_correct"] == 0.5 and m["reflection_rate_incorrect"] == 0.5
    assert m["verification_rate_correct"] == 0.5 and m["verification_rate_incorrect"] == 0.0
    assert m["chars_correct"] == (len(texts[0]) + len(texts[1])) / 2
    assert m["chars_incorrect"] == (len(texts[2]) + len(texts[3])) / 2
    lexical = batch_metrics([analyse(t, LEX) for t in texts], LEX)
    assert "verification_rate" not in lexical and "reflection_rate_correct" not in lexical


def test_aha_step_rule():
    series = [(2, 0.1), (3, 0.3), (4, 0.1), (5, 0.2), (6, 0.25), (7, 0.3), (8, 0.0)]
    assert aha_step(series, baseline=0.1, margin=0.05, patience=3) == 5
    assert aha_step(series, baseline=0.1, margin=0.05, patience=4) is None
    assert aha_step(series, baseline=0.1, margin=0.05, patience=1) == 3


def test_tracker_baselines_deltas_and_state():
    tracker = Tracker(DEFAULT_LEXICON, COUNTDOWN, patience=2)
    none = ["3 * 5 + 7"] * 4
    some = ["3 + 5 = 8, not 22"] * 2 + ["x"] * 2

    def step(n, texts):
        analyses = tracker.analyse(texts, [None] * 4, [PROBLEM] * 4)
        return tracker.rollout_metrics(n, analyses, [False] * 4)

    first = step(1, none)
    assert first["aha/verification_rate"] == 0.0 and first["aha/delta/verification_rate"] == 0.0
    assert step(2, some)["aha/delta/verification_rate"] == 0.5
    assert "aha/aha_step" not in step(3, none)
    assert "aha/aha_step" not in step(4, some)
    again = Tracker(DEFAULT_LEXICON, COUNTDOWN, patience=2)
    again.load(tracker.state())  # as after a resume
    tracker = again
    assert step(5, some)["aha/aha_step"] == 4.0


def test_bad_lexicon_is_one_sentence():
    with pytest.raises(TinyZeroError, match=r"aha\.lexicon\.wait must be a non-empty list"):
        compile_lexicon({"wait": "wait"})
    with pytest.raises(TinyZeroError, match="non-empty mapping"):
        compile_lexicon({})


def test_custom_lexicon():
    lex = compile_lexicon({"hmm": ["hmm", "hold on"]})
    found = analyse("Hmm. Hold  on, wait.", lex).reflections
    assert [(f, s, e) for s, e, f in found] == [("hmm", 0, 3), ("hmm", 5, 13)]


HOSTILE = [
    "wait " * 200_000,
    "1+" * 500_000,
    "(" * 1_000_000,
    "3 + 5 = " * 125_000,
    "double " * 150_000,
    "let me " * 150_000,
    "9" * 1_000_000,
    "3 * 5 = 15, not 16 " * 50_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda t: re.sub(r"\W", "_", t[:8]))
def test_hostile_megabyte_is_bounded(text):
    """max_chars bounds the work: a megabyte costs what its first 8,000 characters cost."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        analyse(text, LEX, prompt="Use the numbers. " * 10, problem=PROBLEM, detector=detector_of(COUNTDOWN))
        best = min(best, time.perf_counter() - start)
    assert best < 0.05, best
