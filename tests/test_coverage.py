"""Outage coverage: the last hour's input rate and the hours a bound holds at it.

Under ``MockClock`` the figures are exact: a known rate must come out within
10 % (the meter's one-minute buckets cost at most a minute in sixty).
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from gateway.coverage import (
    MIN_SPAN_S,
    SEED_PER_HOUR,
    Coverage,
    RateMeter,
    bound_for,
    coverage_hours,
)
from gateway.metrics import Metrics


async def feed(meter: RateMeter | Coverage, seconds: float, every: float, records: int) -> None:
    """``records`` committed every ``every`` seconds for ``seconds``."""
    for _ in range(round(seconds / every)):
        if isinstance(meter, Coverage):
            meter.committed("mqtt", records)
        else:
            meter.add(records)
        await trio.sleep(every)


async def test_the_seeds_rate_gives_the_seeds_coverage_within_10_percent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    meter = RateMeter()
    await feed(meter, 2 * 3600, 10.0, 9)  # two hours of the seed: a packet of 9 every 10 s
    rate = meter.per_hour()
    assert rate == pytest.approx(SEED_PER_HOUR, rel=0.10)
    # The design's 1000-message default covers about 18 minutes of it.
    hours = coverage_hours(1000, 0, rate)
    assert hours == pytest.approx(1000 / 3240, rel=0.10)
    assert hours * 60 == pytest.approx(18.5, rel=0.10)
    # ... and 100,000 points about 31 hours.
    assert coverage_hours(100_000, 0, rate) == pytest.approx(30.9, rel=0.10)


async def test_the_rate_follows_the_last_hour_only(autojump_clock: trio.testing.MockClock) -> None:
    meter = RateMeter()
    await feed(meter, 3600, 1.0, 18)  # 2 packets/s for an hour: 64,800 records/h
    assert meter.per_hour() == pytest.approx(64_800, rel=0.10)
    await feed(meter, 3600, 10.0, 9)  # then the seed's pace for an hour
    assert meter.per_hour() == pytest.approx(SEED_PER_HOUR, rel=0.10)
    await trio.sleep(3700)  # nothing for an hour: no rate, no coverage figure
    assert meter.per_hour() == 0
    assert coverage_hours(1000, 0, meter.per_hour()) is None


async def test_a_young_meter_measures_over_the_time_it_has(
    autojump_clock: trio.testing.MockClock,
) -> None:
    meter = RateMeter()
    assert meter.per_hour() is None  # not MIN_SPAN_S yet
    await feed(meter, 120, 1.0, 9)
    assert meter.per_hour() == pytest.approx(9 * 3600, rel=0.10)
    assert MIN_SPAN_S < 120


async def test_the_backlog_takes_its_room_and_the_warning_names_the_bound(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    coverage = Coverage(metrics, min_hours=24.0)
    await feed(coverage, 600, 10.0, 9)
    with caplog.at_level(logging.WARNING, logger="gateway.coverage"):
        hours = coverage.update("mqtt", 1000, 400)
        coverage.update("mqtt", 1000, 400)  # at most once an hour
    assert hours == pytest.approx(600 / SEED_PER_HOUR, rel=0.10)
    assert metrics.mqtt.coverage_hours == hours
    assert metrics.mqtt.rate_per_hour == pytest.approx(SEED_PER_HOUR, rel=0.10)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "raise mqtt.buffer_max_messages to at least" in warnings[0]
    assert "gateway.min_coverage_hours = 24" in warnings[0]


def test_the_bound_for_a_day_of_the_seed() -> None:
    # 9 records every 10 s for 24 h: what install.sh writes at least.
    assert bound_for(24, SEED_PER_HOUR) == 77_760
    assert coverage_hours(77_760, 0, SEED_PER_HOUR) == 24
