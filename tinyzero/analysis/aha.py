"""Self-verification ("aha") metrics: re-checking phrases, task-grounded checks, baselines and the aha step.

Every metric is defined once in docs/metrics.md (section ``aha/``). In short, per batch of completions:

- reflection: the share of completions holding at least one re-checking phrase (a lexicon of phrase
  families, whole words, case-insensitive), overall, per family, and among correct / incorrect completions;
- verification: the share holding at least one *task-grounded* check, found by the environment's optional
  ``verification_checks(text, problem)`` hook (countdown: a candidate expression's value compared with the
  target; arithmetic: the result re-computed a second way); and the distinct candidates tried;
- lengths of correct and incorrect completions, in characters (the same unit for a live run and for a
  transcript file, which holds no tokens);
- baselines: the first rollout batch (sampled from the step-0 policy) and the step-0 evaluation, and the
  change since; the aha step (``aha_step``), by the rule in ``aha_step``.

Simplifications: everything is lexical, on at most ``max_chars`` characters of each completion; no model is
called. Text the prompt holds is not the model's: verbatim copies in the completion of any prompt sentence
(16 characters or more) are blanked before anything is counted; a paraphrase of the prompt still counts.
Each phrase family is one regular expression of literal words joined by bounded separators (no nested
quantifiers), so matching is linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# The default lexicon is config data (aha.lexicon's default); re-exported here as the analysis's default.
from tinyzero.config import DEFAULT_LEXICON  # noqa: F401
from tinyzero.errors import TinyZeroError
from tinyzero.rewards.checks import Checks

PROMPT_SENTENCE_MIN = 16  # shorter prompt fragments ("Answer:") are too common to blank safely
DEFAULT_MAX_CHARS = 8000

_SPLIT_PROMPT = re.compile(r"(?<=[.?!:;])\s+|\n+")


# ------------------------------------------------------------------------------------------ lexicon
def _phrase_pattern(phrase: str) -> str:
    words = [w for w in re.split(r"[\s-]+", phrase.strip()) if w]
    # Both apostrophes: models write "let's" and "let’s".
    return r"[\s-]{0,3}".join(re.escape(w).replace("'", "['’]") for w in words)


def compile_lexicon(lexicon: Mapping) -> dict[str, re.Pattern]:
    """One whole-word, case-insensitive pattern per family; bad entries stop with the dotted key."""
    if not isinstance(lexicon, Mapping) or not lexicon:
        raise TinyZeroError("aha.lexicon must be a non-empty mapping of family names to lists of phrases")
    compiled = {}
    for family, phrases in lexicon.items():
        if not isinstance(family, str) or not family.isidentifier():
            raise TinyZeroError(f"aha.lexicon: family name {family!r} must be a word such as double_check")
        if (not isinstance(phrases, list) or not phrases
                or not all(isinstance(p, str) and re.search(r"\w", p) for p in phrases)):
            raise TinyZeroError(f"aha.lexicon.{family} must be a non-empty list of phrases, got {phrases!r}")
        body = "|".join(sorted((_phrase_pattern(p) for p in phrases), key=len, reverse=True))
        compiled[family] = re.compile(rf"\b(?:{body})\b", re.IGNORECASE)
    return compiled


# --------------------------------------------------------------------------------------- one response
@dataclass(frozen=True)
class Analysis:
    """One completion, as examined.

    text: the examined text (at most max_chars; prompt copies blanked with spaces, so offsets match)
    reflections: (start, end, family) of each re-checking phrase
    checks: the environment's task-grounded checks, or None where it has no detector or no problem
    """

    text: str
    reflections: tuple[tuple[int, int, str], ...]
    checks: Checks | None

    @property
    def families(self) -> set[str]:
        return {family for *_, family in self.reflections}

    @property
    def verified(self) -> bool | None:
        return None if self.checks is None else bool(self.checks.spans)


def blank_prompt(text: str, prompt: str | None) -> str:
    """``text`` with every verbatim copy of a prompt sentence replaced by spaces (same length)."""
    if not prompt:
        return text
    for piece in {p.strip() for p in _SPLIT_PROMPT.split(prompt)}:
        if len(piece) < PROMPT_SENTENCE_MIN:
            continue
        at = text.find(piece)
        while at >= 0:
            text = text[:at] + " " * len(piece) + text[at + len(piece):]
            at = text.find(piece, at + len(piece))
    return text


def analyse(completion: str, lexicon: Mapping[str, re.Pattern], *, prompt: str | None = None,
            problem: Mapping | None = None, detector=None, max_chars: int = DEFAULT_MAX_CHARS) -> Analysis:
    """Reflection phrases and task-grounded checks in one completion (see the module docstring)."""
    text = blank_prompt(completion[:max_chars], prompt)
    found = sorted((m.start(), m.end(), family) for family, pattern in lexicon.items()
                   for m in pattern.finditer(text))
    checks = None
    if detector is not None and isinstance(problem, Mapping):
        checks = detector(text, problem)
    return Analysis(text, tuple(found), checks)


def detector_of(env) -> object | None:
    """The environment's optional ``verification_checks(text, problem) -> Checks`` hook, or None."""
    hook = getattr(env, "verification_checks", None)
    return hook if callable(hook) else None


# ------------------------------------------------------------------------------------------- a batch
def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags)


def batch_metrics(analyses: Sequence[Analysis], families: Iterable[str],
                  correct: Sequence[bool] | None = None) -> dict[str, float]:
    """The per-batch metrics (names without the ``aha/`` prefix); a metric of an empty group is left out."""
    if not analyses:
        return {}
    out: dict[str, float] = {}
    reflected = [bool(a.reflections) for a in analyses]
    out["reflection_rate"] = _rate(reflected)
    for family in families:
        out[f"reflection/{family}"] = _rate([family in a.families for a in analyses])
    lengths = [len(a.text) for a in analyses]
    out["chars_mean"] = sum(lengths) / len(lengths)
    verified = [a.verified for a in analyses if a.verified is not None]
    if verified:
        out["verification_rate"] = _rate(verified)
        counts = [a.checks.candidates for a in analyses if a.checks is not None]
        out["candidates_mean"] = sum(counts) / len(counts)
    if correct is not None:
        for name, want in (("correct", True), ("incorrect", False)):
            group = [i for i, c in enumerate(correct) if bool(c) == want]
            if not group:
                continue
            out[f"reflection_rate_{name}"] = _rate([reflected[i] for i in group])
            out[f"chars_{name}"] = sum(lengths[i] for i in group) / len(group)
            ver = [analyses[i].verified for i in group if analyses[i].verified is not None]
            if ver:
                out[f"verification_rate_{name}"] = _rate(ver)
    return out


def deltas(values: Mapping[str, float], baseline: Mapping[str, float]) -> dict[str, float]:
    """Change since the baseline, for every metric both hold."""
    return {k: values[k] - baseline[k] for k in values if k in baseline}


def signal_name(values: Mapping[str, float]) -> str:
    """The aha rule watches task-grounded verification where the task has a detector, else reflection."""
    return "verification_rate" if "verification_rate" in values else "reflection_rate"


def aha_step(series: Sequence[tuple[int, float]], baseline: float, margin: float, patience: int) -> int | None:
    """The first step from which the signal stays at or above ``baseline + margin`` for ``patience``
    consecutive measurements (that step included); None until that has happened."""
    run_start, run_len = None, 0
    for step, value in series:
        if value >= baseline + margin:
            run_start = step if run_len == 0 else run_start
            run_len += 1
            if run_len >= patience:
                return run_start
        else:
            run_len = 0
    return None


class Tracker:
    """Per-run state: the two baselines, the signal's series, the aha step; survives resume via ``state``."""

    def __init__(self, lexicon: Mapping, env=None, *, margin: float = 0.05, patience: int = 3,
                 max_chars: int = DEFAULT_MAX_CHARS):
        self.lexicon = compile_lexicon(lexicon)
        self.detector = detector_of(env) if env is not None else None
        self.margin, self.patience, self.max_chars = margin, patience, max_chars
        self.baseline: dict[str, float] = {}  # the first rollout batch
        self.eval_baseline: dict[str, float] = {}  # the step-0 evaluation
        self.series: list[tuple[int, float]] = []  # (step, signal) after the baseline batch
        self.first_verification: dict[str, int] = {}  # "rollout" / "eval" -> step of the first check seen

    def analyse(self, completions: Sequence[str], prompts: Sequence[str | None],
                problems: Sequence[Mapping | None]) -> list[Analysis]:
        return [analyse(c, self.lexicon, prompt=p, problem=q, detector=self.detector, max_chars=self.max_chars)
                for c, p, q in zip(completions, prompts, problems, strict=True)]

    def rollout_metrics(self, step: int, analyses: Sequence[Analysis], correct: Sequence[bool]) -> dict:
        """``aha/`` scalars for a rollout batch: the metrics, their change since the baseline, the aha step."""
        values = batch_metrics(analyses, self.lexicon, correct)
        if not self.baseline:
            self.baseline = dict(values)
        else:
            name = signal_name(self.baseline)
            if name in values:
                self.series.append((step, values[name]))
        out = {f"aha/{k}": v for k, v in values.items()}
        out.update({f"aha/delta/{k}": v for k, v in deltas(values, self.baseline).items()})
        found = self.aha_step()
        if found is not None:
            out["aha/aha_step"] = float(found)
        return out

    def eval_metrics(self, analyses: Sequence[Analysis], correct: Sequence[bool]) -> dict:
        values = batch_metrics(analyses, self.lexicon, correct)
        if not self.eval_baseline:
            self.eval_baseline = dict(values)
        out = {f"aha/eval/{k}": v for k, v in values.items()}
        out.update({f"aha/eval_delta/{k}": v for k, v in deltas(values, self.eval_baseline).items()})
        return out

    def aha_step(self) -> int | None:
        name = signal_name(self.baseline)
        if name not in self.baseline:
            return None
        return aha_step(self.series, self.baseline[name], self.margin, self.patience)

    def state(self) -> dict:
        return {"baseline": self.baseline, "eval_baseline": self.eval_baseline,
                "series": [list(p) for p in self.series], "first_verification": self.first_verification}

    def load(self, state: Mapping) -> None:
        self.baseline = dict(state.get("baseline", {}))
        self.eval_baseline = dict(state.get("eval_baseline", {}))
        self.series = [(int(s), float(v)) for s, v in state.get("series", [])]
        self.first_verification = dict(state.get("first_verification", {}))


# ------------------------------------------------------------------------------------------ transcripts
def segments(analysis: Analysis) -> list[tuple[str, str]]:
    """The examined text cut into (kind, piece): kind is "" (plain), "reflection" or "verification".

    Where spans overlap, verification wins (it is the stronger signal) and reflection spans inside it vanish."""
    marks = [(s, e, "verification") for s, e in (analysis.checks.spans if analysis.checks else ())]
    taken = [(s, e) for s, e, _ in marks]
    for s, e, _family in analysis.reflections:
        if not any(s < te and ts < e for ts, te in taken):
            marks.append((s, e, "reflection"))
            taken.append((s, e))
    out, pos, text = [], 0, analysis.text
    for s, e, kind in sorted(marks):
        if s > pos:
            out.append(("", text[pos:s]))
        out.append((kind, text[s:e]))
        pos = e
    if pos < len(text):
        out.append(("", text[pos:]))
    return out


def annotate_plain(analysis: Analysis) -> str:
    """Plain-text marks for TensorBoard: [[reflection]] and {{verification}}."""
    wrap = {"": "{}", "reflection": "[[{}]]", "verification": "{{{{{}}}}}"}
    return "".join(wrap[kind].format(piece) for kind, piece in segments(analysis))
