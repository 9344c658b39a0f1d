"""Evaluation metrics: pass@k against brute-force enumeration, majority voting (ties, unparseable answers), the
environments' answers (the reward's own parsing), and one evaluation on a tiny model with a stand-in engine."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerance import atol_for

from tinyzero.analysis.evaluation import Sampling, evaluate, maj_at_k, majority_vote, parse_ks, pass_at_k
from tinyzero.engine.messages import Completion
from tinyzero.envs import make_env
from tinyzero.errors import TinyZeroError
from tinyzero.scoring import score_many


def brute_force_pass_at_k(correct: list[bool], k: int) -> Fraction:
    """The fraction of all k-subsets of the samples that hold at least one correct sample."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    return Fraction(sum(any(correct[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        correct = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            exact = float(brute_force_pass_at_k(correct, k))  # pass_at_k: c <= n float64 factors, then 1 - them
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=atol_for(torch.float64, 1.0, terms=n)), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_are_huge():
    # C(1000, 500) has about 300 digits: the product form needs none of it.
    expected = 1 - math.comb(990, 500) / math.comb(1000, 500)
    assert pass_at_k(1000, 10, 500) == pytest.approx(expected, abs=atol_for(torch.float64, 1.0, terms=10))
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, abs=atol_for(torch.float64, 1.0))  # 1 - 0.9999 cancels
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="needs at least 4 samples"):
        pass_at_k(3, 1, 4)


@pytest.mark.parametrize("answers, winner", [
    (["3", "4", "4"], 1),            # plain majority
    (["3", "4", "4", "3"], 0),       # 2-2 tie: the answer seen first wins
    (["4", "3", "3", "4"], 0),
    ([None, None, None, "7"], 3),    # unparseable answers never win, however many
    ([None, "5", None, "6", None], 1),  # 1-1 tie among real answers, Nones ignored
    ([None, None], None),            # nobody answered
    ([], None),
])
def test_majority_vote(answers, winner):
    assert majority_vote(answers) == winner


def test_maj_at_k_votes_per_block_and_counts_the_winners_verdict():
    answers = ["1", "2", "2", None, None, "9", "3", "3"]
    correct = [True, False, False, False, False, False, False, False]
    # k=4: blocks [1,2,2,None] -> "2" (wrong), [None,9,3,3] -> "3" (wrong)
    assert maj_at_k(answers, correct, 4) == 0.0
    # k=1: each sample alone; a None block counts 0: maj@1 is the fraction correct
    assert maj_at_k(answers, correct, 1) == 1 / 8
    # k=3: blocks [1,2,2] and [None,None,9]; the remainder [3,3] is left out
    assert maj_at_k(answers, [False, False, False, False, False, True, False, False], 3) == 0.5
    with pytest.raises(ValueError):
        maj_at_k(answers[:2], correct[:2], 3)


def test_parse_ks():
    assert parse_ks("8,1,32,8") == (1, 8, 32)
    assert parse_ks("0") == ()
    for bad in ("1,x", "-1"):
        with pytest.raises(TinyZeroError):
            parse_ks(bad)
    with pytest.raises(TinyZeroError, match="larger than the 4 samples"):
        Sampling((1, 8), 4)


@pytest.mark.parametrize("options, completion, answer", [
    ({"answer_format": "tags"}, "so <answer> -007 </answer>", "-7"),
    ({"answer_format": "tags"}, "<answer>12 + 3</answer>", None),      # not an integer: the reward's "not_integer"
    ({"answer_format": "tags"}, "15", None),                           # no tags
    ({"answer_format": "last_integer"}, "12 + 3 is 15.", "15"),
    ({"answer_format": "last_integer"}, "What is 12 + 3", None),       # ends in an operand
])
def test_arithmetic_answer_is_what_the_reward_reads(options, completion, answer):
    env = make_env("arithmetic", options)
    problem = {"a": 12, "b": 3, "op": "+", "answer": 15}
    assert env.answer(completion, problem) == answer
    # Whatever answer the reward calls correct is the problem's answer, and a correct reply has an answer.
    if env.reward(completion, problem).correct:
        assert answer == "15"


@pytest.mark.parametrize("completion, answer", [
    ("<answer>(3 + 5) * 7</answer>", "56"),
    ("<answer>7 * (5 + 3)</answer>", "56"),       # same value: the same vote
    ("<answer>3 / (5 + 7)</answer>", "1/4"),      # exact, not rounded
    ("<answer>3 / (5 - 5)</answer>", None),       # wrong numbers (5 twice, no 7)
    ("<answer>3 + 5</answer>", None),             # not every number used
    ("<answer>56</answer>", None),                # the target alone is no equation
])
def test_countdown_answer_is_the_value_the_reward_computes(completion, answer):
    env = make_env("countdown")
    problem = {"numbers": [3, 5, 7], "target": 56}
    assert env.answer(completion, problem) == answer
    assert env.reward(completion, problem).correct == (answer == "56")


class ScriptedEngine:
    """A stand-in rollout engine: greedy and sampled texts chosen per prompt, to check the bookkeeping."""

    def __init__(self, greedy: dict[int, str], samples: dict[int, list[str]]):
        self.greedy_texts, self.sample_texts = greedy, samples
        self.seeds: list[int] = []

    def greedy(self, prompts, max_new_tokens):
        return [Completion(token_ids=[1] * len(self.greedy_texts[p[0]]), text=self.greedy_texts[p[0]], finished=True)
                for p in prompts]

    def generate(self, prompts, *, n, max_new_tokens, temperature, top_p, seeds=None):
        assert len(self.sample_texts[prompts[0][0]]) == n
        return [[Completion(token_ids=[1, 2], text=t, finished=True) for t in self.sample_texts[p[0]]] for p in prompts]

    def reseed(self, seed):
        self.seeds.append(seed)


def test_evaluate_counts_correct_only_and_votes_over_answers():
    env = make_env("arithmetic", {"answer_format": "tags"})
    problems = [{"a": 1, "b": 1, "op": "+", "answer": 2}, {"a": 2, "b": 2, "op": "+", "answer": 4}]
    engine = ScriptedEngine(
        greedy={0: "<answer>2</answer>", 1: "<answer>5</answer>"},  # 1 of 2 right; both formatted
        samples={0: ["<answer>2</answer>", "x", "y", "<answer>3</answer>"],  # c=1; votes: 2 vs 3 tie -> 2 (right)
                 1: ["<answer>5</answer>", "<answer>4</answer>", "<answer>5</answer>", "no"]})  # c=1; 5 wins
    outcome = evaluate(engine, env, [[0], [1]], problems, lambda texts, probs: score_many(env, texts, probs),
                       max_new_tokens=8, sampling=Sampling((1, 4), 4, seed=3))
    m = outcome.metrics
    assert m["accuracy"] == 0.5 and m["format_rate"] == 1.0
    assert m["pass@1"] == pytest.approx(0.25) and m["pass@4"] == 1.0
    assert m["maj@4"] == 0.5 and m["maj@1"] == pytest.approx(m["pass@1"])
    assert m["sampled_format_rate"] == pytest.approx(5 / 8)
    assert m["response_length"] == pytest.approx(18.0) and m["sampled_length_median"] == 2.0
    assert m["tokens"] == 2 * 18 + 8 * 2
    assert len(engine.seeds) == 1  # one chunk of prompts, one seed


ANSWER_SOUP = st.lists(
    st.sampled_from(["<answer>", "</answer>", "(", ")", "+", "-", "*", "/", " ", "3", "5", "7", "0", "56", "is"])
    | st.text(max_size=4),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=500), ANSWER_SOUP))
def test_answers_agree_with_the_rewards_on_any_text(text):
    """The vote and the reward read the same thing: a correct reply always has an answer, an answer always has the
    reward's format credit, and equal answers get equal verdicts (here: the right one, and only it, is correct)."""
    cases = [(make_env("countdown"), {"numbers": [3, 5, 7], "target": 56}, "56"),
             (make_env("arithmetic", {"answer_format": "tags"}), {"a": 5, "b": 7, "op": "*", "answer": 35}, "35"),
             (make_env("arithmetic", {"answer_format": "last_integer"}), {"a": 5, "b": 7, "op": "*", "answer": 35},
              "35")]
    for env, problem, right in cases:
        answer, result = env.answer(text, problem), env.reward(text, problem)
        assert result.correct == (answer == right)
        assert answer is None or result.components["format"] == 1.0
