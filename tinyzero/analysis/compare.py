"""``tinyzero report RUN RUN [RUN ...]``: several runs side by side in one self-contained HTML file.

The same curves on the same axes — held-out accuracy, training reward and accuracy, response length, and the aha
rates of training batches and of held-out completions — one colour per run; a control run (``reward.control``)
is drawn dashed and labelled ``control``. Above them: each run's config differences (the dotted keys whose values
are not the same in every run), held-out accuracy at every evaluation, and, where a control is among the runs, the
claim against it in words (tinyzero/analysis/claim.py).

The aha metrics are recomputed from each run's transcripts, as the single-run report does; held-out accuracy comes
from the newest checkpoint's history and, for evaluations since, from ``evals.jsonl.gz``, so a run still going
can be compared too.
Simplification: runs are matched by step number; a step one run lacks is left out of that comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path

from tinyzero.analysis.aha_file import analyse_file, settings_for
from tinyzero.analysis.arms import (
    SEED_KEY,
    ArmVerdict,
    group_arms,
    held_out_verdict,
    per_step,
    training_verdict,
)
from tinyzero.analysis.claim import Finding, Share, held_out, training
from tinyzero.analysis.report import CSS, _line_plot, check_out, write_html
from tinyzero.analysis.runs import (
    config_differences,
    control_of,
    eval_history,
    flatten,
    number,
    read_config,
    read_metrics,
)
from tinyzero.errors import TinyZeroError

# What makes two runs' held-out problems the same: the environment, the seed and the number drawn.
HELD_OUT_KEYS = ("env.name", "env.options", "eval.size", "run.seed")
AHA_RATES = (("reflection_rate", "reflection rate"), ("verification_rate", "verification rate"))
VERDICT_CSS = ("li.above { color: #1d6b2a; } li.below { color: #a3281c; } li.none, li.within, li.unknown { color: #555; }"
               " li { margin: .3em 0; }")


@dataclass
class Run:
    """One run folder, read: its label in the page, config, control, metrics and aha analyses."""

    label: str
    path: Path
    config: dict
    control: str
    metrics: list[dict]
    history: list[dict]
    rollouts: dict
    evals: dict | None

    @property
    def legend(self) -> str:
        return self.label if self.control == "none" else f"{self.label} (control: {self.control})"

    def style(self, index: int) -> dict:
        color = f"C{index % 10}"
        return {"color": color, "linestyle": "--", "marker": "x"} if self.control != "none" else {"color": color}


def load_run(path: Path, label: str) -> Run:
    rollouts_path = path / "rollouts.jsonl.gz"
    metrics = read_metrics(path)
    if not rollouts_path.is_file():
        raise TinyZeroError(f"{path} has no rollouts.jsonl.gz: give a run folder that finished a step")
    settings = settings_for(rollouts_path)
    evals_path = path / "evals.jsonl.gz"
    config = read_config(path)
    return Run(label, path, config, control_of(config), metrics, eval_history(path), analyse_file(rollouts_path, settings),
               analyse_file(evals_path, settings) if evals_path.is_file() else None)


def _labels(paths: list[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


# ------------------------------------------------------------------------------------------- series
def _scalar(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if number(r.get(key)) and number(r.get("step"))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _accuracy_curve(run: Run) -> tuple[list, list]:
    shares = accuracy_shares(run)
    steps = sorted(shares)
    return steps, [shares[s].value for s in steps]


def _by_step(summary: dict | None, key: str) -> tuple[list, list]:
    rows = [] if summary is None else [{"step": s["step"], **s["metrics"]} for s in summary["by_step"]]
    return _scalar(rows, key)


def accuracy_shares(run: Run) -> dict[int, Share]:
    """Held-out accuracy per evaluation: the checkpoint's history, and evaluations logged since the newest
    checkpoint from ``evals.jsonl.gz`` (a run still going, or one stopped between checkpoints)."""
    size = flatten(run.config).get("eval.size")
    out = {s["step"]: Share(s["accuracy"], s["responses"]) for s in (run.evals or {}).get("by_step", [])
           if number(s.get("accuracy")) and s["responses"]}
    for h in run.history:  # eval_history: numbered rows, accuracies between 0 and 1
        n = h.get("n", size)
        if number(h.get("eval/accuracy")) and isinstance(n, int) and not isinstance(n, bool) and n > 0:
            out[h["step"]] = Share(h["eval/accuracy"], n)
    return out


def rate_shares(summary: dict | None, key: str) -> dict[int, Share]:
    if summary is None:
        return {}
    return {s["step"]: Share(s["metrics"][key], s["responses"]) for s in summary["by_step"]
            if number(s["metrics"].get(key)) and s["responses"]}


def training_shares(run: Run) -> dict[int, Share]:
    """Training accuracy per step, counted from the run's transcripts (each step's completions)."""
    return {s["step"]: Share(s["accuracy"], s["responses"]) for s in run.rollouts["by_step"]
            if number(s.get("accuracy")) and s["responses"]}


# --------------------------------------------------------------------------------------------- arms
@dataclass
class Arm:
    """Runs whose configs differ only by ``run.seed``; labelled by the keys that set it apart from the other arms."""

    label: str
    runs: list[Run]

    @property
    def control(self) -> str:
        return self.runs[0].control

    @property
    def legend(self) -> str:
        seeds = f"{len(self.runs)} seeds" if len(self.runs) > 1 else "1 seed"
        control = "" if self.control == "none" else f", control: {self.control}"
        return f"{self.label} ({seeds}{control})"


def arms_of(runs: list[Run]) -> list[Arm]:
    """The runs grouped into arms, in order of first appearance."""
    groups = group_arms([run.config for run in runs])
    apart = [(key, values) for key, values in config_differences([runs[g[0]].config for g in groups])
             if key != SEED_KEY]
    labels = [", ".join(f"{key}={'—' if values[i] is None else values[i]}" for key, values in apart) or "all runs"
              for i in range(len(groups))]
    return [Arm(label, [runs[i] for i in group]) for label, group in zip(labels, groups, strict=True)]


def default_baseline(arms: list[Arm]) -> int:
    """The control arm if there is one, else the first."""
    return next((i for i, arm in enumerate(arms) if arm.control != "none"), 0)


def arm_verdicts(arm: Arm, base: Arm) -> list[ArmVerdict]:
    """The arm against the baseline: held-out accuracy (where both were evaluated on the same kind of problems),
    then training accuracy."""
    keys = [k for k in HELD_OUT_KEYS if k != SEED_KEY and _key_differs(arm.runs[0], base.runs[0], k)]
    if keys:
        out = [ArmVerdict("held-out accuracy", "unknown", None, None, None, "held-out accuracy: the data cannot say "
                          f"— the arms were evaluated on different problems ({', '.join(keys)} differ).")]
    else:
        out = [held_out_verdict("held-out accuracy", [accuracy_shares(r) for r in arm.runs],
                                [accuracy_shares(r) for r in base.runs])]
    out.append(training_verdict("training accuracy", [training_shares(r) for r in arm.runs],
                                [training_shares(r) for r in base.runs]))
    return out


# --------------------------------------------------------------------------------------------- page
def _overlay(title: str, runs: list[Run], series, ylabel: str, aha_marks: bool = False) -> str | None:
    curves = [(run.legend, *series(run), run.style(i)) for i, run in enumerate(runs)]

    def marks(ax):
        for i, run in enumerate(runs):
            if run.rollouts["aha_step"] is not None:
                ax.axvline(run.rollouts["aha_step"], alpha=0.5, label=f"aha step, {run.label}",
                           **{k: v for k, v in run.style(i).items() if k != "marker"})

    return _line_plot(title, curves, ylabel, marks if aha_marks else None)


def _arm_overlay(title: str, arms: list[Arm], series, ylabel: str, aha_marks: bool = False) -> str | None:
    """Each arm's mean over its seeds, with a shaded band from its lowest to its highest seed."""
    del aha_marks  # an aha step is a run's; an arm's seeds may have none or several
    curves, bands = [], []
    for i, arm in enumerate(arms):
        steps = per_step([dict(zip(*series(run), strict=True)) for run in arm.runs])
        x = sorted(steps)
        style = arm.runs[0].style(i)
        curves.append((arm.legend, x, [steps[s].mean for s in x], style))
        bands.append((x, [steps[s].lo for s in x], [steps[s].hi for s in x], style["color"]))

    def shade(ax):
        for x, lo, hi, color in bands:
            if len(x) > 1:
                ax.fill_between(x, lo, hi, color=color, alpha=0.15, linewidth=0)

    return _line_plot(title, curves, ylabel, shade)


PLOTS = (
    ("Held-out greedy accuracy", _accuracy_curve, "fraction", False),
    ("Training reward (the verifier's mean score)", lambda r: _scalar(r.metrics, "reward/mean"), "mean score", False),
    ("Training accuracy", lambda r: _scalar(r.metrics, "reward/accuracy"), "fraction", False),
    ("Response length, training (tokens)", lambda r: _scalar(r.metrics, "rollout/response_length_mean"), "tokens",
     False),
    ("Response length, held-out (tokens)", lambda r: _scalar(r.history, "eval/response_length"), "tokens", False),
    *((f"{words.capitalize()}, {where}", series, "share of responses", aha)
      for key, words in AHA_RATES
      for where, series, aha in (("training batches", lambda r, key=key: _by_step(r.rollouts, key), True),
                                 ("held-out", lambda r, key=key: _by_step(r.evals, key), False))),
)


def _plots(runs: list[Run], arms: list[Arm] | None = None) -> list[str]:
    """The curves, one per run, or one per arm (its mean and band) where some arm has several seeds."""
    if arms is None:
        drawn = [_overlay(title, runs, series, ylabel, aha) for title, series, ylabel, aha in PLOTS]
    else:
        drawn = [_arm_overlay(f"{title}, mean over seeds", arms, series, ylabel) for title, series, ylabel, _ in PLOTS]
    return [p for p in drawn if p]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _runs_table(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        acc = accuracy_shares(run)
        first_last = (f"{acc[min(acc)].value:.1%} (step {min(acc)}) → {acc[max(acc)].value:.1%} (step {max(acc)})"
                      if acc else "no evaluation")
        aha = run.rollouts["aha_step"]
        rows.append([run.label, "control: " + run.control if run.control != "none" else "—", str(len(run.metrics)),
                     first_last, "none" if aha is None else str(aha), str(run.path)])
    return _table(["run", "control", "steps", "held-out accuracy", "aha step", "folder"], rows)


def _differences(runs: list[Run]) -> str:
    found = config_differences([run.config for run in runs])
    if not found:
        return "<p>The runs' configs are identical apart from their names.</p>"
    rows = [[key, *("—" if v is None else str(v) for v in values)] for key, values in found]
    return _table(["dotted key", *(run.label for run in runs)], rows)


def _accuracy_by_eval(runs: list[Run]) -> str:
    shares = [accuracy_shares(run) for run in runs]
    steps = sorted(set().union(*shares))
    if not steps:
        return "<p>No run has a held-out evaluation in a checkpoint.</p>"
    rows = [[str(s), *(f"{sh[s].value:.1%}" if s in sh else "—" for sh in shares)] for s in steps]
    return _table(["step", *(run.label for run in runs)], rows)


def findings(run: Run, control: Run) -> list[Finding]:
    """The claim of ``run`` against ``control``: held-out accuracy, then the aha rates, held-out and training."""
    differing = [k for k in HELD_OUT_KEYS if _key_differs(run, control, k)]
    if differing:
        out = [Finding("held-out accuracy", "none", "held-out accuracy: no verdict — the runs were evaluated on "
                                                    f"different problems ({', '.join(differing)} differ).")]
    else:
        out = [held_out("held-out accuracy", accuracy_shares(run), accuracy_shares(control))]
    for key, words in AHA_RATES:
        if not differing:
            out.append(held_out(f"held-out {words}", rate_shares(run.evals, key), rate_shares(control.evals, key)))
        out.append(training(f"{words} (training batches)", rate_shares(run.rollouts, key),
                            rate_shares(control.rollouts, key)))
    return out


def _in_short(found: list[Finding]) -> str:
    """One sentence over the findings: which metrics rose above the control's, fell below it, or have no verdict."""
    groups = {verdict: [f.metric for f in found if f.verdict == verdict] for verdict in ("above", "below", "none")}
    words = {"above": "rose above the control's", "below": "fell below the control's",
             "none": "no verdict (too few measurements, or within the noise)"}
    parts = [f"{', '.join(names)}: {words[verdict]}" for verdict, names in groups.items() if names]
    return "In short — " + "; ".join(parts) + "."


def _key_differs(a: Run, b: Run, key: str) -> bool:
    fa, fb = flatten(a.config), flatten(b.config)
    pick = lambda flat: {k: v for k, v in flat.items() if k == key or k.startswith(key + ".")}  # noqa: E731
    return pick(fa) != pick(fb)


def _claim(runs: list[Run]) -> str:
    controls = [r for r in runs if r.control != "none"]
    treated = [r for r in runs if r.control == "none"]
    if not controls or not treated:
        return ("<p>No control run among these (and a run to hold against it): train one with "
                "<code>reward.control=shuffled</code> to say whether a rise is the reward's doing.</p>")
    parts = []
    for run in treated:
        for control in controls:
            parts.append(f"<h3>{escape(run.label)} against {escape(control.legend)}</h3>")
            found = findings(run, control)
            parts.append(f"<p>{escape(_in_short(found))}</p>")
            extra = [k for k, _ in config_differences([run.config, control.config]) if k != "reward.control"]
            if extra:
                parts.append(f"<p class='note'>Not a clean control: the runs also differ in {escape(', '.join(extra))}."
                             "</p>")
            parts.append("<ul>" + "".join(f"<li class='{f.verdict}'>{escape(f.text)}</li>" for f in found) + "</ul>")
    return "".join(parts)


def _arms_section(arms: list[Arm], baseline: int) -> str:
    """The arms (seeds, held-out accuracy at each evaluation as mean ± sd and range) and each against the baseline."""
    rows = [[arm.label + (" (baseline)" if i == baseline and len(arms) > 1 else ""), str(len(arm.runs)),
             ", ".join(str(flatten(r.config).get(SEED_KEY, "—")) for r in arm.runs),
             "control: " + arm.control if arm.control != "none" else "—"] for i, arm in enumerate(arms)]
    parts = [_table(["arm", "seeds", "run.seed", "control"], rows)]
    curves = [per_step([{s: sh.value for s, sh in accuracy_shares(r).items()} for r in arm.runs]) for arm in arms]
    steps = sorted(set().union(*curves))
    if steps:
        parts.append("<h3>Held-out accuracy: mean ± sd over seeds (lowest–highest)</h3>")
        parts.append(_table(["step", *(arm.label for arm in arms)],
                            [[str(s), *(c[s].short() if s in c else "—" for c in curves)] for s in steps]))
    base = arms[baseline]
    if len(arms) == 1:
        parts.append("<p>One arm: nothing to hold against a baseline; its spread between seeds is above.</p>")
        return "".join(parts)
    parts.append(f"<h3>Each arm against the baseline, {escape(base.legend)}</h3>")
    parts.append("<p class='note'>A gap counts only where it exceeds both the seed-to-seed spread (Welch's t band) "
                 "and the binomial measurement noise, each at 95%; with one seed in an arm there is no spread, and "
                 "the data cannot say.</p>")
    for i, arm in enumerate(arms):
        if i == baseline:
            continue
        parts.append(f"<h4>{escape(arm.legend)}</h4><ul>" + "".join(
            f"<li class='{v.verdict}'>{escape(v.text)}</li>" for v in arm_verdicts(arm, base)) + "</ul>")
    return "".join(parts)


def _resolved(run_dirs: list[Path]) -> list[Path]:
    paths = [Path(p).resolve() for p in run_dirs]
    if len(set(paths)) != len(paths):
        raise TinyZeroError("the same run folder is given twice: give each run once")
    return paths


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """The run folders read, each labelled by its folder's name (parent/name where two share one)."""
    paths = _resolved(run_dirs)
    return [load_run(path, label) for path, label in zip(paths, _labels(paths), strict=True)]


def write_comparison(run_dirs: list[Path], out: Path | None = None, baseline: Path | None = None,
                     title: str | None = None, runs: list[Run] | None = None) -> Path:
    """Write the side-by-side report of ``run_dirs``; returns its path (default ``FIRST_RUN/compare.html``).

    Runs that differ only by their seed are one arm: where some arm has several seeds, or a ``baseline`` run folder
    is named, the page adds the arms and each arm's verdict against the baseline's arm (default: a control arm, else
    the first), and draws each arm's mean over its seeds with its range."""
    paths = _resolved(run_dirs)
    if baseline is not None and Path(baseline).resolve() not in paths:
        raise TinyZeroError(f"--baseline {baseline} is not one of the run folders given: name one of them")
    out = out or paths[0] / "compare.html"
    check_out(out)  # before any run is read: the one-run report's check and sentence
    runs = runs if runs is not None else load_runs(paths)
    arms = arms_of(runs)
    by_arms = baseline is not None or any(len(arm.runs) > 1 for arm in arms)
    title = title or " vs ".join(run.label for run in runs)
    html = [f"<!doctype html><html><head><meta charset='utf-8'><title>tinyzero: {escape(title)}</title>"
            f"<style>{CSS}{VERDICT_CSS}</style></head><body>",
            f"<h1>tinyzero runs side by side: {escape(title)}</h1>",
            "<p class='note'>" + ("One colour per arm: its mean over its seeds, shaded from its lowest to its highest "
                                  "seed" if by_arms else "One colour per run") +
            "; a control run (reward.control) is dashed and labelled control. Every metric is defined in "
            "docs/metrics.md.</p>"]
    if by_arms:
        index = default_baseline(arms) if baseline is None else next(
            i for i, arm in enumerate(arms) if any(r.path == Path(baseline).resolve() for r in arm.runs))
        html += ["<h2>Arms (runs that differ only by run.seed)</h2>", _arms_section(arms, index)]
    html += ["<h2>Runs</h2>", _runs_table(runs),
             "<h2>Config differences</h2>", _differences(runs),
             "<h2>The claim, against the control</h2>", _claim(runs),
             "<h2>Held-out accuracy at each evaluation</h2>", _accuracy_by_eval(runs),
             "<h2>Curves</h2>", *_plots(runs, arms if by_arms else None), "</body></html>"]
    write_html(out, "\n".join(html))
    return out
