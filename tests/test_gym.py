"""reasoning-gym tasks as environments (gym:TASK): loading, splits, the verifier table, and hostile answers.

Skipped as a whole where the optional extra is not installed (`pip install -e '.[gym]'`); `make setup` installs it.
"""

from __future__ import annotations

import json
import pickle
import random
import sys
import time

import pytest

pytest.importorskip("reasoning_gym", reason="the gym extra is not installed: pip install -e '.[gym]'")

from reasoning_gym.dataset import ProceduralDataset  # noqa: E402
from reasoning_gym.factory import DATASETS  # noqa: E402

from tinyzero.data import make_splits, to_columns  # noqa: E402
from tinyzero.envs import env_class, gym_checks, make_env, render_prompt  # noqa: E402
from tinyzero.envs import gym as gym_env  # noqa: E402
from tinyzero.envs.gym_safety import (  # noqa: E402
    DEFAULT_VERIFIER,
    EVALS_ANSWER,
    IN_PROCESS,
    PARSES_MATH,
    WORKER_WHY,
    literal_value,
    math_answer_ok,
)
from tinyzero.errors import TinyZeroError  # noqa: E402

# Tasks whose generator needs options to build (composite mixes other tasks and must be told which).
NEEDS_OPTIONS = {"composite"}
FAST = {"timeout_s": 1.0}


def tag(text: str) -> str:
    return f"<think>working</think><answer>{text}</answer>"


# ------------------------------------------------------------------------------------------------ the table
def test_every_registered_task_is_classified_once():
    """A reasoning-gym upgrade that adds or renames a task fails here until docs/gym.md's table is redone."""
    assert set(DATASETS) == IN_PROCESS | set(WORKER_WHY)
    assert not IN_PROCESS & set(WORKER_WHY)
    assert (EVALS_ANSWER | PARSES_MATH) <= set(WORKER_WHY)


def test_the_default_verifier_group_is_exactly_the_classes_that_do_not_override_it():
    inherited = {name for name, (cls, _) in DATASETS.items() if cls.score_answer is ProceduralDataset.score_answer}
    assert inherited == DEFAULT_VERIFIER


def test_the_docs_table_lists_every_task_with_its_placement():
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "gym.md").read_text()
    for task in DATASETS:
        where = "in-process" if task in IN_PROCESS else "worker"
        assert f"| `{task}` | {where} |" in doc, task


# ------------------------------------------------------------------------------------------------ loading
def test_every_task_but_composite_loads_samples_and_renders():
    loaded = 0
    for task in sorted(set(DATASETS) - NEEDS_OPTIONS):
        env = make_env(f"gym:{task}")
        problem = env.sample(random.Random(0))
        assert problem["question"] and problem["task"] == task
        assert "<answer> </answer>" in render_prompt(env, problem, "chat")[0]["content"]
        loaded += 1
    assert loaded == len(DATASETS) - len(NEEDS_OPTIONS) >= 100


def test_the_oracle_answer_scores_one_in_process():
    """Every in-process task: its own answer, through our tags and parser, is correct."""
    for task in sorted(IN_PROCESS):
        env = make_env(f"gym:{task}")
        problem = env.sample(random.Random(1))
        if problem["answer"] is None:
            continue
        result = env.reward(tag(problem["answer"]), problem)
        assert result.correct and result.score == 1.0, (task, result)


@pytest.mark.parametrize("task", ["countdown", "binary_matrix", "arc_agi", "group_anagrams", "bitwise_arithmetic"])
def test_the_oracle_answer_scores_one_in_the_worker(task):
    env = make_env(f"gym:{task}")
    assert env.placement == "worker"
    problem = env.sample(random.Random(2))
    result = env.reward(tag(problem["answer"]), problem)
    assert result.correct, result


def test_metadata_json_cannot_carry_is_marked_and_rebuilt_from_the_seed():
    env = make_env("gym:arc_agi")
    problem = env.sample(random.Random(3))
    assert problem["exact"] is False  # its grids are tuples
    entry = gym_env.entry_of(problem, "arc_agi", "{}")
    assert isinstance(entry["metadata"]["input"], tuple) and entry["question"] == problem["question"]


# ------------------------------------------------------------------------------------------------ splits
@pytest.mark.parametrize("name", ["gym:basic_arithmetic", "gym:leg_counting", "gym:arc_1d", "gym:chain_sum"])
def test_splits_are_reproducible_and_disjoint(name):
    env = make_env(name, {"max_terms": 2, "max_digits": 1} if name == "gym:chain_sum" else {})
    train_a, test_a = make_splits(env, 300, 50, seed=7)
    train_b, test_b = make_splits(env, 300, 50, seed=7)
    assert train_a == train_b and test_a == test_b
    assert make_splits(env, 300, 50, seed=8)[0] != train_a
    test_keys = {env.key(p) for p in test_a}
    assert len(test_keys) == 50 and not test_keys & {env.key(p) for p in train_a}
    if name == "gym:chain_sum":  # a small problem space: the train split must have skipped test questions
        assert len({env.key(p) for p in train_a}) < 300


def test_data_columns_match_our_tasks(tmp_path):
    gym, ours = make_env("gym:leg_counting"), make_env("arithmetic")
    a = to_columns(gym, make_splits(gym, 4, 2, seed=0)[1], "test", "base")
    b = to_columns(ours, make_splits(ours, 4, 2, seed=0)[1], "test", "base")
    assert a.keys() == b.keys() and a["data_source"] == ["gym:leg_counting"] * 2
    assert a["reward_model"][0]["ground_truth"]["answer"] == a["problem"][0]["answer"]


# ------------------------------------------------------------------------------------------------ options and errors
def test_generator_options_reach_the_generator_and_cli_strings_are_converted():
    env = make_env("gym:basic_arithmetic", {"min_terms": "2", "max_terms": 2, "max_digits": "1",
                                            "operators": '["+"]', "allow_negation": "false"})
    for problem in make_splits(env, 0, 20, seed=0)[1]:
        assert problem["question"].count(" + ") == 1 and not {"*", "/"} & set(problem["question"])


@pytest.mark.parametrize("name, options, fragment", [
    ("gym:basic_arithmetc", {}, "did you mean gym:basic_arithmetic"),
    ("gym:leg_counting", {"max_legs": 3}, "unknown option gym:leg_counting.max_legs: it accepts min_animals"),
    ("gym:leg_counting", {"seed": 3}, "set by the kit"),
    ("gym:leg_counting", {"min_animals": 5, "max_animals": 2}, "bad options for gym:leg_counting"),
    ("gym:leg_counting", {"min_animals": "many"}, "gym:leg_counting.min_animals must be int"),
    ("gym:leg_counting", {"timeout_s": 0}, "timeout_s must be"),
])
def test_bad_names_and_options_are_one_sentence(name, options, fragment):
    with pytest.raises(TinyZeroError, match=fragment) as err:
        make_env(name, options)
    assert "\n" not in str(err.value)


def test_without_the_extra_gym_names_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)  # import now fails
    for call in (lambda: make_env("gym:leg_counting"), lambda: env_class("gym:leg_counting")):
        with pytest.raises(TinyZeroError, match=r"pip install -e '\.\[gym\]'"):
            call()
    assert not gym_env.available()


def test_envs_without_the_extra_says_how_to_install(monkeypatch, capsys):
    from tinyzero.cli import _print_gym_tasks

    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)
    _print_gym_tasks()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "pip install -e '.[gym]'" in out


# ------------------------------------------------------------------------------------------------ scoring
def test_verdicts_and_reasons():
    env = make_env("gym:leg_counting")
    problem = env.sample(random.Random(4))
    assert env.reward("no tags", problem).reason == "no_answer"
    assert env.reward("<answer> </answer>", problem).reason == "empty"
    assert env.reward(tag("x" * 2001), problem).reason == "too_long"
    wrong = env.reward(tag("banana"), problem)
    assert (wrong.score, wrong.correct, wrong.reason) == (0.0, False, "wrong_value")
    partial = env.reward(tag(f"{problem['answer']} legs"), problem)  # the default verifier's substring credit
    assert 0 < partial.score < 1 and not partial.correct and partial.reason == "partial"
    assert env.answer(tag(f" {problem['answer']}\n"), problem) == problem["answer"]


def test_last_integer_answers_read_the_number_a_reply_ends_with():
    """The gym CPU recipe's format: "12 + 3 = 15" answers 15; a trailing operand or an echo of the question is no
    answer (the arithmetic demo's parser); the verifier still decides (here chain_sum's, in the worker)."""
    env = make_env("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "max_digits": 2, "answer_format": "last_integer"})
    problem = env.sample(random.Random(1))
    answer = problem["answer"]
    assert "<answer>" not in env.task_text(problem)
    assert env.reward(f"Adding them: 12 + 3 = {answer}", problem).correct
    assert env.reward(f"{answer}.\n", problem).correct
    assert env.answer(f"so {answer} - 12", problem) is None  # a right operand, not an answer
    assert env.reward(env.task_text(problem), problem).score == 0.0  # the question ends in "a - b =" or "a + b ="
    assert env.reward("no number here", problem).reason == "no_answer"
    for glued in (f"10^{answer}", f"= 0.{answer}", f"1_{answer}", f"4.7e{answer}", f"0x{answer}"):  # issue 18
        assert env.answer(glued, problem) is None and not env.reward(glued, problem).correct, glued
    wrong = env.reward(f"= {int(answer) + 1}", problem)
    assert not wrong.correct


def test_echoing_the_prompt_scores_zero_for_in_process_tasks():
    for task in sorted(IN_PROCESS):
        env = make_env(f"gym:{task}")
        problem = env.sample(random.Random(5))
        for template in ("base", "chat"):
            rendered = render_prompt(env, problem, template)
            text = rendered if isinstance(rendered, str) else rendered[0]["content"]
            assert env.reward(text, problem).score == 0.0, task


def test_a_verifier_that_raises_scores_zero_with_a_reason():
    here = make_env("gym:prime_factorization")  # int() of a non-number raises inside its verifier
    assert here.placement == "in-process"
    result = here.reward(tag("twelve"), here.sample(random.Random(6)))
    assert (result.score, result.reason) == (0.0, "verifier_error")
    there = make_env("gym:game_of_life", FAST)  # indexes the parsed JSON without checking it
    result = there.reward(tag("{}"), there.sample(random.Random(6)))
    assert (result.score, result.reason) == (0.0, "verifier_error")


def test_a_bad_score_is_an_error_not_a_reward():
    """Anything but a finite number in [0, 1] is verifier_error: no clipping of a verifier that strays."""
    for value in (float("nan"), float("-inf"), float("inf"), 7.0, 1.0000001, -1, -0.1, 10**400, "1", None, True):
        result = gym_env._verdict(value)
        assert (result.score, result.correct, result.reason) == (0.0, False, "verifier_error"), value
    assert [gym_env._verdict(v).reason for v in (1, 1.0, 0.5, 0, 0.0)] == ["correct"] * 2 + ["partial"] + \
        ["wrong_value"] * 2


def test_the_worker_sends_a_score_as_it_is_and_the_client_judges_it():
    """The worker no longer turns a score into a float (True became 1.0): the in-process rule decides both paths."""
    from tinyzero.envs.gym_worker import score_of

    class Returns:
        def __init__(self, value):
            self.value = value

        def score_answer(self, answer, entry):
            return self.value

    for value in (True, "1", None, [1.0]):
        with pytest.raises(TypeError, match="not a number"):
            score_of(Returns(value), "x", {})
    for value in (float("nan"), float("inf"), 7.0, -1):
        sent = json.loads(json.dumps({"score": score_of(Returns(value), "x", {})}))["score"]
        assert gym_env._verdict(sent).reason == "verifier_error", value
    assert gym_env._verdict(json.loads(json.dumps({"score": score_of(Returns(1), "x", {})}))["score"]).correct


# ------------------------------------------------------------------------------------------------ farmable verifiers
# Answers a policy could find and repeat whatever the question (issue 18). Each is fed to every task that loads; none
# may score `correct` unless it is that problem's oracle answer. "1e999" overflows float() to inf.
SPECIAL_ANSWERS = ("nan", "NaN", "-nan", "nanj", "nan+nani", "sNaN", "inf", "-inf", "Infinity", "1e999", "-1e999",
                   "0", "", "True", "False")

# (task, answer) pairs that are right for the problem the test draws (seed 0), each with why.
LEGITIMATE = {
    ("decimal_arithmetic", "2.732"): "half of the oracle 2.7324375; the verifier's tolerance is 10**-max_num_decimal_places"
                                     " (0.001 here), so three decimals are a right answer",
    ("polynomial_equations", "0"): "the oracle is 0.0, the equation's one root; the verifier compares values",
}


def oracle_prefixes(oracle: str | None) -> list[str]:
    """Strict prefixes of the oracle answer: its first character and its first half (coin_flip gave 1.0 to both)."""
    oracle = (oracle or "").strip()
    return sorted({p for p in (oracle[:1], oracle[: len(oracle) // 2]) if p and p != oracle})


@pytest.fixture
def scored_here(monkeypatch):
    """Score every task in this process, with the worker's stand-in for eval: starting 44 workers would take about a
    minute, and these answers are plain text (the worker's limits are tested above)."""
    for name, module in list(sys.modules.items()):
        if name.startswith("reasoning_gym") and module is not None:
            monkeypatch.setitem(module.__dict__, "eval", literal_value)

    def make(task):
        env = make_env(f"gym:{task}")
        env.placement = "in-process"
        return env

    return make


def test_no_task_credits_special_answers_and_every_oracle_is_still_correct(scored_here):
    credited, oracle_wrong, tasks = [], [], 0
    for task in sorted(set(DATASETS) - NEEDS_OPTIONS):
        env = scored_here(task)
        problem = env.sample(random.Random(0))
        oracle = problem["answer"]
        if oracle is not None and not env.reward(tag(oracle), problem).correct:
            oracle_wrong.append(task)  # the kit's own checks must not refuse a right answer
        for answer in dict.fromkeys((*SPECIAL_ANSWERS, *oracle_prefixes(oracle))):
            if oracle is not None and answer == oracle.strip() or (task, answer) in LEGITIMATE:
                continue
            if env.reward(tag(answer), problem).correct:
                credited.append((task, answer))
        tasks += 1
    assert tasks == len(DATASETS) - len(NEEDS_OPTIONS) >= 100
    assert not credited, f"special answers scored correct: {credited}"
    assert not oracle_wrong, f"oracle answers not correct: {oracle_wrong}"
    for task, answer in LEGITIMATE:  # an exception that no longer applies is dropped, not kept as a blind spot
        env = scored_here(task)
        assert env.reward(tag(answer), env.sample(random.Random(0))).correct, (task, answer)


def test_complex_arithmetic_never_credits_nan():
    """Its verifier scores min(1.0, exp(-distance)): a NaN distance gives 1.0, a finite score."""
    env = make_env("gym:complex_arithmetic", FAST)
    assert env.placement == "worker"
    problem = env.sample(random.Random(0))
    for answer in ("nan", "NaN", "-nan", "nanj", "nan+nani", "(nan)", "NAN + 2i", "inf", "infinityj"):
        result = env.reward(tag(answer), problem)
        assert (result.score, result.correct, result.reason) == (0.0, False, "not_finite"), answer
    assert env.reward(tag(problem["answer"]), problem).correct
    assert not gym_checks.spells_non_finite("banana info, 3 + 2i")  # whole runs of letters only


def test_coin_flip_credits_the_probability_not_a_prefix_of_it():
    env = make_env("gym:coin_flip", FAST)
    problem = env.sample(random.Random(0))
    assert problem["answer"] == "0.234375"  # 15/64
    for answer in ("0", "0.0", "0.2", "0.23", "0.234", "0.3", "1"):
        result = env.reward(tag(answer), problem)
        assert (result.score, result.correct, result.reason) == (0.0, False, "wrong_value"), answer
    for answer in ("0.234375", "15/64", ".234375", "0.2344", "2.34375e-1"):
        assert env.reward(tag(answer), problem).correct, answer
    for answer in ("a quarter", "-0.234375", "15/0", "15 / 64", "0.2.3", "1e999", "23.4375%"):
        assert env.reward(tag(answer), problem).reason == "not_number", answer
    # A probability under 1e-4: the verifier's absolute tolerance alone would take 0.
    tiny = {"answer": "3.051757812e-05", "metadata": json.dumps({"rational": {"numerator": 1, "denominator": 32768}})}
    assert gym_checks.coin_flip("0", tiny).reason == "wrong_value"
    assert gym_checks.coin_flip("0.00003", tiny).reason == "wrong_value"  # 1.7% off
    assert gym_checks.coin_flip("0.0000305", tiny) is None and gym_checks.coin_flip("1/32768", tiny) is None
    for broken in ({"answer": "?", "metadata": "{}"}, {"metadata": json.dumps({"rational": {"numerator": 1}})},
                   {"metadata": json.dumps({"rational": {"numerator": 1, "denominator": 0}})}):
        with pytest.raises(ValueError, match="metadata.rational"):  # the reward command's "malformed problem"
            gym_checks.coin_flip("0.5", broken)


def test_puzzle24_needs_exactly_the_puzzles_numbers_and_exactly_24():
    env = make_env("gym:puzzle24", FAST)
    problem = env.sample(random.Random(0))
    assert sorted(json.loads(problem["metadata"])["numbers"]) == [3, 3, 3, 8]
    assert env.reward(tag(problem["answer"]), problem).correct
    assert env.reward(tag("8 * (3 + 3 - 3)"), problem).correct  # any right equation, not only the oracle's
    for answer, reason in [
        ("6*4*1*1", "wrong_numbers"),  # was always correct: the verifier only counted four numbers in range
        ("3*8*3/3*1", "wrong_numbers"),
        ("3*8", "wrong_numbers"),
        ("(x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x+x)/x + (3+8+3+3)*(y-y)", "bad_character"),  # sympy cancels x
        ("3*8*(3/3)=24", "bad_character"),
        ("3 * 8 + 3 + 3", "wrong_value"),
        ("3 - 8 * 3 + 3", "wrong_value"),
        ("-3 + 8 * 3 + 3", "syntax"),
    ]:
        result = env.reward(tag(answer), problem)
        assert (result.score, result.correct, result.reason) == (0.0, False, reason), answer
    # The verifier truncates the value with int(): 7 * 7 / 2 * 1 = 24.5 counted as 24.
    half = {**problem, "metadata": json.dumps({**json.loads(problem["metadata"]), "numbers": [7, 7, 2, 1]})}
    result = env.reward(tag("7 * 7 / 2 * 1"), half)
    assert (result.correct, result.reason) == (False, "wrong_value")
    with pytest.raises(ValueError, match="'numbers' in metadata"):
        gym_checks.puzzle24("1 + 2", {"metadata": "{}"})


def test_game_of_life_halting_needs_the_right_boolean():
    env = make_env("gym:game_of_life_halting")
    problems = {}
    rng = random.Random(0)
    while len(problems) < 2:
        problem = env.sample(rng)
        problems.setdefault(problem["answer"], problem)
    for truth, problem in problems.items():
        other = "False" if truth == "True" else "True"
        assert env.reward(tag(truth), problem).correct and env.reward(tag(truth.upper()), problem).correct
        result = env.reward(tag(other), problem)
        assert (result.score, result.correct, result.reason) == (0.0, False, "wrong_value"), truth
        for answer in ("yes", "x", "0", "1", "[]", "Fals", "True or False"):
            assert env.reward(tag(answer), problem).reason == "not_boolean", (truth, answer)


HOSTILE = {
    "megabyte": "9" * 1_000_000,
    "deep_nesting": "[" * 100_000 + "]" * 100_000,
    "import": "__import__('os').system('touch {marker}')",
    "open": "open('{marker}', 'w')",
    "huge_exponent": "9**9**9**9",
    "huge_float": "1e999999999",
    "nested_power": "(((2**64)**64)**64)**64",
}


@pytest.mark.parametrize("task", ["countdown", "binary_matrix", "n_queens", "group_anagrams", "coin_flip",
                                  "leg_counting", "prime_factorization", "knights_knaves"])
def test_hostile_answers_end_fast_or_in_the_time_limit_and_run_nothing(task, tmp_path):
    env = make_env(f"gym:{task}", {**FAST, "max_answer_chars": 2_000_000})
    problem = env.sample(random.Random(7))
    env.reward(tag(problem["answer"] or "x"), problem)  # the worker's start is not an answer's time
    marker = tmp_path / "ran"
    for label, text in HOSTILE.items():
        if env.placement == "worker":  # a replacement worker's start (after a kill) is not this answer's time
            env._worker().wait_ready()
        start = time.perf_counter()
        result = env.reward(tag(text.format(marker=marker)), problem)
        took = time.perf_counter() - start
        assert result.score < 1.0 and not result.correct, (label, result)
        # In the worker: the time limit, then the kill; the slack is for a loaded 2-core machine.
        limit = 0.25 if env.placement == "in-process" else FAST["timeout_s"] + 1.5
        assert took < limit, (label, took, result.reason)
    assert not marker.exists()
    result = env.reward(tag(problem["answer"] or "x"), problem)  # the run goes on: a fresh worker scores again
    assert result.reason != "verifier_timeout"


def test_a_hang_scores_verifier_timeout_and_the_next_answer_is_scored():
    env = make_env("gym:countdown", FAST)
    problem = env.sample(random.Random(8))
    env.reward(tag(problem["answer"]), problem)
    start = time.perf_counter()
    assert env.reward(tag("9**9**9**9"), problem).reason == "verifier_timeout"
    assert time.perf_counter() - start < FAST["timeout_s"] + 1.5
    assert env.reward(tag(problem["answer"]), problem).correct


def test_the_answer_length_is_capped_before_any_verifier():
    env = make_env("gym:countdown")
    assert env.reward(tag("1+" * 1500 + "1"), env.sample(random.Random(9))).reason == "too_long"


def test_math_guard_and_literal_evaluator():
    assert math_answer_ok("(3 + 4) * 2.5 - x**2 + sin(x)")
    for bad in ("open(0)", "__import__", "x.func", "getattr(x, chr(95))", "'a'", "exit", "a;b", "[1]"):
        assert not math_answer_ok(bad), bad
    assert literal_value("[[1, 0], [0, 1]]") == [[1, 0], [0, 1]]
    assert literal_value("((0x3a + 0x1f) << 0x2) ^ 0x5") == (((0x3A + 0x1F) << 2) ^ 5)
    for bad in ("__import__('os')", "2**10", "1 << 100000", "(lambda: 1)()", "[x for x in y]", "a.b", "f()"):
        with pytest.raises(ValueError):
            literal_value(bad)
    with pytest.raises((ValueError, SyntaxError, MemoryError, RecursionError)):
        literal_value("[" * 100_000 + "]" * 100_000)


def test_the_env_travels_to_a_spawned_reward_pool():
    from tinyzero.scoring import score_many, scoring_pool

    env = make_env("gym:countdown", FAST)
    problems = [env.sample(random.Random(i)) for i in range(3)]
    texts = [tag(p["answer"]) for p in problems] + [tag("9**9**9**9")]
    copy = pickle.loads(pickle.dumps(env))
    assert copy.name == env.name and copy.options == env.options
    pool = scoring_pool(1)
    try:
        results = score_many(env, texts, [*problems, problems[0]], pool)
    finally:
        pool.shutdown()
    assert [r.correct for r in results] == [True, True, True, False]
    assert results[-1].reason == "verifier_timeout"


@pytest.mark.slow
def test_the_gym_cpu_recipe_trains_a_few_steps(tiny_model_dir, tmp_path):
    """recipes/gym-demo-cpu.yaml as shipped, with the tiny model and small batches: it loads, scores through the
    verifier worker (chain_sum's verifier is not in-process) and trains."""
    from tinyzero.config import load_config
    from tinyzero.trainer import train

    recipe = "recipes/gym-demo-cpu.yaml"
    assert load_config(recipe).env.name == "gym:chain_sum" and make_env("gym:chain_sum").placement == "worker"
    summary = train(recipe, [
        f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.name=gym", "run.steps=2",
        "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=12",
        "rollout.backend=hf", "eval.size=4", "eval.max_new_tokens=12", "eval.every=2", "checkpoint.every=2",
    ])
    assert summary["steps"] == 2 and summary["n"] == 4
    metrics = [json.loads(line) for line in (tmp_path / "gym" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all("reward/mean" in m for m in metrics)


# ------------------------------------------------------------------------------------------------ the command line
def cli(*args: str, stdin: str = ""):
    import subprocess

    return subprocess.run([sys.executable, "-m", "tinyzero.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


def test_envs_lists_every_gym_task_with_where_it_is_scored():
    result = cli("envs")
    assert result.returncode == 0, result.stderr
    listed = [line.split() for line in result.stdout.splitlines() if line.startswith("    gym:")]
    assert {row[0] for row in listed} == {f"gym:{t}" for t in DATASETS}
    assert {row[1] for row in listed} == {"in-process", "worker"}


def test_data_writes_the_same_columns_as_our_tasks(tmp_path):
    import pyarrow.parquet as pq

    for name in ("gym:leg_counting", "arithmetic"):
        result = cli("data", name, "--out", str(tmp_path / name), "--train-size", "20", "--test-size", "5")
        assert result.returncode == 0, result.stderr
    gym = pq.read_table(tmp_path / "gym:leg_counting" / "test.parquet")
    ours = pq.read_table(tmp_path / "arithmetic" / "test.parquet")
    assert gym.column_names == ours.column_names and gym.num_rows == 5
    assert pq.read_table(tmp_path / "gym:leg_counting" / "train.parquet").num_rows == 20


def test_reward_command_and_unknown_task_error():
    env = make_env("gym:leg_counting")
    problem = env.sample(random.Random(10))
    lines = [{"completion": tag(problem["answer"]), "problem": problem}, {"completion": "none", "problem": problem}]
    result = cli("reward", "gym:leg_counting", stdin="".join(json.dumps(x) + "\n" for x in lines))
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [v["reason"] for v in verdicts] == ["correct", "no_answer"]
    result = cli("data", "gym:leg_countin", "--out", "unused")
    assert result.returncode != 0 and "did you mean gym:leg_counting" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_that_dies_scores_verifier_error_and_a_new_one_takes_over():
    import os
    import signal

    env = make_env("gym:countdown", FAST)
    problem = env.sample(random.Random(11))
    assert env.reward(tag(problem["answer"]), problem).correct
    worker = env._worker()
    first = worker._proc.pid
    os.kill(first, signal.SIGKILL)
    worker._proc.wait()
    worker._proc.poll = lambda: None  # as if it died between the check and the answer being sent
    assert env.reward(tag(problem["answer"]), problem).reason == "verifier_error"
    assert env.reward(tag(problem["answer"]), problem).correct and worker._proc.pid != first


# ------------------------------------------------------------------------------- the worker's limits, probed from inside
# A verifier stand-in that tries each limit from inside a real worker (``gym_worker.main``, set-up line, answers and
# replies as the client sends and reads them). The hostile-answer tests never reach these limits (the parse guards
# stop those answers first), so removing one passed every test (issue 33's mutation audit).
PROBE_WORKER = r"""
import json, os, resource, sys, time

import tinyzero.envs.gym as gym
from tinyzero.envs import gym_worker


class Probe:
    def score_answer(self, answer, entry):
        if answer == "limits":  # as an error reply: a score must be a number
            names = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NPROC", "RLIMIT_CORE", "RLIMIT_AS")
            used = resource.getrusage(resource.RUSAGE_SELF)
            raise RuntimeError(json.dumps({"cpu_used": used.ru_utime + used.ru_stime, "uid": os.getuid(),
                                           **{n: resource.getrlimit(getattr(resource, n)) for n in names}}))
        if answer == "write":  # one byte into a new file in the folder the problem names
            with open(os.path.join(entry["folder"], "written"), "wb") as fh:
                fh.write(b"x")
            return 1
        if answer == "fork":
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            return 1
        if answer == "spin":  # CPU, not wall-clock, time: only the CPU limit ends it early
            start = time.process_time()
            while time.process_time() - start < 20:
                pass
            return 1
        return 0


gym.build_dataset = lambda task, generator: Probe()
gym.entry_of = lambda problem, task, generator: problem
sys.exit(gym_worker.main())
"""


def test_the_workers_cpu_file_size_and_process_limits_are_in_force(tmp_path):
    """CPU seconds re-armed per answer (a spin dies of SIGXCPU), no file can grow (EFBIG), no process can start
    (RLIMIT_NPROC 0: the kernel enforces it for every user but root, so as root only its value is checked)."""
    import os
    import resource
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", PROBE_WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        def send(obj: dict) -> dict:
            proc.stdin.write(json.dumps(obj) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            return json.loads(line) if line else {}

        assert send({"task": "probe", "generator": "probe", "memory_mb": 2048, "cpu_s": 2}) == {"ready": True}
        reply = send({"answer": "limits", "problem": {}})
        seen = json.loads(reply["error"].removeprefix("RuntimeError: "))
        assert seen["RLIMIT_FSIZE"] == [0, 0] and seen["RLIMIT_NPROC"] == [0, 0] and seen["RLIMIT_CORE"] == [0, 0]
        assert seen["RLIMIT_AS"][0] == 2048 * 2**20
        assert seen["RLIMIT_CPU"][0] != resource.RLIM_INFINITY and seen["RLIMIT_CPU"][0] <= seen["cpu_used"] + 2
        reply = send({"answer": "write", "problem": {"folder": str(tmp_path)}})
        assert "File too large" in reply.get("error", ""), reply  # EFBIG: Python ignores SIGXFSZ
        assert (tmp_path / "written").stat().st_size == 0  # created (no limit on that), not one byte in it
        reply = send({"answer": "fork", "problem": {}})
        if seen["uid"] != 0:
            assert "Resource temporarily unavailable" in reply.get("error", ""), reply  # EAGAIN
        start = time.monotonic()
        assert send({"answer": "spin", "problem": {}}) == {}  # no reply: the worker died
        assert proc.wait(timeout=60) == -signal.SIGXCPU
        assert time.monotonic() - start < 30  # 20 CPU seconds would be the spin ending by itself
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------------------------------ a worker that cannot start
def test_repeated_start_failures_stop_scoring_instead_of_scoring_zeros():
    """A worker that cannot start (here: a 1 MiB address space, as on a machine out of memory) made every answer
    verifier_error, quietly, for the rest of the run. Now the third failure in a row raises VerifierUnavailable;
    a start that works in between resets the count."""
    from tinyzero.envs.gym_worker import START_FAILURES_TO_STOP, Verifier, VerifierError, VerifierUnavailable
    from tinyzero.errors import StopRun

    env = make_env("gym:chain_sum")
    problem = env.sample(random.Random(3))
    verifier = Verifier("chain_sum", "{}", timeout_s=5.0, memory_mb=1)
    for _ in range(START_FAILURES_TO_STOP - 1):
        with pytest.raises(VerifierError, match="did not start: it could not start: MemoryError"):
            verifier.score(problem["answer"], problem)
    verifier.setup["memory_mb"] = 2048  # the machine recovered: this start works and the count starts over
    assert verifier.score(problem["answer"], problem) == 1.0
    verifier.close()
    verifier.setup["memory_mb"] = 1
    for _ in range(START_FAILURES_TO_STOP - 1):
        with pytest.raises(VerifierError):
            verifier.score(problem["answer"], problem)
    with pytest.raises(VerifierUnavailable) as err:
        verifier.score(problem["answer"], problem)
    assert isinstance(err.value, StopRun) and pickle.loads(pickle.dumps(err.value)).fix == err.value.fix
    assert "verifier worker for chain_sum failed to start 3 times in a row (last: it could not start" in str(err.value)


@pytest.mark.slow
def test_a_worker_that_will_not_start_stops_the_run_with_a_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    """Step 1 is scored by a working verifier worker; then the worker is gone and cannot start again in time (a
    loaded machine): step 2 stops the run, with step 1's checkpoint and one sentence, instead of scoring zeros."""
    from tinyzero.config import load_config
    from tinyzero.envs import gym_worker
    from tinyzero.trainer import Trainer

    args = [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path}", "run.name=gym", "run.steps=3",
            "env.name=gym:chain_sum", "env.options={answer_format: last_line}", "rollout.backend=hf",
            "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
            "eval.size=2", "eval.max_new_tokens=8", "eval.every=0", "checkpoint.every=0", "log.tensorboard=false"]
    trainer = Trainer(load_config(None, args))
    first_step = trainer.train_step

    def then_the_worker_is_gone():
        metrics = first_step()
        trainer.env._worker().close()
        monkeypatch.setattr(gym_worker, "START_TIMEOUT_S", 0.001)  # no worker starts that fast
        return metrics

    trainer.train_step = then_the_worker_is_gone
    try:
        with pytest.raises(TinyZeroError) as err:
            trainer.run()
    finally:
        trainer.close()
    message = str(err.value)
    assert message.startswith("step 2: the reasoning-gym verifier worker for chain_sum failed to start 3 times")
    assert "checkpoint of step 1" in message and "tinyzero resume" in message and "\n" not in message
    run_dir = tmp_path / "gym"
    assert (run_dir / "checkpoints" / "step_000001" / "COMPLETE").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]  # nothing of step 2 was logged: a resume redoes it
