"""Held-out evaluation and inference-time scaling: greedy accuracy, pass@k, maj@k, format rate, lengths.

Shared by the trainer's periodic evaluation and by ``tinyzero eval``. Completions come from the rollout workers
(the engines training uses) and are scored by the environment's own reward; majority votes count the
environment's optional ``answer`` (the value its reward parses). Nothing here reads model text itself.

Definitions (docs/eval.md):
- greedy accuracy: the fraction of problems whose greedy completion is ``correct`` (never ``score``).
- pass@k: for a problem with c of n samples correct, the unbiased estimator 1 - C(n-c, k) / C(n, k) of Chen et al.
  2021 ("Evaluating Large Language Models Trained on Code"), as their product form, averaged over problems.
- maj@k: a problem's n samples are cut, in order, into n // k blocks of k (a remainder is left out); in each block
  the most frequent answer wins, ties going to the answer whose first occurrence comes earliest and no answer
  (None) never winning; the block counts 1 when the winner is ``correct``. maj@k is the mean over blocks and
  problems. A block of k independent samples is one draw of "vote over k samples", so the mean is unbiased.

Simplifications: maj@k averages over disjoint blocks, not over all C(n, k) subsets (same expectation, more
variance); sampling is seeded per chunk of prompts (engine reseed on CPU, per-request seeds where the platform
takes them), so two models evaluated with the same settings see the same seeds, not necessarily the same draws.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tinyzero.envs import Environment, render_prompt
from tinyzero.envs.base import has_answer
from tinyzero.errors import TinyZeroError

CHUNK_PROMPTS = 16  # prompts per engine call: one progress tick each, and the unit that carries a sampling seed


# --------------------------------------------------------------------------------------------- estimators
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct (Chen et al. 2021).

    1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1..n} (1 - k/i): c factors in [0, 1), never a huge binomial."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    missed = 1.0
    for i in range(n - c + 1, n + 1):
        missed *= 1.0 - k / i
    return 1.0 - missed


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the winning sample: the first occurrence of the most frequent answer that is not None.

    Ties go to the answer whose first occurrence comes earliest; None (no parseable answer) never votes, so
    ``[None, None, "3"]`` elects "3". Returns None when no sample has an answer."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first.setdefault(answer, i)
    if not counts:
        return None
    # Highest count first, then earliest first occurrence: the documented tie rule.
    winner = min(counts, key=lambda a: (-counts[a], first[a]))
    return first[winner]


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """One problem's maj@k: the mean over its len(answers) // k consecutive blocks of k samples of whether the
    block's majority answer (``majority_vote``) is correct; a block with no answer counts 0."""
    if len(answers) != len(correct):
        raise ValueError(f"{len(answers)} answers but {len(correct)} verdicts")
    blocks = len(answers) // k
    if k < 1 or blocks == 0:
        raise ValueError(f"maj@{k} needs at least {k} samples, got {len(answers)}")
    wins = 0
    for b in range(blocks):
        winner = majority_vote(answers[b * k : (b + 1) * k])
        wins += winner is not None and bool(correct[b * k + winner])
    return wins / blocks


def parse_ks(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); ``"0"`` -> () (greedy only); a sentence naming the problem otherwise."""
    if text.strip() == "0":
        return ()
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise TinyZeroError(f"--k {text!r} is not a comma-separated list of whole numbers: write e.g. --k 1,8,32") from None
    if any(k < 1 for k in ks):
        raise TinyZeroError(f"--k {text!r}: every k must be at least 1")
    return ks


def check_ks(ks: Sequence[int], samples: int) -> None:
    """k larger than the samples drawn per problem has no estimate: say so before anything loads."""
    too_big = [k for k in ks if k > samples]
    if too_big:
        raise TinyZeroError(f"k={max(too_big)} is larger than the {samples} samples per problem: draw at least "
                            f"{max(too_big)} samples (--samples {max(too_big)}) or lower k")


# -------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Sampling:
    """How the sampled part of an evaluation draws: ``samples`` completions per problem, scored at every k."""

    ks: tuple[int, ...]
    samples: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_ks(self.ks, self.samples)


@dataclass
class EvalOutcome:
    """Metrics (names without the ``eval/`` prefix) and the greedy completions with their verdicts."""

    metrics: dict[str, float]
    greedy: list  # [problems] rollout.Completion
    greedy_results: list  # [problems] RewardResult


def encode_prompt(tokenizer, env: Environment, problem: Mapping, template: str) -> tuple[str, list[int]]:
    """The prompt text and its token ids, exactly as training renders them (chat template or base prefill)."""
    rendered = render_prompt(env, problem, template)
    if isinstance(rendered, list):
        text = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False)
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    return rendered, tokenizer(rendered)["input_ids"]


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of the ``chunk``-th group of prompts: a function of (seed, chunk) only."""
    return (seed * 1_000_003 + 7_919 * (chunk + 1)) % (1 << 31)


def evaluate(engine, env: Environment, prompts: list[list[int]], problems: list[dict],
             score: Callable[[list[str], list[dict]], list], *, max_new_tokens: int,
             sampling: Sampling | None = None, progress: bool = False, label: str = "eval") -> EvalOutcome:
    """Greedy completions of every prompt, then (with ``sampling``) ``sampling.samples`` sampled ones; scored by
    ``score(texts, problems)`` (the environment's reward), summarised as in the module docstring.

    ``engine``: a ``RolloutWorker`` or the trainer's ``RolloutPool`` (``greedy``, ``generate``, ``reseed``)."""
    if len(prompts) != len(problems) or not prompts:
        raise ValueError(f"need one prompt per problem and at least one, got {len(prompts)} and {len(problems)}")
    start = time.perf_counter()
    chunks = [slice(i, i + CHUNK_PROMPTS) for i in range(0, len(prompts), CHUNK_PROMPTS)]
    bar = _bar(2 * len(chunks) if sampling else len(chunks), progress, label)
    greedy = []
    for part in chunks:
        greedy.extend(engine.greedy(prompts[part], max_new_tokens=max_new_tokens))
        bar.update(1)
    results = score([o.text for o in greedy], problems)
    metrics = {"accuracy": _mean([r.correct for r in results]), "format_rate": _format_rate(results),
               **_lengths([o.token_ids for o in greedy], "response_length")}
    tokens = sum(len(o.token_ids) for o in greedy)
    if sampling is not None:
        groups = _sample(engine, prompts, chunks, sampling, max_new_tokens, bar)
        metrics.update(_sampled_metrics(env, groups, problems, score, sampling))
        tokens += sum(len(c.token_ids) for group in groups for c in group)
    bar.close()
    metrics["tokens"] = float(tokens)
    metrics["seconds"] = time.perf_counter() - start
    return EvalOutcome(metrics, greedy, results)


def _sample(engine, prompts, chunks, sampling: Sampling, max_new_tokens: int, bar) -> list[list]:
    groups: list[list] = []
    for index, part in enumerate(chunks):
        seed = chunk_seed(sampling.seed, index)
        engine.reseed(seed)  # CPU engines draw from the global generator
        count = len(prompts[part])
        # Where the platform takes per-request seeds (vLLM on GPU): prompt p's i-th sample gets seed + p*samples + i.
        seeds = [(seed << 16) + p * sampling.samples for p in range(count)]
        groups.extend(engine.generate(prompts[part], n=sampling.samples, max_new_tokens=max_new_tokens,
                                      temperature=sampling.temperature, top_p=sampling.top_p, seeds=seeds))
        bar.update(1)
    return groups


def _sampled_metrics(env, groups: list[list], problems: list[dict], score, sampling: Sampling) -> dict[str, float]:
    texts = [c.text for group in groups for c in group]
    flat_problems = [p for p, group in zip(problems, groups, strict=True) for _ in group]
    results = score(texts, flat_problems)
    n = sampling.samples
    per_problem = [results[i * n : (i + 1) * n] for i in range(len(problems))]
    metrics: dict[str, float] = {}
    for k in sampling.ks:
        metrics[f"pass@{k}"] = _mean([pass_at_k(n, sum(r.correct for r in rs), k) for rs in per_problem])
    if has_answer(env):  # maj@k needs the environment's answer; without it the other metrics still stand
        for k in sampling.ks:
            metrics[f"maj@{k}"] = _mean([
                maj_at_k([env.answer(c.text, p) for c in group], [r.correct for r in rs], k)
                for group, rs, p in zip(groups, per_problem, problems, strict=True)])
    metrics["sampled_format_rate"] = _format_rate(results)
    metrics.update(_lengths([c.token_ids for group in groups for c in group], "sampled_length"))
    return metrics


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def _format_rate(results) -> float:
    return _mean([r.components.get("format", 0.0) for r in results])


def _lengths(token_ids: list[list[int]], name: str) -> dict[str, float]:
    lengths = [len(ids) for ids in token_ids]
    return {name: _mean(lengths), f"{name}_median": float(statistics.median(lengths))}


def _bar(total: int, enabled: bool, label: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=" chunk", disable=not enabled, mininterval=1.0, leave=False)
