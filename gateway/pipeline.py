"""One path for a packet: lines → packets → records for every sink → one commit.

The source hands each batch of lines it read to :meth:`Pipeline.ingest`, which
stamps each line (:class:`gateway.clock.ClockTracker`: wall time, and boottime
for a later correction while the clock is not known right), parses them
(:mod:`gateway.telemetry`), drops implausible values, tracks Node 2's
sequence numbers, tells the observers (the status page's latest values), encodes
each packet for both sinks (:mod:`gateway.records`) and commits all of it, with
the acknowledgements since the last commit, in one transaction
(:class:`gateway.buffer.BufferStore`). When ``ingest`` returns, the records are
committed and the sinks are woken: "committed before delivery".

With an alert engine (:mod:`gateway.alerts`), each accepted packet is also
evaluated against the alert rules and groups' freshness; the events it causes
are committed in the same transaction as the packet, and the events the
engine's timers cause go through :meth:`Pipeline.commit_alerts`.

Everything rejected on the way is counted in :class:`gateway.metrics.Metrics`
and logged, rate-limited by reason (never by a name from the data).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import trio

from gateway.alerts import AlertEvent, Alerts, alert_tags
from gateway.buffer import BufferStore, DiskBuffer
from gateway.clock import ClockTracker
from gateway.config import Config
from gateway.coverage import Coverage
from gateway.metrics import Metrics, RateLimitedLog
from gateway.records import gateway_points, packet_points, packet_records, stamp_text, tag_suffix
from gateway.telemetry import NAME_RE, Packet, SequenceTracker, check_plausibility, parse_line

log = logging.getLogger(__name__)

PacketObserver = Callable[[Packet], None]
MAX_NAMES_LOGGED = 8  # rejected names quoted in one log line
# Every measurement of the self-stats points (Pipeline.stats_values), field ``value``.
STATS_MEASUREMENTS = (
    "mqtt_backlog",
    "influx_backlog",
    "mqtt_dropped",
    "influx_dropped",
    "packets",
    *(
        f"{sink}_{figure}"
        for sink in ("mqtt", "influx")
        for figure in ("oldest_age", "coverage_hours", "dead_letters_waiting")
    ),
    "clock_synchronized",
    "alerts_active",
)


class Pipeline:
    """Parse, check, encode and commit what the source reads.

    Args:
        cfg: the whole configuration.
        store: the open buffer store holding the "mqtt" and "influx" buffers.
        metrics: where everything is counted.
        clock: stamps every reading.
        observers: called with every accepted packet (e.g. the status page's
            latest values); they must not block.
        alerts: the alert engine, if any: evaluated on every accepted packet.
    """

    def __init__(
        self,
        cfg: Config,
        store: BufferStore,
        metrics: Metrics,
        clock: ClockTracker,
        observers: Sequence[PacketObserver] = (),
        alerts: Alerts | None = None,
        coverage: Coverage | None = None,
    ) -> None:
        self.cfg = cfg
        self.alerts = alerts
        # Every commit feeds the input rates outage coverage is computed from.
        self.coverage = coverage or Coverage(metrics, cfg.gateway.min_coverage_hours)
        self._alert_tags = alert_tags(cfg.influxdb.tags)
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.observers = list(observers)
        self.mqtt_buffer = store.buffers["mqtt"]
        self.influx_buffer = store.buffers["influx"]
        self.sequence = SequenceTracker()
        self._prefix = cfg.mqtt.topic_prefix
        self._tags = tag_suffix(cfg.influxdb.tags)
        # Self-stats also name the box (gateway=<gateway.id>) for the fleet dashboard;
        # a static tag of that name, if configured, wins.
        self._stats_tags = tag_suffix({"gateway": cfg.gateway.id, **cfg.influxdb.tags})
        self._rejects = RateLimitedLog(log, interval=10.0)
        self.publish_backlogs()

    async def ingest(self, lines: list[bytes]) -> None:
        """Stamp and parse ``lines``, then commit their records to both buffers before returning."""
        messages: list[str] = []
        points: list[str] = []
        for line in lines:
            # One stamp per line: packets read together get distinct, increasing
            # stamps (InfluxDB keeps only one point of a series per instant).
            stamp = self.clock.stamp()
            packet = self._accept(line, stamp.wall_ns)
            if packet is None:
                continue
            text = stamp_text(stamp)
            messages += packet_records(packet, self._prefix, text)
            points += packet_points(packet, self._tags, text)
            if self.alerts is not None:
                self._encode_alerts(self.alerts.observe(packet), text, messages, points)
        state = self.alerts.take_state() if self.alerts is not None else None
        if messages or state:
            # Both sinks' records, the alert state and the acks since the last
            # packet: one transaction.
            await self.commit({self.mqtt_buffer: messages, self.influx_buffer: points}, state=state)

    async def commit_alerts(self) -> None:
        """Commit what the alert engine's timers decided now (its ``run`` callback)."""
        assert self.alerts is not None
        stamp = self.clock.stamp()
        messages: list[str] = []
        points: list[str] = []
        self._encode_alerts(self.alerts.tick(stamp.wall_ns), stamp_text(stamp), messages, points)
        state = self.alerts.take_state()
        if messages or state:
            await self.commit({self.mqtt_buffer: messages, self.influx_buffer: points}, state=state)

    def _encode_alerts(
        self, events: list[AlertEvent], stamp: str, messages: list[str], points: list[str]
    ) -> None:
        for event in events:
            messages.append(event.mqtt_record(self._prefix, stamp))
            points.append(event.point(self._alert_tags, stamp))

    def _accept(self, line: bytes, received_ns: int) -> Packet | None:
        """Parse one line; count and log what is rejected; None if nothing is left."""
        m = self.metrics
        parsed = parse_line(line, received_ns)
        if parsed is None:
            return None
        rejected = parsed.rejected
        packet = parsed.packet
        if packet is not None:
            packet, implausible = check_plausibility(packet, self.cfg.plausibility)
            rejected = rejected + implausible
        by_reason: dict[str, list[str]] = {}
        for group, metric, reason in rejected:
            # A name from the data is a label only when it is a valid name (the
            # counter's own bound keeps even those few): a flood of distinct
            # bad names must not grow /metrics or memory.
            m.metrics_rejected.inc(metric if NAME_RE.fullmatch(metric) else "_invalid", reason)
            by_reason.setdefault(reason, []).append(f"{group}/{metric}")
        for reason, names in by_reason.items():
            # One line per reason and packet, rate-limited by reason.
            self._rejects.log(
                logging.WARNING,
                f"m:{reason}",
                "skipped %s: %s",
                ", ".join(names[:MAX_NAMES_LOGGED])
                + (" …" if len(names) > MAX_NAMES_LOGGED else ""),
                reason,
            )
        if parsed.line_reason is not None:
            m.lines_rejected.inc(parsed.line_reason)
            self._rejects.log(
                logging.WARNING,
                f"l:{parsed.line_reason}",
                "rejected a line (%s): %r",
                parsed.line_reason,
                line[:120],
            )
            return None
        if packet is None:
            return None
        self._track_sequence(packet)
        m.packet_seen()
        for observe in self.observers:
            observe(packet)
        return packet

    def _track_sequence(self, packet: Packet) -> None:
        missed, reset = self.sequence.observe(packet)
        if missed:
            self.metrics.missed_packets += missed
            log.warning("Node 2 reports %d packet(s) received but never printed", missed)
        if reset:
            self.metrics.node_resets += 1
            log.warning("Node 2 restarted (seq went backwards)")

    async def commit(
        self,
        batches: Mapping[DiskBuffer, list[str]],
        *,
        state: Mapping[str, str | None] | None = None,
    ) -> None:
        """Commit records (and alert state) in one transaction; count what that dropped."""
        sinks = (self.mqtt_buffer, self.influx_buffer)  # not their dead-letter queues
        result = await self.store.commit(batches, state=state)
        dropped = result.dropped
        for buf in sinks:
            self.coverage.committed(buf.name, len(batches.get(buf, ())))
            figures = self.metrics.sink(buf.name)
            # A store deleted under us and recreated is an I/O failure of each buffer.
            figures.buffer_errors += result.write_errors.get(buf.name, 0) + result.recreated
            # Records the disk refused; write-behind's records wait in memory by design.
            figures.memory_records = buf.in_memory if result.degraded else 0
            # A store first opened later (the disk refused at start) may have been salvaged.
            figures.salvaged = self.store.salvaged[buf.name]
            figures.salvage_lost = self.store.salvage_lost[buf.name]
            figures.set_backlog(buf.count.value)
            if dropped.get(buf.name):
                figures.dropped += dropped[buf.name]
                self._rejects.log(
                    logging.WARNING,
                    f"d:{buf.name}",
                    "%s buffer full (%d): dropped the %d oldest record(s)",
                    buf.name,
                    buf.max_records,
                    dropped[buf.name],
                )

    def publish_backlogs(self) -> None:
        """Copy the buffers' counts into the metrics (at start-up and after commits)."""
        for buf in (self.mqtt_buffer, self.influx_buffer):
            self.metrics.sink(buf.name).set_backlog(buf.count.value)

    def stats_values(self) -> dict[str, float]:
        """The self-stats figures now: measurement name → value (see :meth:`report_stats`).

        Per sink (``mqtt_``/``influx_``): backlog, drops, the oldest waiting
        record's age (s), outage coverage (h, left out while there is no rate)
        and dead letters waiting in the store; then packets, the clock
        (1 = known right) and the alerts firing.
        """
        m = self.metrics
        values = {
            "mqtt_backlog": float(self.mqtt_buffer.count.value),
            "influx_backlog": float(self.influx_buffer.count.value),
            "mqtt_dropped": float(m.mqtt.dropped),
            "influx_dropped": float(m.influx.dropped),
            "packets": float(m.packets),
        }
        for sink in m.sinks:
            values[f"{sink.name}_oldest_age"] = float(sink.oldest_age)
            if sink.coverage_hours is not None:
                values[f"{sink.name}_coverage_hours"] = float(sink.coverage_hours)
            values[f"{sink.name}_dead_letters_waiting"] = float(sink.dead_letters_waiting)
        values["clock_synchronized"] = 1.0 if self.clock.synchronised.value else 0.0
        values["alerts_active"] = float(len(self.alerts.active()) if self.alerts else 0)
        return values

    async def report_stats(self) -> None:
        """Write the gateway's own figures to InfluxDB, every ``stats_interval``.

        They go through the InfluxDB buffer like readings, so an outage's
        backlog curve arrives with the replay, at the times it was measured.
        Tags: ``node=gateway``, ``gateway=<gateway.id>`` and the static tags.
        """
        while True:
            await trio.sleep(self.cfg.gateway.stats_interval)
            points = gateway_points(
                self.stats_values(), self._stats_tags, stamp_text(self.clock.stamp())
            )
            await self.commit({self.influx_buffer: points})
