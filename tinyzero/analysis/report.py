"""``tinyzero report RUN_DIR``: one self-contained HTML file with a run's curves and annotated transcripts.

Plots (PNG, drawn with matplotlib's Agg backend, base64-embedded, so the file opens anywhere offline): reward and
accuracy (train, and held-out from the checkpoint's eval history), response length, the aha metrics against their
baselines with the aha step, reflection by phrase family, correct vs incorrect completions, time per phase and,
when a price was set, cost. Then transcripts with re-checking phrases and task-grounded checks marked.

The aha metrics are always recomputed from ``rollouts.jsonl.gz`` (and ``evals.jsonl.gz`` where the run has one)
with this version's analysis, so a run made before the ``aha/`` metrics existed gets the same report.
Simplification: the eval curve comes from the newest checkpoint's ``state.json`` (its history holds every
evaluation so far); a run without a checkpoint has no eval curve.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from html import escape
from pathlib import Path

from tinyzero.analysis.aha import DEFAULT_LEXICON, Analysis, Tracker
from tinyzero.analysis.aha_file import Settings, analyse_file, settings_for
from tinyzero.analysis.runs import control_of, eval_history, read_config, read_metrics
from tinyzero.analysis.runs import number as _number
from tinyzero.analysis.transcripts import problem_id, read_jsonl, same_problem_at_start, transcript_html
from tinyzero.errors import TinyZeroError
from tinyzero.fields import short
from tinyzero.scoring import CONTROLS

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .3em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } .pair { display: flex; gap: 1em; } .pair > div { flex: 1; min-width: 0; }
pre { white-space: pre-wrap; background: #fafafa; border: 1px solid #e4e4e4; padding: .6em; font-size: .85em; }
mark.reflection { background: #ffe08a; } mark.verification { background: #a8e6a1; }
.note { color: #666; font-size: .9em; }
.control { background: #eef3ff; border-left: 4px solid #4a6fd1; padding: .4em .8em; }
"""


def _png(fig, title: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<h3>{escape(title)}</h3><img alt="{escape(title)}" src="data:image/png;base64,{data}">'


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows where both are numbers: a damaged row is left out of the curve."""
    pts = [(r["step"], r[key]) for r in rows if _number(r.get(key)) and _number(r.get("step"))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _line_plot(title: str, curves: list[tuple[str, list, list, dict]], ylabel: str, extra=None) -> str | None:
    """One axes; each curve (label, x, y, style kwargs); None when there is nothing to draw."""
    curves = [c for c in curves if c[1]]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    lines = [ax.plot(x, y, label=label, **({"marker": "o", "markersize": 3} | style))[0]
             for label, x, y, style in curves]
    if extra is not None:
        extra(ax)
    # Labels are names from the run (folders, phrase families), shown as written: the handles are passed
    # explicitly, since matplotlib leaves out labels that start with "_", and math parsing is off, since it reads
    # "$...$" as TeX and raises on what it does not know (a run folder named "$\foo{x}$").
    lines += [line for line in ax.get_lines()[len(lines):] if not re.fullmatch(r"_child\d+", line.get_label())]
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    legend = ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="best")
    for text in legend.get_texts():
        text.set_parse_math(False)
    return _png(fig, title)


def _plots(metrics: list[dict], history: list[dict], rollouts: dict, evals: dict | None) -> list[str]:
    plots = []
    ev_x, ev_acc = _series(history, "eval/accuracy")
    plots.append(_line_plot("Reward and accuracy", [
        ("train reward (mean score)", *_series(metrics, "reward/mean"), {}),
        ("train accuracy", *_series(metrics, "reward/accuracy"), {}),
        ("held-out greedy accuracy", ev_x, ev_acc, {"marker": "s", "linewidth": 2}),
        ("score given to the learner (control run)", *_series(metrics, "reward/control_mean"), {"linestyle": "--"}),
    ], "fraction"))
    plots.append(_line_plot("Response length (tokens)", [
        ("train mean", *_series(metrics, "rollout/response_length_mean"), {}),
        ("train max", *_series(metrics, "rollout/response_length_max"), {"alpha": 0.5}),
        ("held-out mean", *_series(history, "eval/response_length"), {"marker": "s"}),
    ], "tokens"))
    if any("curriculum/level" in m for m in metrics):  # data.curriculum: the level over steps, and what it drew
        plots.append(_line_plot("Curriculum: level and the groups it drew", [
            ("level (0: easiest)", *_series(metrics, "curriculum/level"), {"drawstyle": "steps-post", "color": "k"}),
            ("pass rate at the level", *_series(metrics, "curriculum/pass_rate"), {}),
            ("groups all wrong", *_series(metrics, "curriculum/groups_all_wrong"), {"linestyle": ":"}),
            ("groups all right", *_series(metrics, "curriculum/groups_all_right"), {"linestyle": ":"}),
            ("groups drawn again", *_series(metrics, "curriculum/revisited_frac"), {"linestyle": "--"}),
        ], "level / share"))
    steps = rollouts["by_step"]
    if steps:
        by = [{"step": s["step"], **s["metrics"]} for s in steps]
        base = steps[0]["metrics"]
        aha = rollouts["aha_step"]

        def marks(ax):
            for key, color in (("reflection_rate", "C0"), ("verification_rate", "C1")):
                if key in base:
                    ax.axhline(base[key], color=color, linestyle="--", alpha=0.6, label=f"{key} baseline (step {steps[0]['step']})")
            if aha is not None:
                ax.axvline(aha, color="red", alpha=0.7, label=f"aha step {aha}")

        curves = [("reflection rate", *_series(by, "reflection_rate"), {"color": "C0"}),
                  ("verification rate", *_series(by, "verification_rate"), {"color": "C1"})]
        if evals and evals["by_step"]:
            ev = [{"step": s["step"], **s["metrics"]} for s in evals["by_step"]]
            curves += [("held-out reflection", *_series(ev, "reflection_rate"), {"color": "C0", "marker": "s", "linestyle": ":"}),
                       ("held-out verification", *_series(ev, "verification_rate"), {"color": "C1", "marker": "s", "linestyle": ":"})]
        plots.append(_line_plot("Self-verification against the step-0 baseline", curves, "share of responses", marks))
        families = sorted({k for b in by for k, v in b.items() if k.startswith("reflection/") and v > 0})
        plots.append(_line_plot("Re-checking phrases by family", [
            (f.split("/", 1)[1], *_series(by, f), {}) for f in families], "share of responses"))
        plots.append(_line_plot("Correct vs incorrect responses", [
            ("reflection, correct", *_series(by, "reflection_rate_correct"), {}),
            ("reflection, incorrect", *_series(by, "reflection_rate_incorrect"), {}),
            ("verification, correct", *_series(by, "verification_rate_correct"), {}),
            ("verification, incorrect", *_series(by, "verification_rate_incorrect"), {}),
        ], "share of responses"))
        plots.append(_line_plot("Length of correct vs incorrect responses", [
            ("correct", *_series(by, "chars_correct"), {}), ("incorrect", *_series(by, "chars_incorrect"), {}),
        ], "characters"))
    plots.append(_line_plot("Time per step", [
        (key.split("/", 1)[1], *_series(metrics, key), {})
        for key in ("time/step", "time/rollout", "time/learner", "time/reward", "time/reference",
                    "time/old_logprobs", "time/sync", "time/aha")], "seconds"))
    cost_key = "cost/usd" if any("cost/usd" in m for m in metrics) else None
    if cost_key:
        plots.append(_line_plot("Cost so far", [("dollars", *_series(metrics, cost_key), {})], "USD"))
    return [p for p in plots if p]


def _pick(path: Path, tracker: Tracker, *, after_step: int | None = None) -> dict:
    """From a transcript file: the first completion with a check (after ``after_step``), and the most telling
    completion of the first and of the last step (a check first, else a reflection, else the first one)."""
    first: tuple[dict, Analysis] | None = None
    ends: dict[str, tuple[dict, Analysis, int]] = {}
    lo = hi = None
    for row in read_jsonl(path):
        analysis = _analyse_row(tracker, row)
        step = row.get("step", 0)
        if not _number(step):
            raise TinyZeroError(f"{path} has a row whose step is not a number ({short(step)}): give the run's own "
                                "transcript file")
        rank = 2 if analysis.verified else 1 if analysis.reflections else 0
        if first is None and analysis.verified and (after_step is None or step > after_step):
            first = (row, analysis)
        lo = step if lo is None else min(lo, step)
        hi = step if hi is None else max(hi, step)
        for name, edge in (("first", lo), ("last", hi)):
            if step == edge and (name not in ends or ends[name][0].get("step") != step or rank > ends[name][2]):
                ends[name] = (row, analysis, rank)
    return {"first_check": first, **{k: v[:2] for k, v in ends.items()}}


def _analyse_row(tracker: Tracker, row: Mapping) -> Analysis:
    problem, prompt = row.get("problem"), row.get("prompt")
    return tracker.analyse([row.get("completion", "")], [prompt if isinstance(prompt, str) else None],
                           [problem if isinstance(problem, Mapping) else None])[0]


def _transcript_block(title: str, row: Mapping, analysis: Analysis) -> str:
    checks = len(analysis.checks.spans) if analysis.checks is not None else "n/a"
    families = ", ".join(sorted(analysis.families)) or "none"
    return (f"<div><h3>{escape(title)}</h3><p class='note'>step {escape(str(row.get('step')))}, correct "
            f"{escape(str(row.get('correct')))}, score {escape(str(row.get('score')))}; re-checking phrases: "
            f"{escape(families)}; checks: {checks}</p><pre>{transcript_html(analysis)}</pre></div>")


def _transcripts(run_dir: Path, tracker: Tracker) -> str:
    parts = ["<p class='note'>Marks: <mark class='reflection'>re-checking phrase</mark> "
             "<mark class='verification'>task-grounded check</mark>. Copies of the prompt are blanked.</p>"]
    for name, label, after in (("rollouts.jsonl.gz", "training", None), ("evals.jsonl.gz", "held-out", 0)):
        path = run_dir / name
        if not path.is_file():
            continue
        picked = _pick(path, tracker, after_step=after)
        first = picked["first_check"]
        if first is None:
            parts.append(f"<p>No {label} completion holds a task-grounded check.</p>")
        else:
            row, analysis = first
            pair = [_transcript_block(f"First {label} check", row, analysis)]
            before = same_problem_at_start(run_dir, row.get("problem"), row.get("prompt"))
            if before is not None and before.get("step") != row.get("step"):
                pair.append(_transcript_block("Same problem at the start", before, _analyse_row(tracker, before)))
            else:
                pair.append("<div><p class='note'>No step-0 transcript of this problem in the run (training "
                            "problems do not repeat).</p></div>")
            parts.append(f"<div class='pair'>{''.join(pair)}</div>")
        if "first" in picked and "last" in picked:
            (r0, a0), (r1, a1) = picked["first"], picked["last"]
            same = problem_id(r0.get("problem"), r0.get("prompt")) == problem_id(r1.get("problem"), r1.get("prompt"))
            parts.append("<div class='pair'>" + _transcript_block(f"{label}: first step", r0, a0)
                         + _transcript_block(f"{label}: last step" + (" (same problem)" if same else ""), r1, a1)
                         + "</div>")
    return "\n".join(parts)


def _summary_table(metrics: list[dict], history: list[dict], rollouts: dict) -> str:
    rows = [("steps", str(len(metrics)))]
    history = [h for h in history if _number(h.get("eval/accuracy")) and _number(h.get("step"))]
    if history:
        rows.append(("held-out accuracy, first → last eval",
                     f"{history[0]['eval/accuracy']:.1%} (step {history[0]['step']}) → "
                     f"{history[-1]['eval/accuracy']:.1%} (step {history[-1]['step']})"))
    steps = rollouts["by_step"]
    if steps:
        b, last = steps[0]["metrics"], steps[-1]["metrics"]
        for key in ("reflection_rate", "verification_rate", "candidates_mean", "chars_mean"):
            if key in b and key in last:
                rows.append((f"{key}: baseline (step {steps[0]['step']}) → last (step {steps[-1]['step']})",
                             f"{b[key]:.3f} → {last[key]:.3f} (Δ {last[key] - b[key]:+.3f})"))
        rows.append((f"aha step ({rollouts['aha_signal']})",
                     str(rollouts["aha_step"]) if rollouts["aha_step"] is not None else "none (rule: docs/metrics.md)"))
    step_s = [m["time/step"] for m in metrics if _number(m.get("time/step"))]
    if step_s:
        rows.append(("mean seconds per step", f"{sum(step_s) / len(step_s):.1f}"))
    if metrics and _number(metrics[-1].get("cost/usd")):
        hours = metrics[-1].get("cost/gpu_hours")
        rows.append(("cost", f"${metrics[-1]['cost/usd']:.2f} ({hours if _number(hours) else 0:.2f} GPU-hours)"))
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def control_note(config: Mapping) -> str:
    """A control run says so under its title (empty for a normal run)."""
    control = control_of(config)
    if control == "none":
        return ""
    what = CONTROLS.get(control, "scores other than the verifier's")
    return (f"<p class='control'><b>Control run</b> (reward.control={escape(control)}): the learner got {escape(what)}"
            ". Accuracy, the reward curve and held-out evaluations are the verifier's.</p>")


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the HTML report of ``run_dir``; returns its path (default ``run_dir/report.html``)."""
    run_dir = run_dir.resolve()  # "." has no name to put in the title
    out = out or run_dir / "report.html"
    check_out(out)
    metrics = read_metrics(run_dir)
    rollouts_path = run_dir / "rollouts.jsonl.gz"
    if not rollouts_path.is_file():
        raise TinyZeroError(f"{run_dir} has no rollouts.jsonl.gz: give a run folder that finished a step")
    settings: Settings = settings_for(rollouts_path)
    rollouts = analyse_file(rollouts_path, settings)
    evals = analyse_file(run_dir / "evals.jsonl.gz", settings) if (run_dir / "evals.jsonl.gz").is_file() else None
    history = eval_history(run_dir)
    tracker = Tracker(settings.lexicon or DEFAULT_LEXICON, settings.env, max_chars=settings.max_chars)
    env = rollouts["env"] or "none (lexical metrics only)"
    html = [f"<!doctype html><html><head><meta charset='utf-8'><title>tinyzero report: {escape(run_dir.name)}</title>"
            f"<style>{CSS}</style></head><body>",
            f"<h1>tinyzero run report: {escape(run_dir.name)}</h1>", control_note(read_config(run_dir)),
            f"<p class='note'>{escape(str(run_dir))} — environment {escape(env)}; {rollouts['responses']} training "
            "completions analysed. Every metric is defined in docs/metrics.md.</p>",
            "<h2>Summary</h2>", _summary_table(metrics, history, rollouts),
            "<h2>Curves</h2>", *_plots(metrics, history, rollouts, evals),
            "<h2>Transcripts</h2>", _transcripts(run_dir, tracker), "</body></html>"]
    write_html(out, "\n".join(html))
    return out


def check_out(out: Path) -> None:
    """Where a report goes, checked before any work: a file path (new or old) in an existing folder."""
    try:
        why = ("Is a directory" if out.is_dir() else f"{out.parent} does not exist" if not out.parent.exists()
               else f"{out.parent} is not a folder" if not out.parent.is_dir() else None)
    except OSError as err:  # no permission to look, a name too long
        why = err.strerror or type(err).__name__
    if why is not None:
        raise TinyZeroError(_cannot_write(out, why))


def write_html(out: Path, text: str) -> None:
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as err:  # a folder, a read-only place, a missing parent
        raise TinyZeroError(_cannot_write(out, err.strerror or type(err).__name__)) from None


def _cannot_write(out: Path, why: str) -> str:
    return f"cannot write the report to {out} ({why}): give --out a file path in a folder you can write to"
