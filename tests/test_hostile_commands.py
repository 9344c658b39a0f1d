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
from test_compare import STEPS, make_run
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


# ----------------------------------------------------------------------------------- report RUN RUN ...
def _pair(tmp: Path, control_accuracy: dict | None = None, name: str = "demo") -> tuple[Path, Path]:
    real = make_run(tmp, name, control="none", accuracy={0: 0.14, 2: 0.35, 4: 0.59, 6: 0.61},
                    checks={s: 0 if s == 1 else 10 for s in STEPS}, eval_checks={0: 0, 6: 2})
    shuffled = make_run(tmp, "demo-shuffled", control="shuffled",
                        accuracy=control_accuracy or {0: 0.14, 2: 0.15, 4: 0.16, 6: 0.14},
                        checks={s: 0 for s in STEPS}, eval_checks={0: 0, 6: 1})
    return real, shuffled


def _history_accuracy(value):
    def runs(tmp: Path) -> list[Path]:
        return list(_pair(tmp, {0: 0.14, 2: 0.15, 4: 0.16, 6: value}))
    return runs


def _out(where):
    def runs(tmp: Path) -> tuple[list[Path], Path]:
        return list(_pair(tmp)), where(tmp)
    return runs


REPORT_REFUSED = {  # name: (runs and --out, given the test's folder; fragments of the sentence)
    "control-accuracy-5": (_history_accuracy(5.0), ["demo-shuffled/checkpoints/step_000006/state.json holds a "
                                                    "held-out accuracy of 5.0 at step 6, not a share between 0 and 1",
                                                    "restore the file from a copy"]),
    "control-accuracy-negative": (_history_accuracy(-0.5), ["state.json holds a held-out accuracy of -0.5"]),
    "control-accuracy-nan": (_history_accuracy(float("nan")), ["state.json holds a held-out accuracy of nan"]),
    "control-accuracy-text": (_history_accuracy("high"), ["state.json holds a held-out accuracy of 'high'"]),
    "out-under-a-missing-folder": (_out(lambda tmp: tmp / "nope" / "c.html"),
                                   ["cannot write the report to", "nope does not exist", "give --out a file path"]),
    "out-a-folder": (_out(lambda tmp: tmp / "demo"), ["cannot write the report to", "(Is a directory)"]),
    "out-under-a-file": (_out(lambda tmp: tmp / "demo" / "metrics.jsonl" / "c.html"),
                         ["metrics.jsonl is not a folder", "give --out a file path"]),
    "out-under-proc": (_out(lambda tmp: Path("/proc/1/nope/c.html")), ["cannot write the report to /proc/1/nope"]),
    "out-a-name-too-long": (_out(lambda tmp: tmp / ("c" * 300)), ["(File name too long)"]),
}


@pytest.mark.parametrize("case", REPORT_REFUSED)
def test_report_of_several_runs_refuses_in_one_sentence(case, tmp_path, capsys):
    made = REPORT_REFUSED[case][0](tmp_path)
    runs, out = made if isinstance(made, tuple) else (made, None)
    before = listing(tmp_path)
    code, _, err = run_cli(capsys, "report", *map(str, runs), *(["--out", str(out)] if out else []))
    assert_refused(code, err, *REPORT_REFUSED[case][1])
    assert listing(tmp_path) == before  # no compare.html, nothing at --out


def test_the_one_run_report_refuses_an_accuracy_outside_0_and_1_too(tmp_path, capsys):
    _, control = _pair(tmp_path, {0: 0.14, 6: 5.0})
    code, _, err = run_cli(capsys, "report", str(control))
    assert_refused(code, err, "state.json holds a held-out accuracy of 5.0 at step 6")
    assert not (control / "report.html").exists()


def _metrics_row(*rows: dict):
    def runs(tmp: Path) -> list[Path]:
        real, control = _pair(tmp)
        with open(control / "metrics.jsonl", "a") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
        return [real, control]
    return runs


def _history_row(row: dict):
    def runs(tmp: Path) -> list[Path]:
        real, control = _pair(tmp)
        state = next((control / "checkpoints").glob("step_*")) / "state.json"
        data = json.loads(state.read_text())
        data["history"].append(row)
        state.write_text(json.dumps(data))
        return [real, control]
    return runs


def _renamed(tmp: Path, name: str) -> list[Path]:
    """The pair, the first run's folder renamed (its config's run.name stays a plain one)."""
    real, control = _pair(tmp)
    return [real.rename(tmp / name), control]


TEX_NAME = "$\\foo{x}$"
REPORT_READ_PAST = {  # name: (runs, given the test's folder; the one note line expected, or None)
    "metrics-row-without-step": (_metrics_row({"reward/mean": 0.5}), "metrics.jsonl: 1 row without a step number "
                                                                     "was left out of the report (the first, line 7: "
                                                                     "step None)"),
    "metrics-row-step-text": (_metrics_row({"step": "a", "reward/mean": 0.5}), "(the first, line 7: step 'a')"),
    "metrics-row-step-bool": (_metrics_row({"step": True, "reward/mean": 0.5}), "(the first, line 7: step True)"),
    "metrics-row-step-nan": (_metrics_row({"step": float("nan"), "reward/mean": 0.5}), "line 7: step nan)"),
    "metrics-rows-two": (_metrics_row({"step": "a"}, {"step": None}), "2 rows without a step number were left out"),
    "history-row-without-step": (_history_row({"eval/accuracy": 0.5, "n": 100}), None),
    "history-row-step-text": (_history_row({"step": "a", "eval/accuracy": 0.5, "n": 100}), None),
    "run-folder-named-as-tex": (lambda tmp: _renamed(tmp, TEX_NAME), None),
    "run-folder-named-with-underscore": (lambda tmp: _renamed(tmp, "_under"), None),
}


@pytest.mark.parametrize("case", REPORT_READ_PAST)
def test_report_of_several_runs_reads_past_rows_it_cannot_draw(case, tmp_path, capsys, monkeypatch):
    """A row without a step number is left out (one note line, as the one-run report reads it); a run's name is
    drawn as written in every legend, TeX or a leading underscore."""
    from tinyzero.analysis import report

    legends: list[str] = []
    png = report._png

    def recording(fig, title):
        legends.extend(text.get_text() for text in fig.axes[0].get_legend().get_texts())
        return png(fig, title)

    monkeypatch.setattr(report, "_png", recording)
    make, note = REPORT_READ_PAST[case]
    runs = make(tmp_path)
    code, out, err = run_cli(capsys, "report", *map(str, runs))
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ([] if note is None else lines[:1]) and (note is None or note in lines[0]), err
    html = (runs[0] / "compare.html").read_text()
    assert html.count("<img") == 9
    assert "<td>control: shuffled</td><td>6</td>" in html  # its steps: a row without a step number is not counted
    first = runs[0].name
    assert first in legends and f"aha step, {first}" in legends  # its curves and its aha mark, as named
