"""The latest value and a short history of every metric, in memory (for the status page)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.telemetry import UNIT_SYMBOLS, UNITS, Packet

HISTORY_WINDOW = 600.0  # seconds of history kept per metric
HISTORY_POINTS = 600  # at most this many points per metric (≈ one per second)
MAX_SERIES = 1000  # a runaway firmware must not grow memory without bound


@dataclass(slots=True)
class Series:
    """One metric of one group: its newest value and a bounded history."""

    value: float
    received_ns: int
    history: deque[tuple[int, float]]  # (received_ns, value), oldest first


class LatestValues:
    """The latest value and a short history of every metric, in memory.

    Register :meth:`on_packet` as an observer of the pipeline. History is kept
    for ``window`` seconds with at most ``max_points`` points per metric: a point
    closer than ``window / max_points`` to the previous one replaces it, so the
    history always spans the whole window whatever the packet rate.

    Args:
        window: seconds of history to keep.
        max_points: the bound on points per metric.
        max_series: the bound on (group, metric) pairs; later ones are ignored.
    """

    def __init__(
        self,
        window: float = HISTORY_WINDOW,
        max_points: int = HISTORY_POINTS,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.window_ns = int(window * 1e9)
        self.max_points = max_points
        self.max_series = max_series
        self.spacing_ns = self.window_ns // max_points
        self.series: dict[tuple[str, str], Series] = {}
        self.packets = 0
        self.last_received_ns: int | None = None
        self.last_meta: dict[str, Any] = {}

    def on_packet(self, packet: Packet) -> None:
        """Record every metric of ``packet`` (a pipeline observer)."""
        t = packet.received_ns
        self.packets += 1
        self.last_received_ns = t
        self.last_meta = dict(packet.meta)
        for group, metric, raw in packet.metrics():
            value = float(raw)
            key = (group, metric)
            s = self.series.get(key)
            if s is None:
                if len(self.series) >= self.max_series:
                    continue
                s = self.series[key] = Series(value, t, deque(maxlen=self.max_points))
            s.value, s.received_ns = value, t
            h = s.history
            if len(h) >= 2 and h[-1][0] - h[-2][0] < self.spacing_ns:
                # The last point is only provisional (too close to the one
                # before it): the newer value supersedes it.
                h[-1] = (t, value)
            else:
                h.append((t, value))
            while h and t - h[0][0] > self.window_ns:
                h.popleft()

    def to_json(self, now_ns: int) -> dict[str, dict[str, Any]]:
        """group → metric → value, unit (tag, symbol), age, history ``[[unix_ms, value], …]``."""
        out: dict[str, dict[str, Any]] = {}
        for (group, metric), s in sorted(self.series.items()):
            out.setdefault(group, {})[metric] = {
                "value": s.value,
                "unit": UNITS.get(metric, ""),
                "unit_symbol": UNIT_SYMBOLS.get(UNITS.get(metric, ""), ""),
                "age_s": round(max(0.0, (now_ns - s.received_ns) / 1e9), 3),
                "history": [[t // 1_000_000, v] for t, v in s.history],
            }
        return out
