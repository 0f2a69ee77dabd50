"""The gateway's own counters and gauges: typed attributes, exported to Prometheus.

One :class:`Metrics` per running gateway. Stages update plain attributes
(``metrics.packets += 1``, ``metrics.mqtt.delivered += n``); the status page,
the health policy and the tests read the same attributes. Prometheus sees them
through a collector that renders them at scrape time under the names the
README lists, so nothing ever reads a value back out of the registry by name.

Labelled counters are :class:`LabelledCounter` s with a bound on distinct label
values: a firmware (or an attacker) printing a new metric name per line must not
grow memory or ``/metrics`` without bound; values past the bound are counted
under :data:`OTHER`.

Times here are ``time.monotonic()`` seconds: they feed health decisions that
must not jump with the wall clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` samples double the exposition for no use on a gateway's dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

OTHER = "_other"  # the label value for everything past a counter's bound
MAX_LABEL_VALUES = 64  # distinct label values per labelled counter
RATE_LIMIT_KEYS = 256  # distinct keys a RateLimitedLog remembers


class LabelledCounter:
    """Counts per label value (or tuple of values), with a bound on distinct values.

    Args:
        labels: the Prometheus label names.
        max_values: distinct label tuples kept; later new ones count as ``OTHER``.
    """

    def __init__(self, *labels: str, max_values: int = MAX_LABEL_VALUES) -> None:
        self.labels = labels
        self.max_values = max_values
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *key: str, amount: float = 1) -> None:
        """Add ``amount`` to the count of ``key`` (one string per label)."""
        if len(key) != len(self.labels):
            raise TypeError(f"expected labels {self.labels}, got {key}")
        if key not in self.values and len(self.values) >= self.max_values:
            key = (OTHER,) * len(self.labels)
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, *key: str) -> float:
        """The count of ``key`` (0 if never counted)."""
        return self.values.get(key, 0)

    def total(self) -> float:
        """The sum over every label value."""
        return sum(self.values.values())


@dataclass
class SinkMetrics:
    """One sink's figures; ``name`` is "mqtt" or "influx" (the ``sink`` label)."""

    name: str
    # connected, holding, window and protocol: the sink writes each in one place
    # (its own state is read from the same place or set beside it, one setter).
    connected: bool = False
    # Records waiting in the buffer that the sink may deliver now.
    backlog: int = 0
    delivered: int = 0
    dropped: int = 0
    dead_letters: int = 0
    # Dead letters the bounded file (or the memory that holds them while the
    # disk refuses) had to drop: the oldest go first.
    dead_letters_dropped: int = 0
    # Dead letters kept in the store because the dead-letter file refuses them.
    dead_letters_waiting: int = 0
    connects: int = 0
    connect_failures: int = 0
    # Failed requests by status (InfluxDB: the HTTP status or "network").
    errors: LabelledCounter = field(default_factory=lambda: LabelledCounter("status"))
    buffer_errors: int = 0
    memory_records: int = 0
    corrupt: int = 0
    # Records salvaged from a corrupt store, and those of its live range that
    # could not be read (both mirror the store's counts: it owns them).
    salvaged: int = 0
    salvage_lost: int = 0
    oldest_age: float = 0.0
    # Hours of outage the room left in the buffer holds at the last hour's input
    # rate (gateway.coverage; None while there is no rate), and that rate.
    coverage_hours: float | None = None
    rate_per_hour: float | None = None
    # InfluxDB: the backlog waits for the clock to be right (not stuck).
    holding: bool = False
    # InfluxDB: points delivered with their best-known time, tagged clock=unsynced.
    unsynced: int = 0
    # MQTT: messages in flight at most on this connection (mqtt.max_inflight,
    # under MQTT 5 capped by the broker's Receive Maximum).
    window: int = 0
    protocol: str = ""  # MQTT: "5" or "3.1.1", as spoken (or tried) now
    # The configured servers (mqtt.servers as host:port, influxdb.urls) and the
    # one in use or being tried; the sink owns the choice, these mirror it.
    servers: tuple[str, ...] = ()
    server: str = ""
    # MQTT: connections (probably) taken over by another client with our client id,
    # and while the last ones were, what was seen (else "").
    takeovers: int = 0
    takeover: str = ""
    # MQTT 5: messages the broker refused in its PUBACK, by reason code ("0x87").
    refused: LabelledCounter = field(default_factory=lambda: LabelledCounter("code"))
    last_delivery_at: float | None = None
    last_rejected_at: float | None = None  # the last record sent to the dead letters
    # When the backlog last went from empty to non-empty.
    waiting_since: float | None = None

    def set_backlog(self, count: int, now: float | None = None) -> None:
        """Note the backlog; remember when it stopped being empty."""
        if count <= 0:
            self.waiting_since = None
        elif self.waiting_since is None or self.backlog <= 0:
            self.waiting_since = time.monotonic() if now is None else now
        self.backlog = count

    def note_rejected(self, records: int) -> None:
        """``records`` were rejected for good and went to the dead letters."""
        self.dead_letters += records
        self.last_rejected_at = time.monotonic()

    def note_delivery(self, records: int, backlog: int) -> None:
        """``records`` were acknowledged by the server; ``backlog`` is what is left."""
        self.delivered += records
        self.last_delivery_at = time.monotonic()
        self.set_backlog(backlog, self.last_delivery_at)


class Metrics:
    """Counters and gauges for every stage (see README "Status endpoint")."""

    def __init__(self) -> None:
        self.packets = 0
        self.lines_rejected = LabelledCounter("reason")
        # metric names come from the data: bounded like every labelled counter.
        self.metrics_rejected = LabelledCounter("metric", "reason", max_values=256)
        self.source_restarts = LabelledCounter("reason")
        self.source_up = False
        self.missed_packets = 0
        self.node_resets = 0
        self.last_packet_at: float | None = None
        self.started_at = time.monotonic()
        self.clock_synchronized = False
        self.mqtt = SinkMetrics("mqtt")
        self.influx = SinkMetrics("influx")
        # Alert name → firing now (gateway.alerts keeps it; names are bounded there).
        self.alerts_firing: dict[str, bool] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))

    @property
    def sinks(self) -> tuple[SinkMetrics, SinkMetrics]:
        """Both sinks' figures."""
        return self.mqtt, self.influx

    def sink(self, name: str) -> SinkMetrics:
        """The figures of sink ``name`` ("mqtt" or "influx")."""
        return self.mqtt if name == "mqtt" else self.influx

    def packet_seen(self) -> None:
        """Note that a packet arrived now."""
        self.packets += 1
        self.last_packet_at = time.monotonic()

    def last_packet_age(self) -> float:
        """Seconds since the last packet (since start-up before the first one)."""
        since = self.last_packet_at if self.last_packet_at is not None else self.started_at
        return max(0.0, time.monotonic() - since)


class _Collector(Collector):
    """Renders :class:`Metrics` in the Prometheus text format at scrape time."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def describe(self) -> Iterator[Metric]:
        # Describing by collecting lets the registry check names once.
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield _counter("gateway_packets", "Packets parsed from the source", m.packets)
        yield _labelled("gateway_lines_rejected", "Lines rejected, by reason", m.lines_rejected)
        yield _labelled(
            "gateway_metrics_rejected",
            "Metric values skipped, by metric and reason",
            m.metrics_rejected,
        )
        yield _labelled("gateway_source_restarts", "Source restarts, by reason", m.source_restarts)
        yield _gauge("gateway_source_up", "1 while the source runs", float(m.source_up))
        yield _counter(
            "gateway_missed_packets", "Packets Node 2 counted but never printed", m.missed_packets
        )
        yield _counter(
            "gateway_node_resets", "Node 2 resets seen (seq went backwards)", m.node_resets
        )
        mq, ix = m.mqtt, m.influx
        yield _gauge("gateway_mqtt_connected", "1 while connected", float(mq.connected))
        yield _gauge(
            "gateway_mqtt_buffered_messages", "Messages waiting in the MQTT buffer", mq.backlog
        )
        yield _counter(
            "gateway_mqtt_published", "Messages acknowledged by the broker", mq.delivered
        )
        yield _counter(
            "gateway_mqtt_dropped", "Messages dropped (buffer full or unwritable)", mq.dropped
        )
        yield _counter(
            "gateway_mqtt_dead_letter", "Messages that can never be published", mq.dead_letters
        )
        yield _labelled(
            "gateway_mqtt_refused",
            "Messages the broker refused in its PUBACK (MQTT 5), by reason code",
            mq.refused,
        )
        yield _gauge(
            "gateway_mqtt_window",
            "Messages in flight at most (max_inflight, capped by the broker's Receive Maximum)",
            mq.window,
        )
        yield _counter("gateway_mqtt_connects", "Successful broker connections", mq.connects)
        yield _counter(
            "gateway_mqtt_takeovers",
            "Connections taken over by another client with this client id (MQTT 5 reason "
            "0x8E, or closed right after every connect)",
            mq.takeovers,
        )
        yield _counter(
            "gateway_mqtt_connect_failures",
            "Failed connection attempts or dropped connections",
            mq.connect_failures,
        )
        held = ix.backlog if ix.holding else 0
        yield _gauge(
            "gateway_influx_buffered_points",
            "Points waiting in the InfluxDB buffer (not counting held ones)",
            ix.backlog - held,
        )
        yield _gauge("gateway_points_held", "Points held until the clock is known right", held)
        yield _gauge(
            "gateway_clock_synchronized",
            "1 while the wall clock is known right",
            float(m.clock_synchronized),
        )
        yield _counter(
            "gateway_influx_unsynced",
            "Points delivered with their best-known time, tagged clock=unsynced",
            ix.unsynced,
        )
        yield _counter("gateway_influx_written", "Points accepted by the database", ix.delivered)
        yield _counter(
            "gateway_influx_dropped", "Points dropped (buffer full or unwritable)", ix.dropped
        )
        yield _counter(
            "gateway_influx_dead_letter", "Points the database rejected for good", ix.dead_letters
        )
        yield _labelled(
            "gateway_influx_write_errors", "Failed write requests, by status", ix.errors
        )
        per_sink = [
            ("gateway_buffer_errors", "Buffer I/O failures, by sink", "buffer_errors", True),
            (
                "gateway_buffer_memory_records",
                "Records held in memory because the disk refused them",
                "memory_records",
                False,
            ),
            ("gateway_buffer_corrupt", "Corrupt buffers moved aside, by sink", "corrupt", True),
            (
                "gateway_buffer_salvaged",
                "Records salvaged from a corrupt store into the new one, by sink",
                "salvaged",
                True,
            ),
            (
                "gateway_buffer_salvage_lost",
                "Records of a corrupt store's live range that could not be read, by sink",
                "salvage_lost",
                True,
            ),
            (
                "gateway_dead_letters_dropped",
                "Dead letters dropped by the dead-letter file's bound, by sink",
                "dead_letters_dropped",
                True,
            ),
            (
                "gateway_dead_letters_waiting",
                "Dead letters kept in the buffer store because the dead-letter file refuses them",
                "dead_letters_waiting",
                False,
            ),
            (
                "gateway_buffer_oldest_age_seconds",
                "Age of the oldest buffered record",
                "oldest_age",
                False,
            ),
        ]
        for name, doc, attr, is_counter in per_sink:
            family: CounterMetricFamily | GaugeMetricFamily
            if is_counter:
                family = CounterMetricFamily(name, doc, labels=["sink"])
            else:
                family = GaugeMetricFamily(name, doc, labels=["sink"])
            for sink in m.sinks:
                family.add_metric([sink.name], float(getattr(sink, attr)))
            yield family
        yield _active(
            "gateway_mqtt_server", "1 for the broker in use, 0 for the others", "server", mq
        )
        yield _active("gateway_influx_server", "1 for the URL in use, 0 for the others", "url", ix)
        coverage = GaugeMetricFamily(
            "gateway_buffer_coverage_hours",
            "Hours of outage the buffer's free room holds at the last hour's input rate, by sink",
            labels=["sink"],
        )
        for sink in m.sinks:
            # No sample while there is no rate: an absent series, not a fake infinity.
            if sink.coverage_hours is not None:
                coverage.add_metric([sink.name], sink.coverage_hours)
        yield coverage
        yield _gauge(
            "gateway_last_packet_age_seconds", "Seconds since the last packet", m.last_packet_age()
        )
        alerts = GaugeMetricFamily(
            "gateway_alerts_firing", "1 while the alert is firing, by name", labels=["name"]
        )
        for name, firing in sorted(m.alerts_firing.items()):
            alerts.add_metric([name], float(firing))
        yield alerts


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _active(name: str, doc: str, label: str, sink: SinkMetrics) -> GaugeMetricFamily:
    """A gauge per configured server of ``sink``: 1 for the one in use, 0 for the others."""
    family = GaugeMetricFamily(name, doc, labels=[label])
    for server in sink.servers:
        family.add_metric([server], float(server == sink.server))
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _labelled(name: str, doc: str, counter: LabelledCounter) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(counter.labels))
    for key, value in sorted(counter.values.items()):
        family.add_metric(list(key), value)
    return family


class RateLimitedLog:
    """Log at most one line per ``interval`` seconds per key, counting the rest.

    At most ``max_keys`` keys are remembered; past that, new keys share one
    slot, so a flood of distinct keys costs neither memory nor log lines.
    """

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, max_keys: int = RATE_LIMIT_KEYS
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        """Log ``msg`` unless ``key`` was logged less than ``interval`` ago."""
        if key not in self._last and len(self._last) >= self.max_keys:
            key = OTHER
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
