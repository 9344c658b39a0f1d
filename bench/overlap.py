"""The demo batch in Ray mode, on-policy against one-step-off-policy: seconds a step and held-out accuracy.

Run: .venv/bin/python bench/overlap.py [--steps 8] [--threads 1] [--eval-size 100] [--model smollm2-135m]

Two runs of recipes/demo-cpu.yaml's batch (16 prompts x 8 samples, 64 new tokens, SmolLM2-135M, vLLM), one after
the other, identical but for ``run.off_policy_steps`` (0, then 1): ``run.mode=ray`` (the rollout engine and the
learner are separate processes), ``run.threads`` per role (1 by default: each role computes on one thread, so on a
2-core machine the engine and the learner each have a core when they run side by side; the OS places them, they
are not pinned), ``algo.rollout_correction=tis`` in both (overlap needs it; the on-policy run gets the same
objective), evaluation only at the start and the end, and one checkpoint at the end (``checkpoint.every=0``: every
step but the last overlaps). Prints, side by side, the median of the steps' ``time/step`` over steps 2-6 (the first
step loads and warms up; fewer steps: from step 2 to the last), and the held-out greedy accuracy after the last step.
The run folders go to a temporary folder, deleted at the end unless ``--keep``. Quote the CPU (printed) with the
figures, and compare only figures of one sitting: machines differ, and a shared machine is noisy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from machine import cpu_line  # bench/machine.py: run as a script, bench/ is on sys.path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo-cpu.yaml"


def run_once(out: Path, off_policy: int, args) -> dict:
    from tinyzero.trainer import train

    name = f"overlap-{off_policy}"
    overrides = [
        f"run.out_dir={out}", f"run.name={name}", f"run.steps={args.steps}", "run.mode=ray",
        f"run.threads={args.threads}", f"run.off_policy_steps={off_policy}", "algo.rollout_correction=tis",
        "eval.every=0", f"eval.size={args.eval_size}", "checkpoint.every=0", f"model.name={args.model}",
        "log.tensorboard=false", *args.override,
    ]
    summary = train(str(RECIPE), overrides)
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steps = [m["time/step"] for m in metrics if 2 <= m["step"] <= 6]
    return {"median_step_s": statistics.median(steps) if steps else float("nan"), "steps_in_median": len(steps),
            "accuracy": summary["after"], "before": summary["before"], "n": summary["n"],
            "staleness": [m.get("rollout/staleness", 0.0) for m in metrics]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps of each run (the median reads steps 2-6)")
    parser.add_argument("--threads", type=int, default=1, help="run.threads: torch/OpenMP threads of each role")
    parser.add_argument("--eval-size", type=int, default=100, help="held-out problems (the demo's 100)")
    parser.add_argument("--model", default="smollm2-135m", help="model.name (a tiny model folder to try it fast)")
    parser.add_argument("--out", default="", help="folder for the two run folders, kept (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("override", nargs="*", help="more a.b.c=value overrides, for both runs")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="tinyzero-overlap-"))
    print(f"CPU: {cpu_line()}", flush=True)
    try:
        results = {k: run_once(out, k, args) for k in (0, 1)}
    finally:
        if not args.keep and not args.out:  # only the temporary folder this script made
            shutil.rmtree(out)
    print(f"\n{'':34}{'off_policy_steps=0':>20}{'off_policy_steps=1':>20}")
    rows = [("s/step (median of steps 2-6)", "median_step_s", "{:.1f}"),
            ("steps in the median", "steps_in_median", "{}"),
            ("held-out accuracy, start", "before", "{:.1%}"),
            (f"held-out accuracy, step {args.steps}", "accuracy", "{:.1%}")]
    for label, key, fmt in rows:
        print(f"{label:34}{fmt.format(results[0][key]):>20}{fmt.format(results[1][key]):>20}")
    print(f"{'staleness per step (off 1)':34}{' '.join(f'{s:.0f}' for s in results[1]['staleness']):>40}")
    speedup = results[0]["median_step_s"] / results[1]["median_step_s"]
    print(f"\nspeed-up of the median step: {speedup:.2f}x (held-out problems: {results[0]['n']})")


if __name__ == "__main__":
    main()
