"""A hardware-free Node 2: firmware-format telemetry lines with plausible values.

Values follow slow random walks inside realistic bounds, RSSI/SNR vary with a
fading radio link, ``packets_received`` counts, and now and then a frame fails
its CRC (Node 2 then prints no node1 values for it, as the firmware does).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO


class _Walk:
    """A bounded random walk with a pull back towards its centre."""

    def __init__(self, rng: random.Random, centre: float, step: float, lo: float, hi: float):
        self.rng, self.centre, self.step, self.lo, self.hi = rng, centre, step, lo, hi
        self.value = centre + rng.uniform(-step, step) * 5

    def next(self) -> float:
        pull = (self.centre - self.value) * 0.02
        self.value = min(self.hi, max(self.lo, self.value + pull + self.rng.gauss(0, self.step)))
        return self.value


class NodeSimulator:
    """Produce the JSON objects Node 2 would print, one per received frame."""

    def __init__(self, seed: int | None = None, crc_error_rate: float = 0.03) -> None:
        self.rng = random.Random(seed)
        self.crc_error_rate = crc_error_rate
        self.seq = 0
        self.packets_received = 0
        self.crc_errors = 0
        self.start = time.monotonic()
        r = self.rng
        self.n1_temp = _Walk(r, 24.0, 0.05, 5.0, 40.0)
        self.n1_hum = _Walk(r, 50.0, 0.2, 20.0, 90.0)
        self.n1_gas = _Walk(r, 100_000.0, 800.0, 20_000.0, 300_000.0)
        self.n2_temp = _Walk(r, 23.0, 0.03, 5.0, 40.0)
        self.n2_press = _Walk(r, 1013.25, 0.05, 950.0, 1050.0)
        self.rssi = _Walk(r, -60.0, 2.0, -120.0, -30.0)
        self.snr = _Walk(r, 9.0, 0.7, -10.0, 13.0)

    def packet(self, uptime_ms: int | None = None) -> dict[str, Any]:
        """The next line's object."""
        self.seq += 1
        if uptime_ms is None:
            uptime_ms = int((time.monotonic() - self.start) * 1000)
        obj: dict[str, Any] = {"v": 1, "seq": self.seq, "uptime_ms": uptime_ms}
        if self.rng.random() < self.crc_error_rate:
            self.crc_errors += 1
        else:
            self.packets_received += 1
            obj["node1"] = {
                "temperature": round(self.n1_temp.next(), 2),
                "humidity": round(self.n1_hum.next(), 2),
                "gas_resistance": int(self.n1_gas.next()),
            }
        obj["node2"] = {
            "temperature": round(self.n2_temp.next(), 2),
            "pressure": round(self.n2_press.next(), 2),
        }
        obj["signal"] = {"rssi": int(self.rssi.next()), "snr": int(self.snr.next())}
        obj["stats"] = {"packets_received": self.packets_received, "crc_errors": self.crc_errors}
        return obj

    def lines(self) -> Iterator[str]:
        """An endless stream of lines (without newline)."""
        while True:
            yield json.dumps(self.packet(), separators=(",", ":"))


def run(
    interval: float = 1.0,
    count: int | None = None,
    seed: int | None = None,
    out: TextIO | None = None,
) -> int:
    """Print ``count`` lines (forever if None), one every ``interval`` seconds.

    Each line is flushed on its own, as the firmware's UART would deliver it.
    Returns the exit code (0; also on a closed pipe or Ctrl-C). Raises
    ValueError for an interval that is negative, NaN or infinite, or a negative count.
    """
    if not math.isfinite(interval) or interval < 0:
        raise ValueError(f"interval must be a finite number >= 0, not {interval!r}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, not {count!r}")
    out = out or sys.stdout
    sim = NodeSimulator(seed)
    sent = 0
    next_at = time.monotonic()
    try:
        for line in sim.lines():
            if count is not None and sent >= count:
                break
            out.write(line + "\n")
            out.flush()
            sent += 1
            if interval > 0:
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
    except (BrokenPipeError, KeyboardInterrupt):
        # The reader went away or the operator stopped us: not an error.
        # Point stdout at /dev/null so the interpreter's exit flush stays quiet.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    return 0
