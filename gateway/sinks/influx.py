"""The InfluxDB sink: buffered points → batched writes to ``/api/v2/write``.

Points (see :mod:`gateway.records`) wait in a :class:`~gateway.buffer.DiskBuffer`
as line protocol and leave it only after a 2xx. A batch goes out when
``batch_size`` points are waiting or ``flush_interval`` after the first of them
arrived; a backlog drains in large
requests. Errors are classified once, in :func:`classify`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import trio
from trio_util import AsyncValue, wait_any

from gateway.backoff import Backoff
from gateway.buffer import DiskBuffer, Record
from gateway.config.sections import InfluxSection
from gateway.deadletter import DeadLetterFile
from gateway.errors import InfluxWriteError, scrub
from gateway.metrics import Metrics, RateLimitedLog
from gateway.records import StampResolver, point_line, split_point
from gateway.sinks.influx_writer import Deadline, InfluxWriter, classify
from gateway.sinks.servers import Rotation

__all__ = ["DEAD_LETTER_FILE", "Deadline", "InfluxSink", "InfluxWriter", "classify"]

log = logging.getLogger(__name__)

MAX_REQUEST_POINTS = 5000  # per request while a backlog drains
ACK_WAIT = 1.0  # seconds a drain waits at most for its last ack to reach the disk
# Held points (the clock not yet right) are released, oldest first and tagged
# clock=unsynced, once they fill this share of the buffer: never dropped.
HOLD_RELEASE_SHARE = 0.9
HOLD_LOG_INTERVAL = 60.0  # seconds between "still holding" warnings
DEAD_LETTER_FILE = "influx.lp"
# Seconds a request may take beyond influxdb.timeout (connect, then write the body).
REQUEST_SLACK = 1.0


class InfluxSink:
    """Deliver the InfluxDB buffer, in batches, retrying forever.

    Args:
        cfg: the ``[influxdb]`` section.
        buffer: the sink's disk buffer.
        metrics: counters and gauges (this sink's are ``metrics.influx``).
        dead_letters: where points rejected for good go.
        writer: the blocking writer of every URL (injectable for tests).
        writers: one blocking writer per URL of ``cfg.endpoints`` (for tests);
            default one :class:`InfluxWriter` each.
        resolver: decides each point's time from its stamp, or to hold it
            while the clock is not known right; None: every stamp is final.
    """

    def __init__(
        self,
        cfg: InfluxSection,
        buffer: DiskBuffer,
        metrics: Metrics,
        dead_letters: DeadLetterFile,
        writer: InfluxWriter | None = None,
        resolver: StampResolver | None = None,
        *,
        writers: Sequence[InfluxWriter] | None = None,
    ) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.metrics = metrics
        self.figures = metrics.influx
        self.dead_letters = dead_letters
        self.dead_letter_path = dead_letters.path
        self.resolver = resolver
        # The owners of what the status page, the metrics and tests read (and
        # tests wait on): the points wait for the clock to be right; the last
        # request succeeded (None until the first). Written only by _set_*.
        self.holding_value: AsyncValue[bool] = AsyncValue(False)
        self.healthy_value: AsyncValue[bool | None] = AsyncValue(None)
        urls = cfg.endpoints
        if writers is None:
            writers = [writer] * len(urls) if writer else [InfluxWriter(cfg, url) for url in urls]
        self._writers = dict(zip(urls, writers, strict=True))
        # influxdb.urls (or url), sticky, a backoff each: gateway.sinks.servers.
        self.servers = Rotation(urls, lambda: Backoff(cfg.backoff_initial, cfg.backoff_max))
        self.figures.servers = urls
        self.figures.server = self.server
        self.last_error = ""
        self.last_delivery: float | None = None
        self._stop = trio.Event()
        # Cancelled by stop(): waiting for a batch costs no extra tasks this way.
        self._idle = trio.CancelScope()
        self._limiter = trio.CapacityLimiter(1)
        self._deadline = Deadline(lambda: self.writer.abort())
        self._errlog = RateLimitedLog(log, interval=30.0)

    @property
    def server(self) -> str:
        """The URL written to now (or next)."""
        return self.servers.active

    @property
    def healthy(self) -> bool | None:
        """The last request succeeded; None until the first (the status page's verdict)."""
        healthy: bool | None = self.healthy_value.value  # trio_util is untyped
        return healthy

    @property
    def holding(self) -> bool:
        """The points wait for the clock to be right (not stuck)."""
        return bool(self.holding_value.value)

    def _set_healthy(self, value: bool) -> None:
        self.healthy_value.value = value
        self.figures.connected = value
        # Write-behind: records wait in memory only while they can be acked soon.
        self.buffer.set_delivering(value)

    def _set_holding(self, value: bool) -> None:
        self.holding_value.value = value
        self.figures.holding = value

    @property
    def writer(self) -> InfluxWriter:
        """The writer of the URL in use."""
        return self._writers[self.server]

    def stop(self) -> None:
        """Ask the sink to finish the request in flight and return."""
        self._stop.set()
        self._idle.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Batch and write until :meth:`stop`; a server being down is retried forever."""
        task_status.started()
        try:
            while not self._stop.is_set():
                await self._wait_for_batch()
                if self._stop.is_set():
                    break
                try:
                    await self._flush()
                except InfluxWriteError as exc:
                    await self._failed(exc)
            # Stopping: one last attempt for what is waiting, if the server is up.
            if self.buffer.count.value and self.healthy:
                try:
                    await self._flush()
                except InfluxWriteError as exc:
                    self.last_error = str(exc)
        finally:
            # Quick even with a request still stuck: the client only drops its
            # idle connections (an aborted one fails by itself).
            with trio.CancelScope(shield=True):
                for writer in set(self._writers.values()):
                    await trio.to_thread.run_sync(writer.close)

    async def _wait_for_batch(self) -> None:
        count = self.buffer.count
        batch_size = self.cfg.batch_size
        with trio.CancelScope() as self._idle:
            if self._stop.is_set():
                return
            if count.value == 0:
                await count.wait_value(lambda n: n > 0)
            if count.value >= batch_size:
                return
            # A partial batch waits at most flush_interval from now (its first point).
            self._idle.deadline = trio.current_time() + self.cfg.flush_interval
            await count.wait_value(lambda n: n >= batch_size)

    async def _failed(self, exc: InfluxWriteError) -> None:
        self._set_healthy(False)  # write-behind: write what waits in memory
        self.last_error = scrub(str(exc), (self.cfg.token,))
        failed = self.server
        # Another URL may well take what this one could not answer (a network
        # error, a 5xx); a refusal (401/403/404, 429) would be the same there.
        delay = self.servers.failed(
            switch=exc.status is None or exc.status >= 500, at_least=exc.retry_after or 0.0
        )
        self.figures.server = self.server
        level = logging.ERROR if exc.status in (401, 403, 404) else logging.WARNING
        self._errlog.log(
            level,
            str(exc.status),
            "influxdb: write to %s failed: %s; %d point(s) buffered; %s in %.1f s",
            failed,
            exc,
            self.buffer.count.value,
            "retrying" if self.server == failed else f"trying {self.server}",
            delay,
        )
        await wait_any(functools.partial(trio.sleep, delay), self._stop.wait)

    async def _flush(self) -> None:
        """Write up to one request's worth of the oldest points; ack what was accepted."""
        batch = await self.buffer.peek(MAX_REQUEST_POINTS)
        if not batch:
            return
        force = self.buffer.count.value >= self._release_at()
        points, bad = self._prepare(batch, force=force)
        if bad:
            await self._dead_letter(bad, InfluxWriteError("not a point record", retryable=False))
            return
        if not points:
            await self._hold()
            return
        if force and self.holding:
            log.warning(
                "influxdb: the points held for a right clock fill %d%% of "
                "influxdb.buffer_max_points: delivering the oldest tagged clock=unsynced",
                int(HOLD_RELEASE_SHARE * 100),
            )
        self._end_hold()
        await self._write(points)
        if self.healthy is False:  # None: the first request since start-up
            log.info("influxdb: writes to %s succeed again", self.server)
        self._set_healthy(True)
        self.servers.up()
        self.last_error = ""
        self.last_delivery = trio.current_time()

    def _release_at(self) -> int:
        return max(1, int(self.buffer.max_records * HOLD_RELEASE_SHARE))

    def _prepare(
        self, batch: Sequence[Record], *, force: bool
    ) -> tuple[list[tuple[Record, str]], list[Record]]:
        """The lines to send for the oldest records, up to the first that must wait.

        Returns ``(points, bad)``: each record with its line protocol (its
        timestamp decided by the resolver), and, if the oldest record is not a
        point at all, that record alone (for the dead letters).
        """
        points: list[tuple[Record, str]] = []
        for record in batch:
            try:
                stamp, body = split_point(record.value)
            except ValueError:
                return (points, []) if points else ([], [record])
            if self.resolver is None:
                ns, right = stamp.wall_ns, True
            else:
                decided = self.resolver.resolve(stamp, force=force)
                if decided is None:
                    break  # this one and every newer one wait for the clock
                ns, right = decided
            if not right:
                self.figures.unsynced += 1
            points.append((record, point_line(body, ns, unsynced=not right)))
        return points, []

    async def _hold(self) -> None:
        """Wait while the oldest point waits for a right clock (or until stop).

        Ends when the clock is right, when the held points reach the release
        share of the buffer, or at shutdown; warns every HOLD_LOG_INTERVAL.
        """
        assert self.resolver is not None
        clock = self.resolver.clock
        if not self.holding:
            self._set_holding(True)
            self.buffer.set_delivering(False)  # held points are written, not kept in memory
            log.warning(
                "influxdb: holding points until the clock is synchronised (%s); "
                "MQTT delivers them now",
                clock.verdict.how if clock.verdict else "not checked yet",
            )
        release_at = self._release_at()
        with trio.CancelScope() as self._idle:
            if self._stop.is_set():
                return
            with trio.move_on_after(HOLD_LOG_INTERVAL) as timer:
                await wait_any(
                    functools.partial(clock.synchronised.wait_value, True),
                    functools.partial(self.buffer.count.wait_value, lambda n: n >= release_at),
                )
            if timer.cancelled_caught:
                self._errlog.log(
                    logging.WARNING,
                    "hold",
                    "influxdb: still holding %d point(s) until the clock is synchronised (%s)",
                    self.buffer.count.value,
                    clock.verdict.how if clock.verdict else "not checked yet",
                )

    def _end_hold(self) -> None:
        if self.holding:
            self._set_holding(False)
            # The held backlog starts waiting now: it was not stuck before.
            self.figures.set_backlog(0)
            self.figures.set_backlog(self.buffer.count.value)

    async def _write(self, batch: Sequence[tuple[Record, str]]) -> None:
        """Write ``batch``; split on 413/400/422 to isolate bad points."""
        try:
            await self._request([line for _, line in batch])
        except InfluxWriteError as exc:
            # Every failed request is counted, also those that split the batch.
            self.figures.errors.inc(str(exc.status or "network"))
            if not exc.split:
                raise
            if len(batch) == 1:
                await self._dead_letter([batch[0][0]], exc, batch[0][1])
                return
            mid = len(batch) // 2
            await self._write(batch[:mid])
            await self._write(batch[mid:])
            return
        # Points dropped by the bound while in flight are counted as dropped only.
        acked = await self.buffer.ack([record for record, _ in batch])
        self.figures.note_delivery(acked, self.buffer.count.value)
        if self.buffer.count.value:
            # A drain: the next request goes once this ack is on disk (the
            # store writes it at once), so a crash repeats one request at most.
            self.buffer.hurry_acks()  # waited on: no pacing
            with trio.move_on_after(ACK_WAIT):
                await self.buffer.unsynced.wait_value(lambda n: n == 0)

    async def _request(self, lines: list[str]) -> None:
        """One write on the worker thread, bounded in total by ``influxdb.timeout``.

        The deadline runs on a real-time watchdog thread (not on the Trio
        clock, which tests replace): when it passes, the watchdog aborts the
        writer's sockets and the request fails as a network error. Cancellation
        (shutdown) abandons the thread and aborts its sockets too, so neither
        waits for a server that never finishes its answer.
        """
        done = False

        def write() -> None:
            nonlocal done
            self._deadline.arm(self.cfg.timeout + REQUEST_SLACK)
            try:
                self.writer.write(lines)
            except InfluxWriteError as exc:
                if self._deadline.expired:
                    raise InfluxWriteError(
                        f"network: no complete answer within influxdb.timeout="
                        f"{self.cfg.timeout:g} s",
                        status=None,
                        retryable=True,
                    ) from exc
                raise
            finally:
                self._deadline.disarm()
                done = True

        try:
            await trio.to_thread.run_sync(write, limiter=self._limiter, abandon_on_cancel=True)
        finally:
            if not done:
                self.writer.abort()

    async def _dead_letter(
        self, batch: Sequence[Record], exc: InfluxWriteError, line: str | None = None
    ) -> None:
        # Into the store's dead-letter queue with the ack, in one transaction
        # (the mover takes them on to the file). The line protocol as sent
        # (with its time) is what an operator can resend.
        await self.buffer.ack(batch, dead=[line] if line is not None else [r.value for r in batch])
        self.figures.note_rejected(len(batch))
        self._errlog.log(
            logging.ERROR,
            "dead",
            "influxdb: server rejected %d point(s) for good (%s); moved to %s",
            len(batch),
            exc,
            self.dead_letters.path,
        )
