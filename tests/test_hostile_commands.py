"""Issue 33's hostile inputs to `merge`, `report RUN RUN ...` and `eval` on a LoRA run, and their neighbours.

Every refused input is one line on stderr (`tinyzero: error: ...`) naming the input and the fix, exit code 2, no
traceback, and nothing written where the output would have gone: no folder at `merge --out` (and no staging folder
beside it), no report at `report --out`, no `eval/` record in the run. Inputs a report reads past (a metrics row
without a step number, as the one-run report already does; a run folder whose name matplotlib would read as TeX)
give a report and at most one note line. The LoRA run is tests/test_lora.py's `lora_run` (two steps on a tiny
random model); the report runs are tests/test_compare.py's crafted folders.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_lora import lora_run  # noqa: F401 - the fixture, shared (it trains once per module)

from tinyzero.checkpoint import write_checksums
from tinyzero.cli import main

EVAL_FLAGS = ["--backend", "hf", "--no-progress", "--max-new-tokens", "6", "--k", "0"]
NOTE_UNCHECKED = "was written before checkpoints carried checksums"


@pytest.fixture(autouse=True)
def _keep_vllm_logging(monkeypatch):
    """As in tests/test_eval_command.py: the command's vLLM logging setting would outlive it in this process."""
    monkeypatch.setattr("tinyzero.cli._vllm_quiet", lambda: None)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_refused(code: int, err: str, *fragments: str, notes: tuple[str, ...] = ()) -> str:
    """Exit 2, one error line holding every fragment, and no other stderr line but the notes named."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tinyzero: error: ")]
    assert len(errors) == 1, err
    others = [line for line in lines if line not in errors]
    assert len(others) == len(notes) and all(n in o for n, o in zip(notes, others, strict=True)), err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with a file's bytes (None for a folder): what "nothing written" compares."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------- merge --out
def _a_file(tmp: Path) -> Path:
    (tmp / "afile").write_text("precious\n")
    return tmp / "afile"


def _not_empty(tmp: Path) -> Path:
    (tmp / "full").mkdir()
    (tmp / "full" / "precious.txt").write_text("keep me\n")
    return tmp / "full"


def _read_only(tmp: Path) -> Path:
    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o555)
    return tmp / "ro" / "m"


OUT_CASES = {  # name: (where --out points, given the test's folder; fragment of the sentence)
    "an-existing-file": (_a_file, "is a file: give a new or empty folder"),
    "a-folder-not-empty": (_not_empty, "is not empty: give a new or empty folder"),
    "under-a-missing-folder": (lambda tmp: tmp / "nope" / "m", "does not exist: create it first"),
    "under-proc": (lambda tmp: Path("/proc/1/nope/m"), "(/proc/1/nope) does not exist: create it first"),
    "under-a-file": (lambda tmp: _a_file(tmp) / "m", "afile is a file, not a folder: give a new folder"),
    "two-under-a-file": (lambda tmp: _a_file(tmp) / "x" / "m", "afile is a file, not a folder"),
    "under-etc-hostname": (lambda tmp: Path("/etc/hostname/m"), "/etc/hostname is a file, not a folder"),
    # sysfs refuses a new folder even to root (EPERM; EROFS where /sys is mounted read-only)
    "in-sys": (lambda tmp: Path("/sys/m"), "cannot write in /sys ("),
    "in-a-read-only-folder": (_read_only, "cannot write in"),
    "a-name-too-long": (lambda tmp: tmp / ("a" * 300), "cannot be checked (File name too long)"),
}


@pytest.mark.parametrize("case", OUT_CASES)
def test_merge_to_a_place_it_cannot_write_is_one_sentence_before_any_model_loads(case, lora_run, tmp_path,  # noqa: F811
                                                                                  capsys, monkeypatch):
    where, fragment = OUT_CASES[case]
    if case == "in-sys" and not Path("/sys").is_dir():
        pytest.skip("no /sys on this machine")
    if case == "in-a-read-only-folder" and os.geteuid() == 0:
        pytest.skip("root writes into a folder of mode 0555 (the in-sys case covers a folder root cannot write)")
    out = where(tmp_path)
    before = listing(tmp_path)

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("tinyzero.engine.lora.write_merged", loaded)
    code, _, err = run_cli(capsys, "merge", str(lora_run), "--out", str(out))
    assert_refused(code, err, f"--out {out}", fragment)
    assert listing(tmp_path) == before  # nothing written: no folder, no staging folder, the file untouched
    assert not list(out.parent.glob(".tinyzero-merge-*")) if out.parent.is_dir() else True


def test_merge_writes_into_an_empty_folder_and_leaves_no_staging_folder(lora_run, tmp_path, capsys):  # noqa: F811
    """The staging and the final rename work: an empty --out folder is filled, and a missing one is made."""
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new"):
        code, stdout, err = run_cli(capsys, "merge", str(lora_run), "--out", str(out), "--dtype", "float32")
        assert code == 0, err
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file(), stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]  # no .tinyzero-merge-* left behind


# ----------------------------------------------------------------------- a damaged LoRA checkpoint: merge, eval
def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "step_000002"


def _adapter(run: Path) -> Path:
    return _ckpt(run) / "adapter"


def _write(name: str, data: bytes | None, *, checksums: str = "recompute"):
    """Damage: ``adapter/name`` becomes ``data`` (None: a folder in its place; b"-": removed); then the checksums are
    recomputed (the parse itself must stand guard), removed (a checkpoint from before checksums) or kept."""
    def damage(run: Path) -> None:
        path = _adapter(run) / name
        path.unlink()
        if data is None:
            path.mkdir()
        elif data != b"-":
            path.write_bytes(data)
        _after(run, checksums)
    return damage


def _after(run: Path, checksums: str) -> None:
    if checksums == "recompute":
        write_checksums(_ckpt(run))
    elif checksums == "remove":
        (_ckpt(run) / "checksums.json").unlink()


def _truncated(run: Path) -> None:
    path = _adapter(run) / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _after(run, "recompute")


def _tensors(change):
    def damage(run: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = _adapter(run) / "adapter_model.safetensors"
        save_file(change(load_file(str(path))), str(path))
        _after(run, "recompute")
    return damage


def _nan(tensors: dict) -> dict:
    name = sorted(n for n in tensors if ".lora_B." in n)[0]
    tensors[name] = tensors[name] * float("nan")
    return tensors


def _config(**changes):
    def damage(run: Path) -> None:
        path = _adapter(run) / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
        _after(run, "recompute")
    return damage


WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
ADAPTER_CASES = {  # name: (damage, fragments of the sentence, notes expected before it)
    "garbage-weights": (_write(WEIGHTS, b"garbage!" * 64),
                        [f"adapter/{WEIGHTS} is damaged (SafetensorError", "header too large"], ()),
    "garbage-weights-unchecked": (_write(WEIGHTS, b"garbage!" * 64, checksums="remove"),
                                  [f"adapter/{WEIGHTS} is damaged (SafetensorError"], (NOTE_UNCHECKED,)),
    "garbage-weights-checksum": (_write(WEIGHTS, b"garbage!" * 64, checksums="keep"),
                                 [f"adapter/{WEIGHTS} is damaged (its SHA-256 differs"], ()),
    "empty-weights": (_write(WEIGHTS, b""), [f"{WEIGHTS} is damaged (SafetensorError", "header too small"], ()),
    "truncated-weights": (_truncated, [f"{WEIGHTS} is damaged (SafetensorError"], ()),
    "weights-a-folder": (_write(WEIGHTS, None), [f"{WEIGHTS} is damaged (it is not a file)"], ()),
    "weights-missing": (_write(WEIGHTS, b"-"), [f"{WEIGHTS} is damaged (it is missing)"], ()),
    "weights-no-tensors": (_tensors(lambda t: {}), [f"{WEIGHTS} is damaged (it holds no adapter tensors)"], ()),
    "weights-nan": (_tensors(_nan), [f"{WEIGHTS} is damaged (", "holds NaN or infinite values"], ()),
    "weights-of-another-rank": (_config(r=8), [f"{WEIGHTS} is damaged (", "not rank 8 as adapter_config.json"], ()),
    "garbage-config": (_write(CONFIG, b"{garbage"), [f"adapter/{CONFIG} is damaged (JSONDecodeError)"], ()),
    "garbage-config-checksum": (_write(CONFIG, b"{garbage", checksums="keep"),
                                [f"adapter/{CONFIG} is damaged (its SHA-256 differs"], ()),
    "empty-config": (_write(CONFIG, b""), [f"{CONFIG} is damaged (JSONDecodeError)"], ()),
    "config-not-utf8": (_write(CONFIG, b'{"r": "\xff"}'), [f"{CONFIG} is damaged (UnicodeDecodeError)"], ()),
    "config-a-list": (_write(CONFIG, b"[]"), [f"{CONFIG} is damaged (it is not a LoRA adapter config)"], ()),
    "config-a-folder": (_write(CONFIG, None), [f"{CONFIG} is damaged (it is a folder)"], ()),
    "config-rank-text": (_config(r="x"), [f"{CONFIG} is damaged (its rank r is 'x'"], ()),
    "garbage-base": (_write("base.json", b"\x00garbage"), ["adapter/base.json cannot be read (JSONDecodeError)",
                                                           "use an earlier checkpoint"], ()),
    "garbage-tokenizer": (_write("tokenizer_config.json", b"{garbage"),
                          ["the tokenizer saved with the adapters in", "did not load (JSONDecodeError"], ()),
}
PARSED_BEFORE_LOADING = {case for case in ADAPTER_CASES if case != "garbage-tokenizer"}


@pytest.mark.parametrize("command", ["merge", "eval"])
@pytest.mark.parametrize("case", ADAPTER_CASES)
def test_a_damaged_lora_checkpoint_is_one_sentence(case, command, lora_run, tmp_path, capsys,  # noqa: F811
                                                   monkeypatch):
    damage, fragments, notes = ADAPTER_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    damage(run)
    if case in PARSED_BEFORE_LOADING:
        def loaded(*args, **kwargs):
            raise AssertionError("a model was loaded before the adapter files were checked")

        monkeypatch.setattr("tinyzero.engine.lora.write_merged", loaded)
    before = listing(run)
    args = ["merge", str(run), "--out", str(tmp_path / "merged")] if command == "merge" else ["eval", str(run),
                                                                                              *EVAL_FLAGS]
    code, _, err = run_cli(capsys, *args)
    line = assert_refused(code, err, *fragments, notes=notes)
    assert str(run / "checkpoints" / "step_000002") in line
    assert "restore" in line or "move" in line  # the fix: a copy of the file, or the checkpoint before it
    assert listing(run) == before  # eval saved no eval/ record, merge touched nothing in the run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no merged folder, no staging folder


def test_a_damaged_adapter_names_the_checkpoint_before_it(lora_run, tmp_path, capsys):  # noqa: F811
    """With an earlier checkpoint in the run, the sentence says which one to give instead."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    shutil.copytree(_ckpt(run), run / "checkpoints" / "step_000001")
    _write(WEIGHTS, b"garbage!" * 64)(run)
    for args in (["merge", str(run), "--out", str(tmp_path / "m")], ["eval", str(run), *EVAL_FLAGS]):
        code, _, err = run_cli(capsys, *args)
        assert_refused(code, err, f"give the checkpoint before it ({run.resolve() / 'checkpoints' / 'step_000001'})"
                                  " instead, or restore the file from a copy")
