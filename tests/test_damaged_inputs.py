"""Damaged inputs to `aha`, `report`, `reward` and `resume`: each is one sentence naming the file and the fix (or,
where a kill can leave it so, a note and a result), never a traceback. The cases are the ones issue 18 found
answered with tracebacks; `eval`'s are in tests/test_eval_command.py.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import sys
from pathlib import Path

import pytest

from tinyzero.cli import main
from tinyzero.errors import TinyZeroError

ROW = {"step": 1, "prompt": "p", "completion": "Wait, let me verify: 2 + 2 = 4. <answer>4</answer>", "correct": True}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_sentence(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("tinyzero: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def lines_file(path: Path, body: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


def good_line(**changes) -> bytes:
    return (json.dumps({**ROW, **changes}) + "\n").encode()


# ---------------------------------------------------------------------------------------------------- aha
AHA_CASES = {
    "invalid-utf8": (good_line() + b'{"step": 2, "completion": "\xff\xfe"}\n', False, "line 2 is not UTF-8 text"),
    "long-integer": (good_line() + b'{"step": 1' + b"0" * 5000 + b', "completion": "x"}\n', False,
                     "line 2 is JSON tinyzero does not read (ValueError"),
    "deep-nesting": (good_line() + b'{"completion": "x", "problem": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
                     False, "line 2 is JSON tinyzero does not read (RecursionError"),
    "step-as-list": (good_line() + good_line(step=[1, 2]), False, "row 2 has a list [1, 2] as its step 'step'"),
    "step-as-object": (good_line() + good_line(step={"a": 1}), True, "row 2 has a dict {'a': 1} as its step"),
    "not-an-object": (good_line() + b"[1, 2]\n", True, "line 2 is not a JSON object"),
    "garbage-gzip": (b"\x1f\x8b\x08\x00garbage that is not deflate", False, "is damaged (Error -3"),
}


@pytest.mark.parametrize("case", AHA_CASES)
def test_aha_on_a_damaged_file_is_one_sentence(case, tmp_path, capsys):
    body, gz, fragment = AHA_CASES[case]
    path = lines_file(tmp_path / "t.jsonl.gz", body, gz)
    code, _, err = run_cli(capsys, "aha", str(path))
    assert_one_sentence(code, err, str(path), fragment)


def test_aha_on_a_truncated_gzip_keeps_what_was_written(tmp_path, capsys):
    whole = gzip.compress(good_line(step=1) + good_line(step=2))
    path = lines_file(tmp_path / "cut.jsonl.gz", whole[: len(whole) - 8])  # killed before the gzip trailer
    code, out, err = run_cli(capsys, "aha", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["responses"] == 2 and "ends in an unfinished gzip member" in err


# ------------------------------------------------------------------------------------------------- report
@pytest.fixture()
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    rows = [{**ROW, "step": s, "score": 1.0, "problem": {"a": s}} for s in (1, 2, 3) for _ in range(2)]
    (run / "rollouts.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    metrics = [{"step": s, "reward/mean": 0.5, "time/step": 2.0, "cost/usd": 0.1 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    ckpt = run / "checkpoints" / "step_000003"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 3, "history": [{"step": 0, "eval/accuracy": 0.5}]}))
    (ckpt / "COMPLETE").write_text("3")
    return run


def _cut_rollouts(run: Path) -> None:
    data = (run / "rollouts.jsonl.gz").read_bytes()
    (run / "rollouts.jsonl.gz").write_bytes(data + gzip.compress(good_line(step=4) * 3)[:30])


def _text_time(run: Path) -> None:
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "time/step": "slow", "cost/usd": "a lot", "reward/mean": [1]}) + "\n")
        fh.write(json.dumps({"reward/mean": 0.5}) + "\n")  # a row without a step


@pytest.mark.parametrize("damage", [_cut_rollouts, _text_time], ids=["truncated-gzip", "non-numeric-values"])
def test_report_reads_past_what_a_kill_or_a_script_left(run_dir, capsys, damage):
    damage(run_dir)
    code, out, err = run_cli(capsys, "report", str(run_dir))
    assert code == 0, err
    assert (run_dir / "report.html").read_text().count("<img") >= 2


@pytest.mark.parametrize("where", ["a-folder", "under-a-file"])
def test_report_to_a_place_it_cannot_write_is_one_sentence(run_dir, capsys, where):
    out = run_dir if where == "a-folder" else run_dir / "metrics.jsonl" / "report.html"
    code, _, err = run_cli(capsys, "report", str(run_dir), "--out", str(out))
    assert_one_sentence(code, err, f"cannot write the report to {out}", "give --out a file path")


def test_report_with_a_garbage_checkpoint_state_is_one_sentence(run_dir, capsys):
    (run_dir / "checkpoints" / "step_000003" / "state.json").write_text("\x00garbage")
    code, _, err = run_cli(capsys, "report", str(run_dir))
    assert_one_sentence(code, err, "step_000003/state.json is damaged (JSONDecodeError)")


# ------------------------------------------------------------------------------------------------- reward
PROBLEM = {"a": 2, "b": 2, "op": "+", "answer": 4}
REWARD_CASES = {
    "long-integer-truth": (b'{"completion": "<answer>4</answer>", "problem": {"a": 2, "b": 2, "op": "+", "answer": '
                           + b"9" * 5000 + b"}}\n", "line 1: JSON tinyzero does not read"),
    "invalid-utf8": (b'{"completion": "\xff<answer>4</answer>", "problem": {}}\n', "line 1: not UTF-8 text"),
    "deep-nesting": (b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 1: not valid JSON"),
    "problem-not-object": (b'{"completion": "x", "problem": [1]}\n', "line 1: 'problem' must be an object"),
    "truth-wrong-type": (json.dumps({"completion": "<answer>4</answer>", "problem": {**PROBLEM, "answer": "four"}})
                         .encode() + b"\n", "line 1: malformed problem for arithmetic"),
}


@pytest.mark.parametrize("case", REWARD_CASES)
def test_reward_on_a_malformed_line_is_one_sentence(case, capsys, monkeypatch):
    body, fragment = REWARD_CASES[case]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body), encoding="utf-8"))
    code, _, err = run_cli(capsys, "reward", "arithmetic")
    assert_one_sentence(code, err, fragment)


def test_reward_still_scores_good_lines(capsys, monkeypatch):
    body = json.dumps({"completion": "<answer>4</answer>", "problem": PROBLEM}).encode() + b"\n\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(body), encoding="utf-8"))
    code, out, err = run_cli(capsys, "reward", "arithmetic")
    assert code == 0 and json.loads(out)["correct"] is True, err


# ------------------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> Path:
    """A two-step tiny run with a checkpoint after each step, copied for each damage below."""
    from tinyzero.trainer import train

    out = tmp_path_factory.mktemp("damaged-resume")
    train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={out}", "run.name=base", "run.steps=2",
                 "rollout.backend=hf", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2",
                 "rollout.max_new_tokens=6", "eval.size=2", "eval.max_new_tokens=6", "checkpoint.every=1",
                 "checkpoint.keep_last=2", "log.tensorboard=false",
                 "env.options={digits: 1, ops: '+', answer_format: last_integer}"])
    return out / "base"


def _rewrite_checksums(ckpt: Path) -> None:
    from tinyzero.checkpoint import write_checksums

    write_checksums(ckpt)  # as if the damage came with checksums that agree: the loaders stand guard


def _no_checksums(ckpt: Path) -> None:
    (ckpt / "checksums.json").unlink()  # as a checkpoint written before checksums


def _flip(path: Path, at: int = -200) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _state(ckpt: Path, **changes) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    state.update(changes)
    (ckpt / "state.json").write_text(json.dumps(state))


def _crafted_pickle(ckpt: Path) -> None:
    import torch

    class Runs:
        def __reduce__(self):
            return (open, (str(ckpt / "code-ran"), "w"))

    state = torch.load(ckpt / "learner.pt", weights_only=True)
    state["updates"] = Runs()
    torch.save(state, ckpt / "learner.pt")


def _nan_moments(ckpt: Path) -> None:
    import torch

    state = torch.load(ckpt / "learner.pt", weights_only=True)
    for per_param in state["optimizer"]["state"].values():
        per_param["exp_avg_sq"].fill_(float("nan"))
    torch.save(state, ckpt / "learner.pt")


def _other_model(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(ckpt / "policy" / "model.safetensors"))
    weights["model.extra.weight"] = weights.pop(sorted(weights)[-1])
    save_file(weights, str(ckpt / "policy" / "model.safetensors"), metadata={"format": "pt"})


RESUME_CASES = {  # damage to the latest checkpoint (or the run) -> what the sentence names
    "flipped-weights": ([lambda c: _flip(c / "policy" / "model.safetensors")],
                        "model.safetensors is damaged (its SHA-256 differs"),
    "truncated-learner": ([lambda c: (c / "learner.pt").write_bytes((c / "learner.pt").read_bytes()[:100])],
                          "learner.pt is damaged (its SHA-256 differs"),
    "missing-learner": ([lambda c: (c / "learner.pt").unlink()], "learner.pt is missing"),
    "extra-pickle": ([lambda c: (c / "policy" / "pytorch_model.bin").write_bytes(b"x")],
                     "pytorch_model.bin was not part of the checkpoint"),
    "garbage-checksums": ([lambda c: (c / "checksums.json").write_text("{")], "has a damaged checksums.json"),
    "garbage-state": ([lambda c: (c / "state.json").write_text("garbage"), _no_checksums],
                      "state.json is damaged (JSONDecodeError)"),
    "state-without-step": ([lambda c: (c / "state.json").write_text("{}"), _no_checksums],
                           "state.json is damaged (it holds no step number)"),
    "state-wrong-cursor": ([lambda c: _state(c, cursor="four"), _rewrite_checksums], "(its cursor is not"),
    "state-wrong-aha": ([lambda c: _state(c, aha=[1, 2], wall_s="long"), _rewrite_checksums],
                        "(its aha state, wall_s is not"),
    "garbage-learner": ([lambda c: (c / "learner.pt").write_bytes(b"garbage"), _no_checksums],
                        "learner.pt is damaged (not a file torch.save wrote)"),
    "truncated-weights": ([lambda c: (c / "policy" / "model.safetensors").write_bytes(b"\x10\x00"), _no_checksums],
                          "model.safetensors is damaged"),
    "crafted-pickle": ([_crafted_pickle, _rewrite_checksums], "learner.pt asks to run code when loaded"),
    "nan-moments": ([_nan_moments, _rewrite_checksums], "learner.pt holds NaN or infinite values"),
    "another-models-weights": ([_other_model, _rewrite_checksums], "weights do not match the model"),
    "garbage-config": ([lambda c: (c.parent.parent / "config.yaml").write_text("run: [oops")],
                       "config.yaml is not valid YAML"),
    # issue 33: "after 999 steps" for a run of 2; a cursor of 10**12 printed "resumed" and hung fast-forwarding
    "state-ahead-of-the-log": ([lambda c: _state(c, step=999), _rewrite_checksums],
                               "says the run finished step 999, but its run log"),
    "state-cursor-10^12": ([lambda c: _state(c, cursor=10**12), _rewrite_checksums],
                           "says 1,000,000,000,000 training problems were drawn, more than 2 steps of at most 2"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_from_a_damaged_checkpoint_is_one_sentence(case, finished, tmp_path):
    from tinyzero.trainer import train

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpt = run / "checkpoints" / "step_000002"
    damages, fragment = RESUME_CASES[case]
    for damage in damages:
        damage(ckpt)
    before = (run / "metrics.jsonl").read_bytes()
    with pytest.raises(TinyZeroError) as err:
        train(None, ["run.steps=3"], resume_dir=str(run))
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    assert "config.yaml" in message or str(ckpt) in message or str(ckpt.relative_to(tmp_path)) in message
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing written, nothing lost
    assert not (ckpt / "code-ran").exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["state-ahead-of-the-log", "state-cursor-10^12"])
def test_a_state_its_run_cannot_have_written_is_refused_before_any_model_loads(case, finished, tmp_path, monkeypatch):
    from tinyzero.engine import models, roles
    from tinyzero.trainer import train

    def no_model(*args, **kwargs):
        raise AssertionError("a tokenizer or model was loaded before the state was checked")

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for damage in RESUME_CASES[case][0]:
        damage(run / "checkpoints" / "step_000002")
    monkeypatch.setattr(models, "load_tokenizer", no_model)  # the first thing a trainer loads, then its roles
    monkeypatch.setattr(roles, "build_roles", no_model)
    with pytest.raises(TinyZeroError, match=RESUME_CASES[case][1]):
        train(None, ["run.steps=3"], resume_dir=str(run))
