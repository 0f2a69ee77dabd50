"""The supervisor: one Trio nursery running source, sinks and their buffers.

``Gateway.run`` opens both buffers, starts the sinks and then the source with
``nursery.start`` (so a start-up failure surfaces before "ready"), and on
SIGTERM/SIGINT stops the source first, gives the sinks up to
``SHUTDOWN_GRACE`` seconds to land their in-flight windows and say "offline",
then returns. Everything not acknowledged is already on disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from gateway.buffer import BufferStore, DiskBuffer
from gateway.config import Config
from gateway.errors import leaf
from gateway.influx_sink import InfluxSink, gateway_points, packet_points, tag_suffix
from gateway.metrics import Metrics, RateLimitedLog
from gateway.mqtt_sink import MqttSink, packet_records
from gateway.source import Source
from gateway.status import LatestValues, serve_status
from gateway.systemd import watchdog
from gateway.telemetry import Packet, SequenceTracker, check_plausibility, parse_line

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0


class Gateway:
    """The whole daemon: build it from a :class:`Config`, then ``await run()``.

    Args:
        cfg: validated configuration.
        metrics: counters (a fresh private registry by default).
        on_packet: optional hook called with every accepted packet (status page).
    """

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics | None = None,
        on_packet: Callable[[Packet], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.on_packet = on_packet
        self.sequence = SequenceTracker()
        self.store: BufferStore | None = None
        self.mqtt_buffer: DiskBuffer | None = None
        self.influx_buffer: DiskBuffer | None = None
        self.mqtt: MqttSink | None = None
        self.influx: InfluxSink | None = None
        self.source: Source | None = None
        self._stop = trio.Event()
        self._rejects = RateLimitedLog(log, interval=10.0)
        self._tags = tag_suffix(cfg.influxdb.tags)
        # The status server and the systemd watchdog never end by themselves.
        self._ops_scope = trio.CancelScope()
        self.latest = LatestValues()
        self._last_ns = 0
        # Signals that arrived before ours were installed (noted by the CLI).
        self.early_signals: list[int] = []
        self._stages_scope: trio.CancelScope | None = None

    def request_stop(self) -> None:
        """Begin a clean shutdown (what SIGTERM does)."""
        self._stop.set()

    async def _open_buffers(self) -> BufferStore:
        g = self.cfg.gateway
        root = Path(g.buffer_dir)
        # Not fatal when it fails: the store reports it and holds records in memory.
        store = await BufferStore.open(
            root,
            {
                "mqtt": self.cfg.mqtt.buffer_max_messages,
                "influx": self.cfg.influxdb.buffer_max_points,
            },
            durability=g.durability,
        )
        if store.corrupt_moved:
            for sink in store.buffers:
                self.metrics.buffer_corrupt.labels(sink).inc(len(store.corrupt_moved))
        mqtt, influx = store.buffers["mqtt"], store.buffers["influx"]
        self.metrics.mqtt_buffered.set(mqtt.count.value)
        self.metrics.influx_buffered.set(influx.count.value)
        log.info(
            "buffers in %s: %d MQTT message(s), %d point(s) waiting (durability=%s)",
            store.path,
            mqtt.count.value,
            influx.count.value,
            g.durability,
        )
        return store

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`request_stop` or a signal; then shut down cleanly."""
        # The signal watcher outlives everything else, so that a signal during
        # start-up or during the final buffer write is handled, never the
        # default action (a KeyboardInterrupt traceback, or death by SIGHUP).
        async with trio.open_nursery() as outer:
            await outer.start(self._watch_signals)
            self.store = await self._open_buffers()
            self.mqtt_buffer = self.store.buffers["mqtt"]
            self.influx_buffer = self.store.buffers["influx"]
            try:
                async with trio_asyncio.open_loop() as loop:
                    # trio-asyncio raises what asyncio would only log (e.g. EBADF
                    # from a dying broker socket); log it instead of dying.
                    loop.set_exception_handler(_asyncio_exception)
                    await self._run_stages(task_status)
            finally:
                # Writes the acks that were still waiting for a commit.
                self.store.close()
                outer.cancel_scope.cancel()
        log.info("stopped")

    async def _run_stages(self, task_status: trio.TaskStatus[None]) -> None:
        assert self.mqtt_buffer is not None
        assert self.influx_buffer is not None
        cfg = self.cfg
        self.mqtt = MqttSink(cfg.mqtt, self.mqtt_buffer, self.metrics)
        self.influx = InfluxSink(
            cfg.influxdb,
            self.influx_buffer,
            self.metrics,
            Path(cfg.gateway.buffer_dir) / "dead-letter",
        )
        self.source = Source(cfg.source, self.ingest, self.metrics)
        assert self.store is not None
        async with trio.open_nursery() as nursery:
            self._stages_scope = nursery.cancel_scope
            store_scope = trio.CancelScope()

            async def run_store() -> None:
                assert self.store is not None
                with store_scope:
                    await self.store.run()

            nursery.start_soon(run_store)
            await nursery.start(self.mqtt.run)
            await nursery.start(self.influx.run)
            source_done = trio.Event()
            source_scope = trio.CancelScope()

            async def run_source(task_status: trio.TaskStatus[None]) -> None:
                try:
                    with source_scope:
                        assert self.source is not None
                        await self.source.run(task_status=task_status)
                finally:
                    source_done.set()

            await nursery.start(run_source)
            await nursery.start(self._run_ops)
            log.info(
                "running: source=%s, mqtt=%s:%d, influxdb=%s",
                cfg.source.kind,
                cfg.mqtt.host,
                cfg.mqtt.port,
                cfg.influxdb.url,
            )
            task_status.started()
            await self._stop.wait()
            log.info(
                "stopping: source first, then up to %.0f s for in-flight deliveries", SHUTDOWN_GRACE
            )
            nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
            source_scope.cancel()
            await source_done.wait()
            self.mqtt.stop()
            self.influx.stop()
            self._ops_scope.cancel()
            store_scope.cancel()  # the store's close() writes what is still pending

    async def _report_stats(self) -> None:
        """Write the gateway's backlog and drops to InfluxDB for the dashboard.

        They go through the InfluxDB buffer like readings, so an outage's
        backlog curve arrives with the replay, at the times it was measured.
        """
        assert self.influx_buffer is not None
        assert self.mqtt_buffer is not None
        m = self.metrics
        while True:
            await trio.sleep(self.cfg.gateway.stats_interval)
            values = {
                "mqtt_backlog": float(self.mqtt_buffer.count.value),
                "influx_backlog": float(self.influx_buffer.count.value),
                "mqtt_dropped": m.value("gateway_mqtt_dropped_total"),
                "influx_dropped": m.value("gateway_influx_dropped_total"),
                "packets": m.value("gateway_packets_total"),
            }
            points = gateway_points(values, time.time_ns(), self._tags)
            await self._commit({self.influx_buffer: points})

    async def _run_ops(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The status endpoint, then READY=1 and the systemd watchdog; until shutdown."""
        with self._ops_scope:
            async with trio.open_nursery() as ops:
                if self.cfg.status.listen:
                    try:
                        await ops.start(
                            functools.partial(serve_status, latest=self.latest),
                            self,
                            self.cfg.status.listen,
                        )
                    except* OSError as group:
                        # A taken port must not stop the data: run without the page.
                        log.error(
                            "status: cannot listen on %s (%s); running without /metrics",
                            self.cfg.status.listen,
                            leaf(group),
                        )
                await ops.start(watchdog, self)
                if self.cfg.gateway.stats_interval > 0:
                    ops.start_soon(self._report_stats)
                task_status.started()

    async def _watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """SIGTERM/SIGINT: clean stop; a second one: stop at once; SIGHUP: logged.

        Listens until the daemon has closed its buffers, so no signal ever
        takes the default action while the gateway runs.
        """
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            if self.early_signals:
                log.info("SIGTERM received while starting")
                self.request_stop()
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    # No reload: a half-applied config on an unattended box is
                    # worse than asking for a restart.
                    log.warning(
                        "SIGHUP received: the configuration is not reloaded; "
                        "restart the gateway to apply changes"
                    )
                elif not self._stop.is_set():
                    log.info("%s received", name)
                    self.request_stop()
                else:
                    log.warning("second %s: stopping now", name)
                    self._hard_stop()

    def _hard_stop(self) -> None:
        """End every stage now, without waiting for in-flight deliveries."""
        if self.mqtt is not None:
            self.mqtt.abort()
        if self._stages_scope is not None:
            self._stages_scope.cancel()

    async def ingest(self, lines: list[bytes], received_ns: int) -> None:
        """Parse lines, then commit their records to both buffers before returning."""
        assert self.mqtt_buffer is not None
        assert self.influx_buffer is not None
        m = self.metrics
        prefix = self.cfg.mqtt.topic_prefix
        messages: list[str] = []
        points: list[str] = []
        for line in lines:
            # Packets read together must not share a timestamp: InfluxDB would
            # keep only the last point of a series at one instant.
            received_ns = max(received_ns, self._last_ns + 1)
            parsed = parse_line(line, received_ns)
            if parsed is None:
                continue
            rejected = parsed.rejected
            packet = parsed.packet
            if packet is not None:
                packet, implausible = check_plausibility(packet, self.cfg.plausibility)
                rejected = rejected + implausible
            for group, metric, reason in rejected:
                m.metrics_rejected.labels(metric, reason).inc()
                self._rejects.log(
                    logging.WARNING,
                    f"m:{metric}:{reason}",
                    "skipped %s/%s: %s",
                    group,
                    metric,
                    reason,
                )
            if parsed.line_reason is not None:
                m.lines_rejected.labels(parsed.line_reason).inc()
                self._rejects.log(
                    logging.WARNING,
                    f"l:{parsed.line_reason}",
                    "rejected a line (%s): %r",
                    parsed.line_reason,
                    line[:120],
                )
                continue
            if packet is None:
                continue
            self._last_ns = received_ns
            self._track_sequence(packet)
            m.packet_seen()
            self.latest.on_packet(packet)
            if self.on_packet is not None:
                self.on_packet(packet)
            messages += packet_records(packet, prefix)
            points += packet_points(packet, self._tags)
        if not messages:
            return
        # Both sinks' records, and the acks since the last packet: one transaction.
        await self._commit({self.mqtt_buffer: messages, self.influx_buffer: points})

    def _track_sequence(self, packet: Packet) -> None:
        missed, reset = self.sequence.observe(packet)
        if missed:
            self.metrics.missed_packets.inc(missed)
            log.warning("Node 2 reports %d packet(s) received but never printed", missed)
        if reset:
            self.metrics.node_resets.inc()
            log.warning("Node 2 restarted (seq went backwards)")

    async def _commit(self, batches: dict[DiskBuffer, list[str]]) -> None:
        assert self.store is not None
        m = self.metrics
        errors_before = {buf: buf.write_errors for buf in self.store.buffers.values()}
        dropped = await self.store.commit(batches)
        for buf in self.store.buffers.values():
            sink = buf.name
            if buf.write_errors > errors_before[buf]:
                m.buffer_errors.labels(sink).inc(buf.write_errors - errors_before[buf])
            m.buffer_memory.labels(sink).set(buf.in_memory)
            (m.mqtt_buffered if sink == "mqtt" else m.influx_buffered).set(buf.count.value)
            if dropped.get(sink):
                (m.mqtt_dropped if sink == "mqtt" else m.influx_dropped).inc(dropped[sink])
                self._rejects.log(
                    logging.WARNING,
                    f"d:{sink}",
                    "%s buffer full (%d): dropped the %d oldest record(s)",
                    sink,
                    buf.max_records,
                    dropped[sink],
                )


def _asyncio_exception(loop: Any, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.debug("asyncio: %s (%r)", context.get("message"), exc)
    if isinstance(exc, asyncio.CancelledError):
        return
