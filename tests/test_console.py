"""A quiet console: the libraries' noise named in tinyzero/console.py is silenced, and nothing else is; vLLM's
warnings that a pushed weight did not load reach the console.

The checks of what is printed run in a fresh interpreter, because the noise is printed once per process (at vLLM's
import, at an engine's start) and partly by native code straight to file descriptor 2; the filters themselves are
checked here, on records as vLLM makes them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinyzero.console import VLLM_NOISE, _DropMessages, quiet_vllm

ROOT = Path(__file__).resolve().parent.parent
NOISE = ("Triton is installed, but doesn't include CPU backend", "reduce_op", "NUMA binding",
         "Loading safetensors checkpoint shards", "The global random seed is set to", "Enforce eager set",
         "Inductor compilation was disabled", "Triton is not installed", "Reset SSM cache type",
         "Model Runner V2 requires Triton", "is not found in LD_PRELOAD", "`torch.set_num_threads` after the thread")
# vLLM's own words when a pushed weight did not load (vllm/model_executor/model_loader/reload/): never filtered.
LAYERWISE, INPLACE = ("vllm.model_executor.model_loader.reload.layerwise",
                      "vllm.model_executor.model_loader.reload.inplace")
FAILURES = ((LAYERWISE, "%s: Failed to load weights", ("QKVParallelLinear",)),
            (INPLACE, "Following weights were not loaded from checkpoint: %s", ({"model.norm.weight"},)))


def _console(code: str) -> str:
    """What a fresh interpreter running ``code`` prints, stdout and stderr together (vLLM logs to stdout)."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_native_lines_are_dropped_by_their_text_and_others_pass():
    err = _console(
        "import os\n"
        "from tinyzero.console import drop_native_lines\n"
        "with drop_native_lines():\n"
        "    os.write(2, b'[W utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy for memory allocation x\\n')\n"
        "    os.write(2, b'a real warning\\n')\n"
        "    os.write(2, b'no newline at the end')\n"
        "os.write(2, b'\\nafter: NUMA binding: Using MEMBIND policy for memory allocation\\n')\n")
    assert "a real warning\n" in err and "no newline at the end" in err
    assert err.count("NUMA binding") == 1 and "after: NUMA binding" in err  # only inside the block


def _record(logger: str, msg: str, args: tuple = ()) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, "vllm.py", 1, msg, args, None)


def _passes(record: logging.LogRecord) -> bool:
    """Whether the filters on the record's own logger let it through (where vLLM's records meet them)."""
    return bool(logging.getLogger(record.name).filter(record))


@pytest.mark.parametrize(("variable", "ours", "theirs"), [
    # ERROR would hide vLLM's warnings that a push did not load; INFO prints several lines per engine call.
    ("VLLM_LOGGING_LEVEL", "WARNING", "DEBUG"),
    # vLLM's default stream is stdout, where its warnings would corrupt ``tinyzero eval --json``'s output (seen: an
    # unknown-variable warning before the JSON, in a command started from a process that had run vLLM).
    ("VLLM_LOGGING_STREAM", "ext://sys.stderr", "ext://sys.stdout"),
])
def test_vllm_logging_is_set_unless_the_user_chose(monkeypatch, variable, ours, theirs):
    """quiet_vllm sets vLLM's log level to WARNING and its stream to stderr, and keeps a value the user set."""
    monkeypatch.setenv(variable, "")  # recorded, so that what quiet_vllm sets is undone afterwards
    monkeypatch.delenv(variable)
    quiet_vllm()
    assert os.environ[variable] == ours
    monkeypatch.setenv(variable, theirs)
    quiet_vllm()
    assert os.environ[variable] == theirs


def test_only_the_variables_vllm_sets_itself_are_not_reported_as_unknown(monkeypatch):
    from tinyzero.console import UNKNOWN_ENV

    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")
    quiet_vllm()
    logger, msg = UNKNOWN_ENV
    assert not _passes(_record(logger, msg, ("VLLM_DIST_IDENT",)))
    assert not _passes(_record(logger, msg, ("VLLM_DISABLE_SHARED_EXPERTS_STREAM",)))
    assert _passes(_record(logger, msg, ("VLLM_CPU_KVCACHE_SPCE",)))  # a user's typo still warns


@pytest.mark.parametrize(("logger", "msg"), [(name, msg) for name, msgs in VLLM_NOISE.items() for msg in msgs],
                         ids=lambda value: value[:40])
def test_each_noise_filter_drops_exactly_its_message(monkeypatch, logger, msg):
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "WARNING")  # quiet_vllm leaves it; monkeypatch puts it back
    quiet_vllm()
    quiet_vllm()
    assert sum(isinstance(f, _DropMessages) for f in logging.getLogger(logger).filters) == 1  # idempotent
    assert not _passes(_record(logger, msg))
    assert _passes(_record(logger, msg + " (reworded)"))  # matched whole: a changed message shows
    assert _passes(_record(logger, msg[:-1]))
    assert _passes(_record(LAYERWISE, msg))  # only on its own logger
    for name, failure, args in FAILURES:
        assert _passes(_record(logger, failure, args)) and _passes(_record(name, failure, args))


@pytest.mark.slow
def test_a_failed_weight_load_reaches_the_console_through_vllms_own_logging():
    """vLLM's logging set-up as an engine applies it (vllm.logger.configure_logging), after quiet_vllm: the
    warnings that a pushed weight did not load print, vLLM's INFO lines and the noise do not, and the
    RotaryEmbedding reload warning stays dropped (tinyzero/engine/rollout.py)."""
    out = _console(
        "import os\n"
        "os.environ.pop('VLLM_LOGGING_LEVEL', None)\n"
        "from tinyzero.console import quiet_vllm\n"
        "quiet_vllm()\n"
        "from vllm.config.logging import LoggingConfig\n"
        "from vllm.logger import configure_logging, init_logger\n"
        "from tinyzero.engine.rollout import quiet_rope_reload_warning\n"
        "configure_logging(LoggingConfig())\n"
        "quiet_rope_reload_warning()\n"
        f"layerwise, inplace = init_logger({LAYERWISE!r}), init_logger({INPLACE!r})\n"
        "layerwise.warning('%s: Failed to load weights', 'RotaryEmbedding')\n"
        "layerwise.warning('%s: Failed to load weights', 'QKVParallelLinear')\n"
        "inplace.warning('Following weights were not loaded from checkpoint: %s', {'model.norm.weight'})\n"
        "inplace.info('Reloading weights inplace...')\n"
        "init_logger('vllm.config.vllm').warning_once("
        "'Model Runner V2 requires Triton; using the V1 model runner instead.')\n")
    assert "WARNING" in out and "QKVParallelLinear: Failed to load weights" in out
    assert "Following weights were not loaded from checkpoint: {'model.norm.weight'}" in out
    assert "RotaryEmbedding" not in out and "Reloading weights inplace" not in out and "Model Runner V2" not in out


@pytest.mark.slow
def test_a_vllm_engine_starts_without_the_noise_and_real_warnings_still_show(tiny_model_dir, tmp_path):
    env = ("import os\n"
           "os.environ.pop('VLLM_LOGGING_LEVEL', None)\n"  # vLLM's default (INFO), whatever this process has
           "os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING='0', VLLM_CPU_KVCACHE_SPACE='1', "
           f"VLLM_CACHE_ROOT={str(tmp_path / 'vllm')!r})\n")
    loud = _console(env + "from vllm import LLM\n"
                   f"LLM(model={str(tiny_model_dir)!r}, max_model_len=256, enforce_eager=True)\n")
    assert [noise for noise in NOISE if noise not in loud] == []  # what this vllm-cpu prints unfiltered
    quiet = _console(
        env + "import logging, warnings\n"
        "from tinyzero.engine.rollout import RolloutWorker\n"
        f"w = RolloutWorker({str(tiny_model_dir)!r}, backend='vllm', max_model_len=256, kv_cache_gib=1, "
        f"cache_dir={str(tmp_path)!r})\n"
        "assert w.generate([[1, 2, 3]], n=1, max_new_tokens=4, temperature=0.0, top_p=1.0)\n"
        "from transformers import AutoModelForCausalLM\n"
        f"weights = list(AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}).state_dict().items())\n"
        "w.update_weights(weights)\n"
        "print('PUSHED', flush=True)\n"
        "w.update_weights([(k, v) for k, v in weights if not k.startswith('model.layers.0.self_attn.')])\n"
        "warnings.warn('a real FutureWarning', FutureWarning)\n"
        "logging.getLogger('vllm.triton_utils.importing').error('another vLLM message')\n"
        "w.close()\n")
    assert [noise for noise in NOISE if noise in quiet] == []
    assert "a real FutureWarning" in quiet and "another vLLM message" in quiet
    # A whole push is silent (RotaryEmbedding's reload warning dropped); one missing layer 0's attention says so.
    pushed, failed = quiet.split("PUSHED", 1)
    assert "Failed to load weights" not in pushed
    assert "QKVParallelLinear: Failed to load weights" in failed and "RotaryEmbedding" not in failed
    assert "Following weights were not loaded from checkpoint" in failed
