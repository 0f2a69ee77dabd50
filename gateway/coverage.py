"""Outage coverage: how many hours of outage a buffer's bound still holds.

A :class:`RateMeter` per sink counts the records committed to its buffer over
a sliding hour (one-minute buckets, so its memory is bounded); the rate is
that count over the hour, or over the time measured so far while the meter is
younger than an hour. :func:`coverage_hours` turns a rate into hours:

    coverage_h = (bound − backlog) / rate_per_hour

the hours until the buffer is full, and starts dropping its oldest records,
if delivery stopped now and the input went on at the rate of the last hour.
With an empty buffer that is ``bound / rate``, the figure ``gateway check``
gives for a stated rate. No rate (nothing committed, or less than
``MIN_SPAN_S`` measured) is no figure (None), never infinity.

Time is injected (``now``, Trio's clock by default), so the tests run under
``MockClock`` with exact figures.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

import trio

from gateway.metrics import Metrics, RateLimitedLog

log = logging.getLogger(__name__)

# The config key of each sink's bound: what a warning tells the operator to raise.
BOUND_KEYS = {"mqtt": "mqtt.buffer_max_messages", "influx": "influxdb.buffer_max_points"}
WARN_INTERVAL_S = 3600.0  # "the log warns once an hour"
# What `gateway check` can know of the input rate: not the firmware's interval
# (it is in the firmware, not the config), so the seed's: a packet every 10 s,
# 9 readings a packet, each one MQTT message and one point.
SEED_INTERVAL_S = 10.0
SEED_RECORDS_PER_PACKET = 9
SEED_PER_HOUR = SEED_RECORDS_PER_PACKET * 3600.0 / SEED_INTERVAL_S  # 3,240 records/h
WINDOW_S = 3600.0  # the "input rate of the last hour"
BUCKET_S = 60.0
# Below this much measured time a rate says more about start-up than about the input.
MIN_SPAN_S = 10.0


class RateMeter:
    """Records committed per hour, over the last hour.

    Args:
        now: the clock, in seconds (``trio.current_time`` by default).
    """

    def __init__(self, now: Callable[[], float] = trio.current_time) -> None:
        self._now = now
        # Set at the first use, so a meter can be made outside a Trio run.
        self._started: float | None = None
        self._buckets: deque[tuple[int, int]] = deque()  # (bucket index, records)

    def add(self, records: int) -> None:
        """``records`` were committed now."""
        now = self._now()
        if self._started is None:
            self._started = now
        if records <= 0:
            return
        index = int(now // BUCKET_S)
        if self._buckets and self._buckets[-1][0] == index:
            self._buckets[-1] = (index, self._buckets[-1][1] + records)
        else:
            self._buckets.append((index, records))
        self._expire(index)

    def _expire(self, index: int) -> None:
        oldest = index - int(WINDOW_S // BUCKET_S)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()

    def per_hour(self) -> float | None:
        """Records per hour over the last hour (or since start); None before ``MIN_SPAN_S``."""
        now = self._now()
        if self._started is None:
            self._started = now
        span = min(WINDOW_S, now - self._started)
        if span < MIN_SPAN_S:
            return None
        self._expire(int(now // BUCKET_S))
        # Buckets are whole minutes: the oldest one may reach back before the
        # hour; its share is what a minute's granularity costs (≤ 1/60).
        count = sum(n for _, n in self._buckets)
        return count * 3600.0 / span


def coverage_hours(bound: int, backlog: int, per_hour: float | None) -> float | None:
    """Hours of outage the room left in a buffer holds at ``per_hour`` records/h.

    None when there is no rate to go by (nothing arrives: no outage fills it).
    """
    if per_hour is None or per_hour <= 0:
        return None
    return max(0, bound - backlog) / per_hour


def bound_for(hours: float, per_hour: float) -> int:
    """The bound that holds ``hours`` of outage at ``per_hour`` records/h from empty."""
    return math.ceil(hours * per_hour)


class Coverage:
    """Each sink's input rate and outage coverage, kept in ``metrics``; warns when short.

    The pipeline calls :meth:`committed` with every commit; the daemon calls
    :meth:`update` every second with each buffer's bound and backlog, which
    sets ``metrics.sink(name).coverage_hours`` and ``rate_per_hour`` (the one
    place every reader takes them from) and logs, at most once an hour per
    sink, when coverage is below ``min_hours``.

    Args:
        metrics: where the figures go.
        min_hours: ``gateway.min_coverage_hours``; 0: never warn.
        now: the clock of the rate meters.
    """

    def __init__(
        self, metrics: Metrics, min_hours: float, now: Callable[[], float] = trio.current_time
    ) -> None:
        self.metrics = metrics
        self.min_hours = min_hours
        self.meters = {name: RateMeter(now) for name in BOUND_KEYS}
        self._warn = RateLimitedLog(log, interval=WARN_INTERVAL_S)

    def committed(self, name: str, records: int) -> None:
        """``records`` were committed to sink ``name``'s buffer."""
        self.meters[name].add(records)

    def update(self, name: str, bound: int, backlog: int) -> float | None:
        """Recompute sink ``name``'s figures; return its coverage in hours (None: no rate)."""
        rate = self.meters[name].per_hour()
        hours = coverage_hours(bound, backlog, rate)
        figures = self.metrics.sink(name)
        figures.rate_per_hour = rate
        figures.coverage_hours = hours
        if rate is not None and hours is not None and self.min_hours > 0 and hours < self.min_hours:
            self._warn.log(
                logging.WARNING,
                name,
                "%s buffer: %d of %d records free cover %.2f h of outage at %.0f records/h, "
                "under gateway.min_coverage_hours = %g: raise %s to at least %d",
                name,
                max(0, bound - backlog),
                bound,
                hours,
                rate,
                self.min_hours,
                BOUND_KEYS[name],
                bound_for(self.min_hours, rate) + backlog,
            )
        return hours
