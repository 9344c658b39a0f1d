"""Reading the run's JSONL logs (plain or gzip) as a kill can leave them.

A run appends one line to ``metrics.jsonl`` and one gzip member to ``rollouts.jsonl.gz`` / ``evals.jsonl.gz`` per
step; a process killed during such an append leaves an unfinished last line, or an unfinished last gzip member.
Readers here drop exactly that (the text after the last newline; an unfinished member's complete lines are kept,
since deflate only ever outputs bytes it has fully decoded) and say so in one line, so resume, ``tinyzero report``
and ``tinyzero aha`` go on. Damage anywhere else (bytes that are not gzip, a failed CRC, text that is not UTF-8 or
JSON) is not what a kill does: it is one sentence naming the file and the line, never a traceback.

gzip is read with ``zlib`` member by member rather than with the ``gzip`` module, which raises ``EOFError`` on an
unfinished member without telling how far the good data went. Simplification: a gzip file is recognised by its
first two bytes, whatever its name.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tinyzero.errors import TinyZeroError

CHUNK = 1 << 20  # bytes read at a time: memory stays bounded whatever the file's size
GZIP_MAGIC = b"\x1f\x8b"
_NOTED: set[tuple[str, int]] = set()  # (file, size) already reported as cut short: a report reads a file thrice


def say_once(path: Path, text: str) -> None:
    """The default way a reader says what it dropped: one line on stderr, once per file and size per process."""
    key = (str(path), path.stat().st_size)
    if key not in _NOTED:
        _NOTED.add(key)
        print(f"tinyzero: note: {text}", file=sys.stderr, flush=True)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def read_lines(path: Path, note: Callable[[str], None] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) of every complete line of a JSONL or JSONL.gz file, newline removed."""
    path = Path(path)
    unfinished_member = [False]
    with open(path, "rb") as fh:
        source = _gunzip(fh, path, unfinished_member) if is_gzip(path) else iter(lambda: fh.read(CHUNK), b"")
        number = 0
        pending: list[bytes] = []  # the start of a line that has not ended yet
        for chunk in source:
            parts = chunk.split(b"\n")
            for part in parts[:-1]:
                number += 1
                line = b"".join([*pending, part]) if pending else part
                pending = []
                yield number, _decode(line, path, number)
            if parts[-1]:
                pending.append(parts[-1])
    tail = b"".join(pending)
    if tail.strip() or unfinished_member[0]:
        what = ("an unfinished gzip member" if unfinished_member[0] else "an unfinished last line") + (
            f" ({len(tail):,} bytes of line {number + 1})" if tail.strip() else "")
        (note or (lambda text: say_once(path, text)))(
            f"{path} ends in {what}, as a kill while it was being written leaves it: that part was dropped")


def _gunzip(fh, path: Path, unfinished: list[bool]) -> Iterator[bytes]:
    """The decompressed bytes of every gzip member in turn; ``unfinished[0]`` is set when the file ends inside
    one (a member's CRC and length are checked when it ends)."""
    member = zlib.decompressobj(wbits=31)  # 16 + 15: a gzip header and trailer around deflate data
    fed = False
    for chunk in iter(lambda: fh.read(CHUNK), b""):
        data = chunk
        while data:
            try:
                out = member.decompress(data)
            except zlib.error as err:
                raise TinyZeroError(f"{path} is damaged ({err}), which a kill does not do: restore it from a copy, "
                                    "or move it aside") from None
            fed = True
            if out:
                yield out
            if not member.eof:
                break
            data = member.unused_data  # the next member starts here
            member, fed = zlib.decompressobj(wbits=31), False
    unfinished[0] = fed


def _decode(line: bytes, path: Path, number: int) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise TinyZeroError(f"{path} line {number} is not UTF-8 text: give a file of JSON lines") from None


def read_rows(path: Path, note: Callable[[str], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) of every non-blank complete line; a line that is not a JSON object is one sentence."""
    for number, line in read_lines(path, note):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TinyZeroError(f"{path} line {number} is not JSON ({err.msg}): give one object per line") from None
        except (ValueError, RecursionError) as err:  # an integer past 4,300 digits; nesting past the stack
            raise TinyZeroError(f"{path} line {number} is JSON tinyzero does not read ({type(err).__name__}: "
                                f"{str(err)[:80]}): give one flat object per line") from None
        if not isinstance(row, dict):
            raise TinyZeroError(f"{path} line {number} is not a JSON object: give one object per line")
        yield number, row
