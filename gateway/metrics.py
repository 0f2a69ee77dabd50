"""The gateway's own counters and gauges, in a Prometheus registry.

One :class:`Metrics` per running gateway (a private registry, so tests and
several gateways in one process never share counters). Every drop, rejection,
restart and dead letter is counted here, and logs say the same thing.
"""

from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics

# `*_created` samples double the exposition for no use on a gateway's dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Counters and gauges for every stage; see README "Metrics"."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.packets = Counter("gateway_packets", "Packets parsed from the source", registry=r)
        self.lines_rejected = Counter(
            "gateway_lines_rejected", "Lines rejected, by reason", ["reason"], registry=r
        )
        self.metrics_rejected = Counter(
            "gateway_metrics_rejected",
            "Metric values skipped, by metric and reason",
            ["metric", "reason"],
            registry=r,
        )
        self.source_restarts = Counter(
            "gateway_source_restarts", "Source restarts, by reason", ["reason"], registry=r
        )
        self.source_up = Gauge("gateway_source_up", "1 while the source runs", registry=r)
        self.missed_packets = Counter(
            "gateway_missed_packets", "Packets Node 2 counted but never printed", registry=r
        )
        self.node_resets = Counter(
            "gateway_node_resets", "Node 2 resets seen (seq went backwards)", registry=r
        )
        self.mqtt_connected = Gauge("gateway_mqtt_connected", "1 while connected", registry=r)
        self.mqtt_buffered = Gauge(
            "gateway_mqtt_buffered_messages", "Messages waiting in the MQTT buffer", registry=r
        )
        self.mqtt_published = Counter(
            "gateway_mqtt_published", "Messages acknowledged by the broker", registry=r
        )
        self.mqtt_dropped = Counter(
            "gateway_mqtt_dropped", "Messages dropped (buffer full or unwritable)", registry=r
        )
        self.mqtt_connects = Counter(
            "gateway_mqtt_connects", "Successful broker connections", registry=r
        )
        self.mqtt_connect_failures = Counter(
            "gateway_mqtt_connect_failures",
            "Failed connection attempts or dropped connections",
            registry=r,
        )
        self.influx_buffered = Gauge(
            "gateway_influx_buffered_points", "Points waiting in the InfluxDB buffer", registry=r
        )
        self.influx_written = Counter(
            "gateway_influx_written", "Points accepted by the database", registry=r
        )
        self.influx_dropped = Counter(
            "gateway_influx_dropped", "Points dropped (buffer full or unwritable)", registry=r
        )
        self.influx_dead_letter = Counter(
            "gateway_influx_dead_letter", "Points the database rejected for good", registry=r
        )
        self.influx_errors = Counter(
            "gateway_influx_write_errors",
            "Failed write requests, by status",
            ["status"],
            registry=r,
        )
        self.buffer_errors = Counter(
            "gateway_buffer_errors", "Buffer I/O failures, by sink", ["sink"], registry=r
        )
        self.buffer_memory = Gauge(
            "gateway_buffer_memory_records",
            "Records held in memory because the disk refused them",
            ["sink"],
            registry=r,
        )
        self.buffer_corrupt = Counter(
            "gateway_buffer_corrupt", "Corrupt buffers moved aside, by sink", ["sink"], registry=r
        )
        self.buffer_oldest_age = Gauge(
            "gateway_buffer_oldest_age_seconds",
            "Age of the oldest buffered record",
            ["sink"],
            registry=r,
        )
        self.last_packet_age = Gauge(
            "gateway_last_packet_age_seconds", "Seconds since the last packet", registry=r
        )
        self.last_packet_at: float | None = None

    def packet_seen(self) -> None:
        """Note that a packet arrived now."""
        self.packets.inc()
        self.last_packet_at = time.monotonic()

    def value(self, name: str, **labels: str) -> float:
        """The current value of a sample (for tests and the status API)."""
        v = self.registry.get_sample_value(name, labels or None)
        return 0.0 if v is None else v


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds per key, counting the rest."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        """Log ``msg`` unless ``key`` was logged less than ``interval`` ago."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, msg, *args)
