"""`python -m bench window`: the MQTT drain rate for several ``mqtt.max_inflight``."""

from __future__ import annotations

import statistics

from bench.drain import DRAIN_PATHS, DRAIN_RUNS, SLOW_RTT, DrainPath, bench_drain
from bench.report import spread
from tests.services import Broker

WINDOW_SWEEP = (100, 200, 400, 800)
# Under 3.1.1 (or a broker without a Receive Maximum) the window is ours to choose.
SWEEP_PATHS = (
    DRAIN_PATHS[1],
    DRAIN_PATHS[3],
    DrainPath("tuned broker, 50 ms RTT", Broker, SLOW_RTT, 0),  # (no Receive Maximum)
)


def window_sweep(runs: int = DRAIN_RUNS) -> None:
    """`python -m bench window`: the MQTT drain rate for several mqtt.max_inflight.

    The measurement behind the default window (README "Performance"); not
    part of `make bench`. Prints a table: median (min–max) messages per
    second, and over a round trip the share of max_inflight / RTT reached.
    """
    print("| path | max_inflight | MQTT drain, msg/s | of max_inflight / RTT |")
    print("|---|---|---|---|")
    for path in SWEEP_PATHS:
        for window in WINDOW_SWEEP:
            drains = [bench_drain(path, window, reference=False) for _ in range(runs)]
            rates = [d["gateway_rate"] for d in drains]
            share = f"{statistics.median(rates) / (window / path.rtt):.2f}" if path.rtt else "–"
            print(f"| {path.name} | {window} | {spread(rates, 0)} | {share} |", flush=True)
