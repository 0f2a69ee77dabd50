"""Sustained ingest: the highest packet rate at which the backlog stays bounded."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Counter, Run, metric
from bench.report import Row
from tests.services import wait_listening

SUSTAINED_SECONDS = 60.0  # the "backlog stays bounded for 60 s"
SUSTAINED_START = 1000.0  # packets/s; then up (or down) until the answer changes
SUSTAINED_UP = (1500.0, 2000.0)
SUSTAINED_DOWN = (500.0, 250.0)
WARM_UP_S = 2.0  # after the status port answers, before the first sample
SAMPLE_S = 1.0  # between backlog samples


def bench_sustained(rate: float, seconds: float = SUSTAINED_SECONDS) -> dict[str, Any]:
    """``rate`` packets/s for ``seconds``: did the input keep its rate, the backlog its bound?"""
    run = Run(f"rate{int(rate)}")
    try:
        run.broker.start()
        run.tsdb.start()
        counter = Counter(run.broker.port, run.prefix)
        run.start_gateway(
            run.config(
                run.generator(rate),
                mqtt={"buffer_max_messages": 1_000_000},
                influxdb={"buffer_max_points": 1_000_000},
            )
        )
        wait_listening(run.status_port)
        time.sleep(WARM_UP_S)
        samples = []
        packets_before = metric(run.status_port, "gateway_packets_total")
        start = time.monotonic()
        end = start + seconds
        while time.monotonic() < end:
            samples.append(
                metric(run.status_port, "gateway_mqtt_buffered_messages")
                + metric(run.status_port, "gateway_influx_buffered_points")
            )
            time.sleep(SAMPLE_S)
        achieved = (metric(run.status_port, "gateway_packets_total") - packets_before) / (
            time.monotonic() - start
        )
        counter.close()
        # Keeping up: the input really came at the rate (the generator shares
        # the machine), and the backlog at the end is under half a second of
        # input (10 metrics a packet, two sinks).
        limit = rate * 10 * 2 * 0.5
        return {
            "rate": rate,
            "achieved": achieved,
            "backlog_end": samples[-1],
            "backlog_max": max(samples),
            "kept_up": samples[-1] <= limit and achieved >= 0.95 * rate,
        }
    finally:
        run.close()


def sustained_rows(rows: list[Row], seconds: float = SUSTAINED_SECONDS) -> None:
    """One row per rate tried, searching from the middle, then the best rate kept up."""
    best = 0.0

    def sustained_row(rate: float) -> bool:
        r = bench_sustained(rate, seconds)
        rows.append(
            (
                f"sustained {rate:.0f} packets/s for {seconds:.0f} s: input rate,"
                " backlog at end / max",
                "backlog bounded",
                f"{r['achieved']:.0f}/s, {r['backlog_end']:.0f} / {r['backlog_max']:.0f}",
                r["kept_up"],
            )
        )
        return bool(r["kept_up"])

    # Search from the middle: up while it keeps up, down until it does.
    if sustained_row(SUSTAINED_START):
        best = SUSTAINED_START
        for rate in SUSTAINED_UP:
            if not sustained_row(rate):
                break
            best = rate
    else:
        for rate in SUSTAINED_DOWN:
            if sustained_row(rate):
                best = rate
                break
    rows.append(
        (
            "sustained ingest, both sinks live, durability full",
            "≥ 500 packets/s",
            f"{best:.0f} packets/s",
            best >= 500,
        )
    )
