"""The range of every number in the config, said on its field.

A section's field carries its range as metadata, ``port: Annotated[int,
Range(1, MAX_PORT)]``; the loader reads it with
``typing.get_type_hints(include_extras=True)`` and refuses a value outside it
with :class:`ConfigError` naming the dotted key, at load, instead of a
struct.error or OverflowError in a sink later on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Seconds. Below MIN_DELAY a sleep is a busy loop; beyond MAX_DELAY a backoff or
# flush is no longer a delay but an outage; MAX_WINDOW bounds the watchdogs.
MIN_DELAY = 0.01
MAX_DELAY = 3600.0
MAX_WINDOW = 86_400.0
# A network timeout shorter than this fails on any real link.
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 600.0
# The gateway's own stats points; the end-to-end test asks for 0.3 s.
MIN_STATS_INTERVAL = 0.1
# The gateway/state message's period; more often than every second is what the
# on-change messages are for.
MIN_STATE_INTERVAL = 1.0
# Outage coverage asked for: a year is beyond any bound a gateway's disk holds.
MIN_COVERAGE_HOURS = 0.01
MAX_COVERAGE_HOURS = 8760.0
# Write-behind: below 0.1 s it saves nothing; beyond 60 s a kill -9 could cost
# a minute of readings, more than the buffer is there to protect against.
MIN_WRITE_DELAY = 0.1
MAX_WRITE_DELAY = 60.0
# MQTT's keepalive is a 16-bit field; below 5 s the pings are most of the traffic,
# and 0 (off) would hide a broker that accepts TCP and then hangs.
MIN_KEEPALIVE = 5
MAX_KEEPALIVE = 65535
MAX_PORT = 65535
# Replay pace, lines per second (0 = as fast as possible).
MIN_RATE = 0.001
MAX_RATE = 1_000_000.0
# termios' slowest and fastest speeds on Linux.
MIN_BAUD = 50
MAX_BAUD = 4_000_000
MIN_LINE_BYTES = 64
MAX_LINE_BYTES = 16 * 1024 * 1024
# A group's freshness; below a second every gap between two packets would be "stale".
MIN_STALE_AFTER = 1.0
# Records a disk buffer may hold; beyond 10^8 the SQLite file outgrows a gateway's disk.
MAX_BUFFER_RECORDS = 100_000_000
# MQTT packet identifiers are 16-bit (0 is not one): no more can be in flight at once.
MAX_INFLIGHT = 65535
# MQTT 5's Message Expiry Interval is a four-byte integer (seconds).
MAX_MESSAGE_EXPIRY = 2**32 - 1
# Points per write; InfluxDB advises about 5000, ten times that still fits a request.
MAX_BATCH_SIZE = 50_000


@dataclass(frozen=True)
class Range:
    """The values one number may take: ``lo..hi`` inclusive, and 0 too when ``zero_is_off``."""

    lo: float
    hi: float
    zero_is_off: bool = False

    def admits(self, value: float) -> bool:
        """Whether ``value`` is allowed (never for NaN)."""
        return (self.zero_is_off and value == 0) or self.lo <= value <= self.hi

    def describe(self) -> str:
        """The range as an error message says it: ``0 (off) or 0.1..86400``."""
        span = f"{_num(self.lo)}..{_num(self.hi)}"
        return f"0 (off) or {span}" if self.zero_is_off else span


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def range_of(hint: Any) -> Range | None:
    """The :class:`Range` among an ``Annotated`` hint's metadata; None for any other hint."""
    for extra in getattr(hint, "__metadata__", ()):
        if isinstance(extra, Range):
            return extra
    return None
