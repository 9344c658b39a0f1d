"""Completions scored both by ``tinyzero reward`` and by an export's ``compute_score`` (tests/test_export_verl.py,
tests/test_verl_interop.py): right, wrong, format-only and hostile ones, for each problem of a test split.

None contains a tokenizer special token such as ``<|im_end|>``: verl decodes responses with
``skip_special_tokens=True``, so those strings would reach the reward changed (docs/verl.md).
"""

from __future__ import annotations

HOSTILE = [
    "",
    "<answer></answer>",
    "<answer> (first number + second number) * third number </answer>",  # the prompt's own example
    "<answer>" * 2000 + "(" * 5000,
    "<answer>" + "1+" * 5000 + "1</answer>",
    "<answer>1e9999</answer> 9" + "9" * 3000,
    "\x00\x01\x7f <answer>\u0661\u0662 + \u0663</answer> \u202e 12",
    "</answer><answer>3</answer><answer>-007</answer> and finally 7",
    "<ANSWER>12</ANSWER>\t<answer>\n 12 \n</answer>",
    "\U0001f600" * 1000 + " <answer>((((1))))</answer>",
]


def right_answer(env_name: str, problem: dict) -> list[str]:
    """Completions that should score as correct for ``problem`` (both answer styles where they differ)."""
    if env_name == "countdown":
        return [f"<think>Try it.</think> <answer>{problem['solution']}</answer>"]
    return [f"<think>{problem['answer']}?</think> <answer>{problem['answer']}</answer>",
            f"So the result is {problem['answer']}"]


def wrong_answer(env_name: str, problem: dict) -> list[str]:
    if env_name == "countdown":
        numbers = problem["numbers"]
        return [f"<answer>{' + '.join(map(str, numbers))} + 0</answer>",
                f"<answer>{' - '.join(map(str, numbers))}</answer>"]
    return [f"<answer>{problem['answer'] + 1}</answer>", f"It is {problem['answer'] - 1}"]


def cases(env_name: str, problems: list[dict]) -> list[dict]:
    """``{"index", "completion"}`` rows: the right and wrong answers of each problem, then every hostile string."""
    out = []
    for index, problem in enumerate(problems):
        for completion in right_answer(env_name, problem) + wrong_answer(env_name, problem):
            out.append({"index": index, "completion": completion})
    for number, completion in enumerate(HOSTILE):
        out.append({"index": number % len(problems), "completion": completion})
    return out
