"""The daemon: build the stages, run them in one Trio nursery tree, stop them in order.

First of all the daemon takes its buffer directory's lock
(:func:`gateway.buffer.lock_dir`), held until it exits: a second gateway on the
same directory stops there with :class:`~gateway.errors.BufferDirInUse`.

Start-up, in dependency order, each stage with ``nursery.start`` so that a
start-up failure surfaces before "ready":

1. the signal watcher (so no signal ever takes its default action),
2. the buffer store (opened, or held in memory when the disk refuses), and the
   clock tracker (is the wall clock right? what offset did this boot learn?),
3. the sinks (ready before they have connected: a server being down is normal),
4. the status endpoint, the systemd notifier/watchdog, the stats reporter and
   the alert timers (with the active alerts the store kept),
5. the source, which feeds :meth:`gateway.pipeline.Pipeline.ingest`.

Shutdown (SIGTERM/SIGINT or :meth:`Gateway.request_stop`) runs in reverse: the
source stops first, then the operations tasks, then the sinks get up to
``SHUTDOWN_GRACE`` seconds to land their in-flight deliveries and say
"offline"; the store writes what is pending and closes. Everything not
acknowledged is already on disk. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from gateway import alerts
from gateway.buffer import BufferStore, DirLock, lock_dir
from gateway.clock import ClockTracker, boottime_ns
from gateway.config import Config
from gateway.config.sections import HEARTBEAT_S
from gateway.coverage import Coverage
from gateway.deadletter import DEAD_LETTER_DIR, DeadLetterFile, DeadLetterMover
from gateway.errors import leaf
from gateway.homeassistant import Discovery, status_page_url
from gateway.metrics import Metrics
from gateway.pipeline import PacketObserver, Pipeline
from gateway.records import StampResolver, stamp_age_s
from gateway.sinks import influx, mqtt
from gateway.source import Source
from gateway.status.app import StatusContext, serve_status
from gateway.status.latest import LatestValues
from gateway.status.state import StateWatch, state_payload
from gateway.systemd import watchdog

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0
OLDEST_INTERVAL = 1.0  # seconds between readings of each buffer's oldest record


@dataclass(frozen=True)
class Stages:
    """Every stage of a running gateway, built together once the store is open."""

    store: BufferStore
    pipeline: Pipeline
    mqtt: mqtt.MqttSink
    influx: influx.InfluxSink
    source: Source
    dead_letters: tuple[DeadLetterMover, ...]
    alerts: alerts.Alerts

    @classmethod
    def build(
        cls,
        cfg: Config,
        store: BufferStore,
        metrics: Metrics,
        clock: ClockTracker,
        boot_offsets: dict[str, int],
        observers: Sequence[PacketObserver],
    ) -> Stages:
        """Wire the stages: the source feeds the pipeline, which feeds both buffers."""
        dead = Path(cfg.gateway.buffer_dir) / DEAD_LETTER_DIR
        mqtt_dead = DeadLetterFile(dead / mqtt.DEAD_LETTER_FILE)
        influx_dead = DeadLetterFile(dead / influx.DEAD_LETTER_FILE)
        engine = alerts.Alerts(cfg.alerts, metrics)
        pipeline = Pipeline(cfg, store, metrics, clock, observers, alerts=engine)
        discovery = None
        if cfg.mqtt.homeassistant.enabled:
            discovery = Discovery(
                cfg.mqtt.homeassistant.discovery_prefix,
                cfg.mqtt.topic_prefix,
                cfg.gateway.id,
                payload=cfg.mqtt.payload,
                stale_after=cfg.alerts.stale_after,
                stale_groups=cfg.alerts.stale_groups,
                configuration_url=status_page_url(cfg.status.listen),
            )
        mqtt_sink = mqtt.MqttSink(
            cfg.mqtt,
            store.buffers["mqtt"],
            metrics,
            mqtt_dead,
            discovery=discovery,
            gateway_id=cfg.gateway.id,
        )
        pipeline.observers.append(mqtt_sink.observe)
        return cls(
            store=store,
            pipeline=pipeline,
            mqtt=mqtt_sink,
            influx=influx.InfluxSink(
                cfg.influxdb,
                store.buffers["influx"],
                metrics,
                influx_dead,
                resolver=StampResolver(clock, boot_offsets),
            ),
            source=Source(cfg.source, pipeline.ingest, metrics),
            dead_letters=tuple(
                DeadLetterMover(queue, file, metrics.sink(name))
                for name, file in (("mqtt", mqtt_dead), ("influx", influx_dead))
                if (queue := store.buffers[name].dead) is not None
            ),
            alerts=engine,
        )


class Gateway:
    """The whole daemon: build it from a :class:`Config`, then ``await run()``.

    Args:
        cfg: validated configuration.
        metrics: counters (a fresh set by default).
        observers: called with every accepted packet, besides the status
            page's :class:`LatestValues`.
    """

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics | None = None,
        observers: Sequence[PacketObserver] = (),
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.latest = LatestValues()
        g = cfg.gateway
        self.clock = ClockTracker(g.clock_sync, g.clock_sync_file)
        self.observers: list[PacketObserver] = [self.latest.on_packet, *observers]
        # The running stages (None before start-up and after shutdown).
        self.stages: Stages | None = None
        # Records that never reached the disk and were lost at exit.
        self.lost_records = 0
        # The status endpoint's port once it listens (useful with port 0).
        self.status_port: int | None = None
        # Signals that arrived before ours were installed (noted by the CLI).
        self.early_signals: list[int] = []
        self._stop = trio.Event()
        self._stages_scope = trio.CancelScope()

    def request_stop(self) -> None:
        """Begin a clean shutdown (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`request_stop` or a signal; then shut down cleanly.

        Raises:
            BufferDirInUse: another gateway runs on the buffer directory; this
                one stopped before logging or opening anything else.
        """
        # Before anything else, so that a second gateway says only that: a
        # SIGTERM meanwhile is noted by the CLI (early_signals).
        lock = await trio.to_thread.run_sync(self._lock_buffer_dir)
        try:
            await self._run(task_status)
        finally:
            # After the store has closed: no other gateway writes before it is done.
            if lock is not None:
                lock.close()

    def _lock_buffer_dir(self) -> DirLock | None:
        """The buffer directory's lock, or None where none can be taken (blocking).

        A directory where the lock file cannot be made (a read-only or full
        disk) is not fatal, as it is not for the store, which then holds
        records in memory: the gateway runs, unlocked, and says so.

        Raises:
            BufferDirInUse: another gateway holds it.
        """
        directory = Path(self.cfg.gateway.buffer_dir)
        try:
            return lock_dir(directory)
        except OSError as exc:
            log.warning(
                "buffer directory %s cannot be locked (%s): a second gateway on it "
                "would not be refused",
                directory,
                exc,
            )
            return None

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        log_identity(self.cfg)
        stall = self.cfg.source.stall_timeout
        if self.cfg.source.kind == "command" and 0 < stall <= HEARTBEAT_S:
            log.warning(
                "source.stall_timeout = %g s is not above Node 2's %g s heartbeat: "
                "a quiet radio restarts probe-rs",
                stall,
                HEARTBEAT_S,
            )
        # The signal watcher outlives everything else, so that a signal during
        # start-up or during the final buffer write is handled, never the
        # default action (a KeyboardInterrupt traceback, or death by SIGHUP).
        async with trio.open_nursery() as outer:
            await outer.start(self._watch_signals)
            store = await self._open_store()
            try:
                offsets = await self._restore_clock(store)
                async with trio_asyncio.open_loop() as loop:
                    # trio-asyncio raises what asyncio would only log: filter
                    # the one known harmless case, report the rest.
                    loop.set_exception_handler(mqtt.asyncio_exception)
                    self.stages = Stages.build(
                        self.cfg, store, self.metrics, self.clock, offsets, self.observers
                    )
                    await self._run_stages(self.stages, task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await self._close(store)
                outer.cancel_scope.cancel()
        log.info("stopped")

    async def _open_store(self) -> BufferStore:
        g = self.cfg.gateway
        # Not fatal when it fails: the store reports it and holds records in memory.
        store = await BufferStore.open(
            Path(g.buffer_dir),
            {
                "mqtt": self.cfg.mqtt.buffer_max_messages,
                "influx": self.cfg.influxdb.buffer_max_points,
            },
            durability=g.durability,
            write_delay=g.write_delay,
            # A full buffer drops readings, never alert events.
            protect={"mqtt": alerts.MQTT_MARKER, "influx": alerts.INFLUX_MARKER},
        )
        for name in ("mqtt", "influx"):
            self.metrics.sink(name).corrupt += len(store.corrupt_moved)
            self.metrics.sink(name).salvaged = store.salvaged[name]
            self.metrics.sink(name).salvage_lost = store.salvage_lost[name]
        counts = {name: buf.count.value for name, buf in store.buffers.items()}
        log.info(
            "buffers in %s: %d MQTT message(s), %d point(s) waiting (durability=%s, "
            "write_delay=%g s)",
            store.path,
            counts["mqtt"],
            counts["influx"],
            g.durability,
            g.write_delay,
        )
        return store

    async def _restore_clock(self, store: BufferStore) -> dict[str, int]:
        """What the store knows of boots: restore this boot's offset; others' for the resolver."""
        boots = await trio.to_thread.run_sync(store.boot_offsets)
        current = self.clock.boot_key
        for key, (boot_id, offset) in boots.items():
            # A key is 8 hex digits of the id: another boot's may share it.
            if key == current and boot_id == self.clock.boot_id:
                self.clock.restore(offset)
        await store.save_boot(self.clock.boot_id, self.clock.offset_ns)
        return {k: off for k, (_, off) in boots.items() if k != current and off is not None}

    async def _watch_clock(
        self,
        store: BufferStore,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the clock's state current; save this boot's offset whenever it is right."""
        with scope:
            await self._clock_loop(store, task_status)

    async def _clock_loop(self, store: BufferStore, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.clock.watch)
            if not self.clock.synchronised.value:
                log.warning(
                    "clock not known right (gateway.clock_sync = %r): MQTT delivers at once; "
                    "InfluxDB points are held until it is, then stamped right",
                    self.cfg.gateway.clock_sync,
                )
            task_status.started()
            while True:
                await self.clock.synchronised.wait_value(True)
                self.metrics.clock_synchronized = True
                await store.save_boot(self.clock.boot_id, self.clock.offset_ns)
                await self.clock.synchronised.wait_value(False)
                self.metrics.clock_synchronized = False

    async def _watch_oldest(
        self,
        store: BufferStore,
        coverage: Coverage,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Each sink's oldest record's age and its outage coverage, every OLDEST_INTERVAL.

        Whether or not anything is being sent: during an outage it grows, which
        is what an operator's alert on it needs.
        """
        task_status.started()
        boot = self.clock.boot_key
        while True:
            for name in ("mqtt", "influx"):
                text = await store.buffers[name].oldest_stamp()
                age = 0.0
                if text is not None:
                    with contextlib.suppress(
                        ValueError
                    ):  # not a record: it goes to the dead letters
                        age = stamp_age_s(text, time.time_ns(), boot, boottime_ns())
                self.metrics.sink(name).oldest_age = age
                buf = store.buffers[name]
                coverage.update(name, buf.max_records, buf.count.value)
            await trio.sleep(OLDEST_INTERVAL)

    async def _close(self, store: BufferStore) -> None:
        """Write what is pending; note (and log) what never reached the disk."""
        self.lost_records += store.close()
        self.stages = None

    async def _run_stages(self, s: Stages, task_status: trio.TaskStatus[None]) -> None:
        cfg = self.cfg
        with self._stages_scope:
            async with trio.open_nursery() as sinks:
                store_scope = trio.CancelScope()
                sinks.start_soon(_run_in, store_scope, s.store.run)
                # The clock must be checked before the first reading is stamped.
                clock_scope = trio.CancelScope()
                await sinks.start(self._watch_clock, s.store, clock_scope)
                await sinks.start(s.mqtt.run)
                await sinks.start(s.influx.run)
                async with trio.open_nursery() as ops:
                    for mover in s.dead_letters:
                        await ops.start(mover.run)
                    await ops.start(self._watch_oldest, s.store, s.pipeline.coverage)
                    ctx = self._status_context(s)
                    s.mqtt.state_document = functools.partial(state_payload, ctx)
                    await ops.start(
                        StateWatch(ctx, cfg.gateway.state_interval, s.mqtt.publish_state).run
                    )
                    await ops.start(self._serve_status, ctx)
                    await ops.start(watchdog, self.metrics, cfg.status.unhealthy_after)
                    if cfg.gateway.stats_interval > 0:
                        ops.start_soon(s.pipeline.report_stats)
                    kept = await trio.to_thread.run_sync(s.store.alert_state)
                    s.alerts.restore(kept, self.clock.stamp().wall_ns)
                    await ops.start(s.alerts.run, s.pipeline.commit_alerts)
                    async with trio.open_nursery() as source:
                        await source.start(s.source.run)
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
                            "stopping: source first, then up to %.0f s for in-flight deliveries",
                            SHUTDOWN_GRACE,
                        )
                        sinks.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
                        source.cancel_scope.cancel()
                    ops.cancel_scope.cancel()
                s.mqtt.stop()
                s.influx.stop()
                store_scope.cancel()  # the store's close() writes what is still pending
                clock_scope.cancel()  # the clock watcher never ends by itself

    def _status_context(self, s: Stages) -> StatusContext:
        """What the status endpoint and the ``gateway/state`` message read."""
        return StatusContext(
            cfg=self.cfg,
            metrics=self.metrics,
            latest=self.latest,
            source=s.source,
            sinks={"mqtt": s.mqtt, "influx": s.influx},
            buffers=s.store.buffers,
            clock=self.clock,
            alerts=s.alerts,
        )

    async def _serve_status(
        self, ctx: StatusContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The status endpoint until cancelled; a taken port is logged, not fatal."""
        listen = self.cfg.status.listen
        if not listen:
            task_status.started()
            return
        try:
            async with trio.open_nursery() as nursery:
                self.status_port = await nursery.start(serve_status, ctx, listen)
                task_status.started()
        except* OSError as group:
            # A taken port must not stop the data: run without the page.
            log.error(
                "status: cannot listen on %s (%s); running without /metrics", listen, leaf(group)
            )
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
        if self.stages is not None:
            self.stages.mqtt.abort()
        self._stages_scope.cancel()


def log_identity(cfg: Config) -> None:
    """Log the ``gateway.id`` and MQTT client id in use, and where the id came from.

    An id derived without a machine id is a WARNING: a cloned card shares it
    with every other box of its host name, and the broker will keep throwing
    one of them off. The id also names the tags and Home Assistant entities,
    so an operator who sees it change here knows why dashboards moved.
    """
    derived = cfg.derived_id
    if derived is None:
        log.info(
            "gateway id %r (gateway.id in the config); mqtt client id %r",
            cfg.gateway.id,
            cfg.mqtt.client_id,
        )
    elif derived.machine_id:
        log.info(
            "gateway id %r derived from the host name %r and the machine id (no gateway.id "
            "in the config: set one to keep it across re-imaging); mqtt client id %r",
            cfg.gateway.id,
            derived.host,
            cfg.mqtt.client_id,
        )
    else:
        log.warning(
            "gateway id %r derived from the host name only: %s, so boxes with this host "
            "name share the id and the mqtt client id %r; set gateway.id in the config",
            cfg.gateway.id,
            derived.note,
            cfg.mqtt.client_id,
        )


async def _run_in(scope: trio.CancelScope, fn: Any) -> None:
    with scope:
        await fn()
