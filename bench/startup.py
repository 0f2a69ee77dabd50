"""Start-up: `gateway run` to the first message at a subscriber."""

from __future__ import annotations

import statistics
import time

from bench.harness import Counter, Run
from bench.report import Row, spread
from tests.support import wait_until


def bench_startup() -> float:
    """Seconds from starting `gateway run` to its first message at a subscriber."""
    run = Run("startup")
    try:
        run.broker.start()
        run.tsdb.start()
        counter = Counter(run.broker.port, run.prefix)
        cfg = run.config(run.generator(1.0, 1))
        start = time.monotonic()
        run.start_gateway(cfg)
        wait_until(lambda: counter.count > 0, 30, 0.005)
        elapsed = (counter.first_at or time.monotonic()) - start
        counter.close()
        return elapsed
    finally:
        run.close()


STARTUP_RUNS = 5


def startup_rows(rows: list[Row], runs: int = STARTUP_RUNS) -> None:
    """The start-up row: the median of ``runs`` start-ups."""
    startups = [bench_startup() for _ in range(runs)]
    rows.append(
        (
            "start-up: `gateway run` to first message at a subscriber",
            "≤ 1.5 s",
            spread(startups) + " s",
            statistics.median(startups) <= 1.5,
        )
    )
