"""Survey of the reasoning-gym tasks (docs/gym.md): which load with their defaults, where each is scored, whether its
own oracle answer scores 1.0 through our reward (tags), and the time of that call.

Run: .venv/bin/python bench/gym_survey.py [--json]. Tasks without an oracle answer (null) are only loaded. The first
call of a worker task includes starting its worker; the second is timed.
"""

from __future__ import annotations

import json
import random
import sys
import time

from tinyzero.envs import make_env
from tinyzero.envs.gym import task_names
from tinyzero.errors import TinyZeroError


def survey() -> list[dict]:
    rows = []
    for task in task_names():
        row = {"task": task}
        try:
            env = make_env(f"gym:{task}")
            problem = env.sample(random.Random(0))
        except TinyZeroError as err:
            rows.append({**row, "loads": False, "error": str(err)})
            continue
        row.update(loads=True, scored=env.placement, exact=problem["exact"])
        if problem["answer"] is not None:
            completion = f"<answer>{problem['answer']}</answer>"
            env.reward(completion, problem)
            start = time.perf_counter()
            result = env.reward(completion, problem)
            row.update(oracle=result.reason, ms=round(1000 * (time.perf_counter() - start), 2))
        rows.append(row)
    return rows


def main() -> None:
    rows = survey()
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        print(f"{r['task']:<26} {r.get('scored', 'does not load'):<11} {r.get('oracle', '-'):<16} {r.get('ms', '')}")
    loaded = [r for r in rows if r["loads"]]
    print(f"{len(rows)} registered, {len(loaded)} load; in-process {sum(r['scored'] == 'in-process' for r in loaded)}, "
          f"worker {sum(r['scored'] == 'worker' for r in loaded)}; oracle correct "
          f"{sum(r.get('oracle') == 'correct' for r in loaded)} of {sum('oracle' in r for r in loaded)} with one")


if __name__ == "__main__":
    main()
