"""Helpers shared by the benchmark scripts: timing, machine description, markdown sections."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def timed(fn: Callable[..., object], *args, **kwargs) -> tuple[float, object]:
    """Seconds of one call (waiting for the GPU's queue to drain, where there is one) and its result."""
    import torch

    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def stage_seconds(args: list[str]) -> float:
    """Seconds of `python -m ARGS` run as `make` runs a stage: a fresh interpreter in the project
    root (its standard output discarded, its errors shown)."""
    import subprocess
    import sys

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def best_of(fn: Callable[[], object], repeat: int = 3, budget: float = 20.0) -> float:
    """Best wall time of `fn` over up to `repeat` runs, stopping once `budget` seconds are spent."""
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        times.append(timed(fn)[0])
        if time.perf_counter() - start > budget:
            break
    return min(times)


def within(value: float, truth: float, floor: float = 0.1, share: float = 0.15) -> bool:
    """Whether an estimate is within max(floor, share * truth) of the truth (the estimators
    issue's tolerance: max(0.1 bit, 15%) for pairs, max(0.15 bit, 20%) for images)."""
    return abs(value - truth) <= max(floor, share * truth)


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")


def resident_mb(key: str = "VmRSS") -> float:
    """This process's resident memory in MB from /proc/self/status (Linux): `VmRSS` now,
    `VmHWM` its peak since the last `reset_peak_memory`."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(key + r":\s+(\d+)", text).group(1)) / 1024


def reset_peak_memory() -> None:
    """Reset the kernel's resident high-water mark (`VmHWM`) to the present. ru_maxrss would not
    do for a measurement in a fresh process: it survives fork and exec, so a child starts at its
    parent's peak."""
    Path("/proc/self/clear_refs").write_text("5")


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace the section between `<!-- bench:name -->` markers (appending it if absent)."""
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
