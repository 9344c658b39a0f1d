"""Environments: solvable by construction, deterministic, disjoint splits, safe prompts, registry."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyzero.data import make_splits
from tinyzero.envs import REGISTRY, make_env, render_prompt
from tinyzero.errors import TinyZeroError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    min_count=st.integers(2, 4),
    extra=st.integers(0, 2),
    high=st.integers(5, 200),
)
def test_countdown_reference_solution_scores_one(seed, min_count, extra, high):
    env = make_env("countdown", {"min_count": min_count, "max_count": min_count + extra, "high": high})
    rng = random.Random(seed)
    for _ in range(20):
        problem = env.sample(rng)
        assert min_count <= len(problem["numbers"]) <= min_count + extra
        assert all(1 <= n <= high for n in problem["numbers"])
        assert 1 <= problem["target"] <= 100
        result = env.reward(f"<think>x</think><answer>{problem['solution']}</answer>", problem)
        assert result.score == 1.0 and result.correct


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), digits=st.integers(1, 6), ops=st.sampled_from(["+", "-", "*", "+-*"]))
def test_arithmetic_answer_scores_one(seed, digits, ops):
    for fmt in ("tags", "last_integer"):
        env = make_env("arithmetic", {"digits": digits, "ops": ops, "answer_format": fmt})
        problem = env.sample(random.Random(seed))
        assert len(str(problem["a"])) == digits and problem["op"] in ops
        completion = f"<answer>{problem['answer']}</answer>" if fmt == "tags" else f"= {problem['answer']}"
        assert env.reward(completion, problem).correct


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_generation_is_deterministic_and_splits_disjoint(name):
    env = make_env(name)
    train_a, test_a = make_splits(env, 3000, 200, seed=7)
    train_b, test_b = make_splits(env, 3000, 200, seed=7)
    assert train_a == train_b and test_a == test_b
    train_c, _ = make_splits(env, 3000, 200, seed=8)
    assert train_c != train_a
    test_keys = {env.key(p) for p in test_a}
    assert len(test_keys) == 200  # the test split has no duplicates
    assert not test_keys & {env.key(p) for p in train_a}


def test_countdown_split_keys_ignore_number_order():
    env = make_env("countdown")
    assert env.key({"numbers": [5, 3, 7], "target": 22}) == env.key({"numbers": [3, 7, 5], "target": 22})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_prompts_never_show_the_solution_or_a_scoring_example(name):
    env = make_env(name)
    rng = random.Random(0)
    for _ in range(200):
        problem = env.sample(rng)
        for template in ("base", "chat"):
            rendered = render_prompt(env, problem, template)
            text = rendered if isinstance(rendered, str) else rendered[0]["content"]
            if "solution" in problem:
                assert problem["solution"] not in text
            # Copying the prompt back must never be judged correct, nor earn format credit.
            result = env.reward(text, problem)
            assert not result.correct and result.score == 0.0 and result.components.get("format") == 0.0


def test_base_template_prefills_think_and_chat_is_a_message_list():
    env = make_env("countdown")
    problem = env.sample(random.Random(1))
    base = render_prompt(env, problem, "base")
    assert base.startswith("A conversation between User and Assistant")
    assert base.endswith("<think>") and "<answer>" in base
    chat = render_prompt(env, problem, "chat")
    assert chat == [{"role": "user", "content": env.task_text(problem)}]


def test_last_integer_prompt_has_no_tags():
    env = make_env("arithmetic", {"answer_format": "last_integer"})
    problem = env.sample(random.Random(0))
    assert env.task_text(problem) == f"What is {problem['a']} {problem['op']} {problem['b']}?"


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("countdown", {"colour": 1}, "unknown option countdown.colour"),
        ("countdown", {"high": "lots"}, "countdown.high must be int"),
        ("countdown", {"min_count": 5, "max_count": 3}, "min_count"),
        ("arithmetic", {"ops": "/"}, "ops"),
        ("arithmetic", {"answer_format": "xml"}, "answer_format"),
        ("nonesuch", {}, "unknown environment 'nonesuch'"),
        ("no_such_module_xyz:Task", {}, "cannot import"),
        ("tinyzero.envs:Missing", {}, "has no 'Missing'"),
    ],
)
def test_bad_env_names_and_options_name_the_cause(name, options, fragment):
    with pytest.raises(TinyZeroError, match=fragment):
        make_env(name, options)


def test_cli_strings_are_converted():
    env = make_env("countdown", {"high": "20", "format_score": "0"})
    assert env.options.high == 20 and env.options.format_score == 0.0


def test_out_of_tree_example_task(monkeypatch):
    """The README's worked example, loaded through the module:attr registry fallback."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    env = make_env("sort_numbers:SortNumbers", {"count": 4})
    train, test = make_splits(env, 100, 20, seed=0)
    problem = test[0]
    good = "<answer>" + ", ".join(str(n) for n in sorted(problem["numbers"])) + "</answer>"
    assert env.reward(good, problem).correct
    descending = "<answer>" + ", ".join(str(n) for n in sorted(problem["numbers"], reverse=True)) + "</answer>"
    assert env.reward(descending, problem).score == 0.1  # the numbers rearranged: an attempt
    assert env.reward("<answer>1, 2</answer>", problem).score == 0.0
    assert env.reward("no tags", problem).score == 0.0
    for echo in (env.task_text(problem), "<answer>" + ", ".join(map(str, problem["numbers"])) + "</answer>"):
        if problem["numbers"] != sorted(problem["numbers"]):  # a list given sorted is its own answer
            assert env.reward(echo, problem).score == 0.0
    assert not {env.key(p) for p in train} & {env.key(p) for p in test}
    sys.modules.pop("sort_numbers", None)
