"""The line a benchmark prints about the CPU it ran on: figures belong with the machine that measured them (AVX2
and AVX-512 machines differ by 1.5x or more, and bf16 matmuls need avx512_bf16 or AMX)."""

from __future__ import annotations

import platform
import subprocess


def cpu_line() -> str:
    """lscpu's model, CPU count and the vector flags that decide CPU speed (avx2, fma, avx512*, amx*)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        return f"lscpu unavailable ({type(err).__name__}); {platform.processor()}"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs; flags: {' '.join(wide)}"
