"""The results table: rows, how repeated figures are written, bench/results.md."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.md"
Row = tuple[str, str, str, bool | None]  # benchmark, target, measured, pass (None: reported)


def spread(values: list[float], digits: int = 2) -> str:
    """Median (min–max)."""
    return (
        f"{statistics.median(values):.{digits}f}"
        f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def percentile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (the nearest rank at or above it)."""
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def report(rows: list[Row], started: float, out: Path = RESULTS) -> None:
    """Write the table to ``out`` (bench/results.md) and stdout."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    header = (
        f"# Benchmark results\n\n{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; `make bench` took "
        f"{(time.time() - started) / 60:.1f} min. Median (min–max) where repeated.\n\n"
    )
    table = "| benchmark | target | measured | pass |\n|---|---|---|---|\n" + "".join(
        f"| {name} | {target} | {value} | {'–' if ok is None else 'pass' if ok else 'FAIL'} |\n"
        for name, target, value, ok in rows
    )
    out.write_text(header + table)
    print(header + table)
