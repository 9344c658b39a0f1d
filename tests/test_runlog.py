"""The run folder and its logs: `tinyzero train` clears only folders it marked as its own, and never a user's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyzero.config import load_config
from tinyzero.errors import TinyZeroError
from tinyzero.runlog import RUN_MARKER, claim_run_dir
from tinyzero.trainer import train


def finished_run(run_dir: Path) -> Path:
    """A run folder as a finished run leaves it: metrics, and a complete checkpoint."""
    ckpt = run_dir / "checkpoints" / "step_000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.json").write_text(json.dumps({"step": 1}))
    (ckpt / "COMPLETE").write_text("1")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    (run_dir / RUN_MARKER).write_text("")
    return run_dir


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["", ".", "..", " ", "a/b", "../elsewhere", "a\\b", "a" * 201, "é" * 101])
def test_run_name_must_be_one_plain_folder_name(name):
    with pytest.raises(TinyZeroError, match="run.name must be") as err:
        load_config(None, [f"run.name={name}"])
    assert "\n" not in str(err.value)
    if len(name) > 100:  # the limit is in bytes: 101 two-byte letters are 202
        assert "at most 200 bytes" in str(err.value) and f"this one has {len(name.encode())})" in str(err.value)


def test_a_run_name_of_200_bytes_is_a_name():
    assert load_config(None, ["run.name=" + "a" * 200]).run.name == "a" * 200
    assert load_config(None, ["run.name=" + "é" * 100]).run.name == "é" * 100


@pytest.mark.parametrize("name", ["", ".", "..", "a" * 300], ids=["empty", "dot", "dotdot", "300-bytes"])
def test_train_with_a_name_that_is_no_folder_leaves_out_dir_alone(name, tiny_model_dir, tmp_path):
    """`run.name=` or `run.name=.` made the run folder out_dir itself, and train emptied it: a finished run inside
    was deleted before the model loaded. 300 bytes of name ended in `OSError: File name too long` (issue 33)."""
    out = tmp_path / "runs"
    finished_run(out / "done")
    (tmp_path / "keep.txt").write_text("the user's")  # what `..` would reach
    before, beside = tree(out), tree(tmp_path)
    with pytest.raises(TinyZeroError, match="run.name must be"):
        train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={out}", f"run.name={name}",
                     "rollout.backend=hf", "run.steps=1"])
    assert tree(out) == before and tree(tmp_path) == beside


def test_train_refuses_a_users_folder_and_touches_nothing(tiny_model_dir, tmp_path):
    mine = tmp_path / "runs" / "notes"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.tex").write_text("three years of work")
    (mine / "sub" / "data.csv").write_text("1,2,3")
    before = tree(mine)
    with pytest.raises(TinyZeroError) as err:
        train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path / 'runs'}", "run.name=notes",
                     "rollout.backend=hf", "run.steps=1"])
    message = str(err.value)
    assert str(mine) in message and "run.name=" in message and "tinyzero resume" in message
    assert "\n" not in message
    assert tree(mine) == before


def test_claim_refuses_a_finished_run_and_a_file(tmp_path):
    run = finished_run(tmp_path / "done")
    before = tree(run)
    with pytest.raises(TinyZeroError, match="already holds a run: continue it with `tinyzero resume"):
        claim_run_dir(run)
    assert tree(run) == before
    older = tmp_path / "older"  # a run made before the marker existed: still a run
    older.mkdir()
    (older / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(TinyZeroError, match="already holds a run"):
        claim_run_dir(older)
    (tmp_path / "plain").write_text("x")
    with pytest.raises(TinyZeroError, match="is a file"):
        claim_run_dir(tmp_path / "plain")
    assert (tmp_path / "plain").read_text() == "x"


def test_claim_marks_new_and_empty_folders_and_clears_only_its_own(tmp_path):
    new = tmp_path / "a" / "new"
    claim_run_dir(new)
    assert (new / RUN_MARKER).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    claim_run_dir(empty)
    assert (empty / RUN_MARKER).is_file()
    # A run that stopped before its first step: the kit's marker, a config and a step-0 eval log. Cleared.
    (new / "config.yaml").write_text("run: {}\n")
    (new / "evals.jsonl.gz").write_bytes(b"")
    claim_run_dir(new)
    assert sorted(p.name for p in new.iterdir()) == [RUN_MARKER]
    # The same files without the marker: not the kit's, refused.
    (empty / RUN_MARKER).unlink()
    (empty / "config.yaml").write_text("run: {}\n")
    with pytest.raises(TinyZeroError, match="was not made by `tinyzero train`"):
        claim_run_dir(empty)
    assert (empty / "config.yaml").is_file()


def unfinished_run(run_dir: Path) -> Path:
    """A marked run folder as a run that stopped before its first step leaves it: everything but metrics.jsonl."""
    for folder in ("tensorboard", "checkpoints/.tmp-step_000001-77", "cache/vllm", "cache/inductor", "wandb/run-x"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_MARKER).write_text("")
    (run_dir / "config.yaml").write_text("run: {}\n")
    (run_dir / "evals.jsonl.gz").write_bytes(b"")
    (run_dir / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"tb")
    (run_dir / "checkpoints" / ".tmp-step_000001-77" / "learner.pt").write_bytes(b"half")
    (run_dir / "cache" / "vllm" / "kernel.so").write_bytes(b"k")
    (run_dir / "wandb" / "latest-run").symlink_to("run-x")  # W&B links its newest run
    return run_dir


@pytest.mark.parametrize("where", ["precious.txt", "tensorboard/precious.txt", "checkpoints/precious.txt",
                                   "cache/precious.txt", "notes/precious.txt"])
def test_a_users_file_in_an_unfinished_run_folder_is_refused_and_kept(tmp_path, where):
    """A marked folder with no finished step was cleared whole: a precious.txt placed in it was deleted (issue 33).
    Now only what the kit writes there is cleared, and anything else refuses the folder with nothing touched."""
    run = unfinished_run(tmp_path / "run")
    (run / where).parent.mkdir(parents=True, exist_ok=True)
    (run / where).write_text("the user's")
    before = tree(run)
    with pytest.raises(TinyZeroError) as err:
        claim_run_dir(run)
    message = str(err.value)
    top = where.split("/")[0]
    assert f"also holds {top}, which `tinyzero train` does not write, so nothing in it is touched" in message
    assert "run.name=NEW" in message and "\n" not in message
    assert tree(run) == before and (run / "wandb" / "latest-run").is_symlink()
    (run / where).unlink()  # moved out: the rest is the kit's, cleared
    if top == "notes":
        (run / top).rmdir()
    claim_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == [RUN_MARKER]


def test_a_link_in_an_unfinished_run_folder_is_not_followed(tmp_path):
    """A link named like a kit folder is not the kit's (it makes none): deleting through it could reach anything."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "vllm").write_text("not a cache")
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_MARKER).write_text("")
    (run / "cache").symlink_to(elsewhere)
    with pytest.raises(TinyZeroError, match="also holds cache, which `tinyzero train` does not write"):
        claim_run_dir(run)
    assert (elsewhere / "vllm").read_text() == "not a cache" and (run / "cache").is_symlink()


def test_train_keeps_a_users_file_in_an_unfinished_run_folder(tiny_model_dir, tmp_path):
    run = unfinished_run(tmp_path / "runs" / "demo")
    (run / "precious.txt").write_text("the user's")
    before = tree(run)
    with pytest.raises(TinyZeroError, match="also holds precious.txt"):
        train(None, [f"model.name={tiny_model_dir}", f"run.out_dir={tmp_path / 'runs'}", "run.name=demo",
                     "rollout.backend=hf", "run.steps=1"])
    assert tree(run) == before


# ------------------------------------------------------------------------ logs as a kill leaves them
def gz_member(rows: list[dict]) -> bytes:
    """One gzip member of JSON lines, as RunLog.rollouts appends per step."""
    import gzip

    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def rows_of(step: int, n: int = 6) -> list[dict]:
    import random

    rng = random.Random(step)  # text that does not compress away, so a member spans many bytes
    return [{"step": step, "completion": "".join(rng.choice("abcdefgh ") for _ in range(200)), "problem": {"i": i}}
            for i in range(n)]


def test_every_cut_of_the_last_gzip_member_reads_and_truncates(tmp_path):
    """A kill during an append can end the file at any byte of the last member: each such file still reads (the
    complete lines kept, the rest dropped with one note) and still truncates for a resume. The gzip module raised
    EOFError, which broke resume, report and aha."""
    from tinyzero.analysis.transcripts import read_jsonl
    from tinyzero.runlog import truncate_jsonl

    whole = gz_member(rows_of(1)) + gz_member(rows_of(2))
    first = len(gz_member(rows_of(1)))
    for cut in range(first + 1, len(whole)):
        path = tmp_path / "rollouts.jsonl.gz"
        path.write_bytes(whole[:cut])
        notes: list[str] = []
        from tinyzero.jsonl import read_rows

        rows = [row for _, row in read_rows(path, notes.append)]
        assert rows[:6] == rows_of(1) and rows[6:] == rows_of(2)[: len(rows) - 6], cut
        assert len(notes) == 1 and "ends in an unfinished gzip member" in notes[0], cut
        truncate_jsonl(path, 1)
        assert list(read_jsonl(path)) == rows_of(1)


def test_an_unfinished_metrics_line_is_dropped_and_said(tmp_path, capsys):
    from tinyzero.analysis.transcripts import read_jsonl
    from tinyzero.runlog import RunLog

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "a": 1.0}) + "\n" + json.dumps({"step": 2, "a": 2.0}) + "\n"
                    + '{"step": 3, "a": 3.')  # the kill came mid-line
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    assert list(read_jsonl(path)) and capsys.readouterr().err.count("unfinished last line") == 1  # said once
    said: list[str] = []
    log = RunLog(tmp_path, 3, tensorboard=False, stream=None)
    log.say = said.append
    log.truncate_after(2)
    assert path.read_text().endswith('"a": 2.0}\n') and len(said) == 1 and "metrics.jsonl ends in" in said[0]
    log.scalars(3, {"a": 3.0})  # appended on a line of its own
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]


@pytest.mark.parametrize("damage", ["flipped", "garbage-after", "not-utf8", "not-json"])
def test_damage_a_kill_cannot_cause_is_one_sentence(tmp_path, damage):
    from tinyzero.analysis.transcripts import read_jsonl
    from tinyzero.runlog import truncate_jsonl

    path = tmp_path / "rollouts.jsonl.gz"
    data = bytearray(gz_member(rows_of(1)) + gz_member(rows_of(2)))
    if damage == "flipped":
        data[40] ^= 0xFF
    elif damage == "garbage-after":
        data += b"this is not gzip at all"
    elif damage == "not-utf8":
        data = bytearray(gz_member(rows_of(1))) + gz_member([]) + __import__("gzip").compress(b'{"step": 2, "x": "\xff"}\n')
    else:
        data += __import__("gzip").compress(b'{"step": 2, "x": oops}\n')
    path.write_bytes(bytes(data))
    for read in (lambda: list(read_jsonl(path)), lambda: truncate_jsonl(path, 1)):
        with pytest.raises(TinyZeroError) as err:
            read()
        assert str(path) in str(err.value) and "\n" not in str(err.value)


CHILD = '''
import random, sys, time
from pathlib import Path
from tinyzero.runlog import RunLog

run = Path(sys.argv[1])
log = RunLog(run, 3, tensorboard=False)


def rows(step):
    """One step's completions; in step 3, half way through, tell the parent and wait for the kill."""
    rng = random.Random(step)
    for i in range(40):
        if step == 3 and i == 20:
            print("mid-append", (run / "rollouts.jsonl.gz").stat().st_size, flush=True)
            time.sleep(600)
        text = "".join(rng.choice("abcdefghij wait, verify ") for _ in range(5000))
        yield {"prompt": "p", "completion": text, "score": 0.0, "correct": False, "problem": {"id": step * 100 + i}}


for step in (1, 2, 3):
    log.scalars(step, {"reward/mean": 0.1 * step, "time/step": 1.0})
    if step == 3:
        print("before", (run / "rollouts.jsonl.gz").stat().st_size, flush=True)
    log.rollouts(step, rows(step))
'''


@pytest.mark.slow
def test_resume_report_and_aha_after_a_kill_9_during_an_append(tmp_path):
    """A real process killed with SIGKILL in the middle of appending step 3's completions."""
    import shutil
    import signal
    import subprocess
    import sys

    from tinyzero.analysis.aha_file import Settings, analyse_file
    from tinyzero.analysis.report import write_report
    from tinyzero.analysis.transcripts import read_jsonl
    from tinyzero.runlog import RunLog

    run = tmp_path / "killed"
    run.mkdir()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        before = int(child.stdout.readline().split()[1])
        marker, during = child.stdout.readline().split()
        assert marker == "mid-append"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    rollouts = run / "rollouts.jsonl.gz"
    assert rollouts.stat().st_size > before  # the unfinished member is on disk
    assert int(during) >= before
    kept = shutil.copy(rollouts, tmp_path / "as-killed.jsonl.gz")
    steps = [row["step"] for row in read_jsonl(rollouts)]
    assert steps[:80] == [1] * 40 + [2] * 40 and set(steps[80:]) <= {3} and len(steps) < 120
    summary = analyse_file(kept, Settings())  # tinyzero aha
    assert summary["responses"] == len(steps) and [s["step"] for s in summary["by_step"]][:2] == [1, 2]
    assert write_report(run).is_file()  # tinyzero report
    log = RunLog(run, 3, tensorboard=False)
    log.truncate_after(2)  # what a resume from step 2's checkpoint does
    assert [row["step"] for row in read_jsonl(rollouts)] == [1] * 40 + [2] * 40
    assert [row["step"] for row in read_jsonl(run / "metrics.jsonl")] == [1, 2]
