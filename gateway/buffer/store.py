"""The disk buffers' file: one ``diskcache.Cache`` holding every buffer, one transaction per commit.

Every sink has a :class:`DiskBuffer` (:mod:`gateway.buffer.queue`, its
positions in a :class:`~gateway.buffer.ledger.Ledger`); all of them live as
queues (a key prefix each) in one :class:`BufferStore` (``<buffer_dir>/cache.db``),
so that a packet's records for *both* sinks, and the acknowledgements that
arrived since the last packet, go to disk in one ``Cache.transact()``: one
fsync per packet. Beside the records the store keeps the boots (each boot's id
and clock offset), the alert engine's active alerts (written in the same
transaction as the events that changed them) and where protected records are.

This module owns the transactions; beside it are opening (:mod:`.opening`,
salvage in :mod:`.recovery`), the write itself (:mod:`.writer`) and when the
store writes by itself (:mod:`.schedule`). When the disk refuses writes (full,
read-only, gone) records stay in memory, bounded, live delivery goes on, and
the next write that works takes them, oldest first.

All diskcache work runs on one thread of the store's (:mod:`gateway.buffer.worker`),
one call at a time: one connection, and a transaction never spans threads.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, Unpack

import trio

from gateway.buffer import opening
from gateway.buffer.cachefile import (
    DEAD_SUFFIX,
    STORE_ERRORS,
    STORE_FILE,
)
from gateway.buffer.layout import Boots, apply_state
from gateway.buffer.queue import CommitResult, DiskBuffer, Record
from gateway.buffer.schedule import ACK_DELAY, DRAIN_ACK_DELAY, REOPEN_INTERVAL, Schedule
from gateway.buffer.worker import StoreThread
from gateway.buffer.writer import FileIndex, Plan, plan
from gateway.config.sections import Durability
from gateway.metrics import RateLimitedLog

__all__ = ["ACK_DELAY", "DRAIN_ACK_DELAY", "REOPEN_INTERVAL", "BufferStore", "open_buffer"]

log = logging.getLogger(__name__)

DEAD_LETTER_BOUND = 10_000  # records refused for good, kept until the dead-letter file takes them


@dataclass
class _Synced:
    """What one write did: whether it worked, the buffers it failed for, a recreation."""

    ok: bool
    errors: dict[str, int] = field(default_factory=dict)
    recreated: int = 0


class StoreOptions(TypedDict, total=False):
    """:class:`BufferStore`'s keyword arguments, for :meth:`BufferStore.open`."""

    durability: Durability
    ack_delay: float
    write_delay: float
    protect: Mapping[str, str] | None
    dead_letters: bool


class BufferStore:
    """The ``diskcache.Cache`` that holds every sink's buffer; one transaction per commit.

    Args:
        directory: the buffer directory (created 0700 if missing).
        sinks: buffer name → its bound (``max_records``).
        durability: "full" (synchronous=FULL: survives power loss) or "normal".
        ack_delay: how long acknowledgements may wait for the next commit
            before :meth:`run` writes them alone; 0 writes each one at once.
        write_delay: write-behind: how long a record may live only in memory
            while its sink delivers it (see :meth:`commit`); 0 writes every
            record before it can be delivered.
        protect: buffer name → marker; records containing it are never
            dropped by the bound while unprotected ones can go instead.
        dead_letters: give every buffer a dead-letter queue of its own
            (``<name>_dead``, bounded by ``DEAD_LETTER_BOUND``): records a
            server refused for good wait there, durable, until the
            dead-letter file takes them (:meth:`DiskBuffer.ack`).

    The constructor blocks; in Trio use :meth:`open`. Run :meth:`run` in the
    nursery when ``ack_delay`` or ``write_delay`` > 0.
    """

    def __init__(
        self,
        directory: Path,
        sinks: Mapping[str, int],
        *,
        durability: Durability = "full",
        ack_delay: float = ACK_DELAY,
        write_delay: float = 0.0,
        protect: Mapping[str, str] | None = None,
        dead_letters: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE
        self.durability = durability
        self.ack_delay = ack_delay
        self.write_delay = write_delay
        markers = protect or {}
        self.buffers = {
            name: DiskBuffer(self, name, bound, markers.get(name)) for name, bound in sinks.items()
        }
        if dead_letters:
            for name, buf in list(self.buffers.items()):
                buf.dead = DiskBuffer(self, name + DEAD_SUFFIX, DEAD_LETTER_BOUND)
                self.buffers[buf.dead.name] = buf.dead
        # alert_state changes to write with the next transaction (None: delete).
        self._state: dict[str, str | None] = {}
        self.file = opening.StoreFile(
            self.directory,
            durability,
            {name: buf.max_records for name, buf in self.buffers.items()},
            {name: buf.marker for name, buf in self.buffers.items()},
            sinks,
        )
        # The file's own, shared: corrupt files moved aside, and what was salvaged.
        self.corrupt_moved = self.file.corrupt_moved
        self.salvaged, self.salvage_lost = self.file.salvaged, self.file.salvage_lost
        self.degraded = True  # until the file is open and the last write worked
        self.recreated = 0  # times the file was deleted under us and recreated
        self.schedule = Schedule(
            self.buffers, self._state, ack_delay=ack_delay, write_delay=write_delay
        )
        self._lock = trio.Lock()
        self._thread = StoreThread()
        self.index = FileIndex(self.buffers)
        opened = self._thread.call(self.file.open)
        if opened is not None:
            self._install(opened)
        for buf in self.buffers.values():
            buf.publish()

    @classmethod
    async def open(
        cls, directory: Path, sinks: Mapping[str, int], **options: Unpack[StoreOptions]
    ) -> BufferStore:
        """Open (or create, or replace a corrupt) store without blocking Trio."""
        started = trio.current_time()
        store = await trio.to_thread.run_sync(functools.partial(cls, directory, sinks, **options))
        if store.file.cache is None:
            store.schedule.retry_later(started)
        return store

    # -- opening and writing ---------------------------------------------------------

    def _install(self, opened: opening.Opened) -> None:
        """Take over an opened file: what it holds comes before records held in memory."""
        self.file.install(opened)
        for name, (first, last) in opened.ranges.items():
            self.buffers[name].adopt(first, last, opened.protected.get(name, []))
        self.index.take(opened.chunks, opened.heads, opened.boots, opened.alert_rows)
        self.degraded = False

    def _plan(self, *, owed_only: bool = False) -> Plan:
        """What is not yet on disk (``owed_only``: see :func:`gateway.buffer.writer.plan`)."""
        due_by = trio.current_time() if owed_only and self.write_delay > 0 else None
        return plan(self.buffers.values(), due_by=due_by, write_delay=self.write_delay)

    def _wrote(self, plan: Plan, state: Mapping[str, str | None]) -> None:
        """After a write that worked, in Trio's thread (commits change the same state)."""
        for step in plan:
            step.buf.rows_written(step.rows)
        for key, value in state.items():
            # A newer change of the same key waits for the next write.
            if key in self._state and self._state[key] == value:
                del self._state[key]

    async def commit(
        self,
        batches: Mapping[DiskBuffer, Sequence[str]],
        *,
        state: Mapping[str, str | None] | None = None,
    ) -> CommitResult:
        """Commit each buffer's records, with pending acks, in one transaction.

        ``state`` (key → text, or None to delete) goes to the ``alert_state``
        document in that same transaction: the alert engine's record of what is
        active changes together with the events that changed it.

        With write-behind (``write_delay`` > 0) the records are deliverable at
        once and written only when one of them is not acknowledged within
        ``write_delay`` (:meth:`run`), then with the rest of their buffer's,
        oldest first (another buffer's records wait for their own acks).
        They are written at once when a sink of theirs is not delivering,
        when they hold protected records (alert events) or when ``state``
        changes. Acknowledged in time, they never touch the disk.

        Returns how many old records each buffer dropped to stay in its bound,
        the writes the disk refused and whether the file had to be recreated.
        Never raises: records the disk refuses wait in memory (see module doc).
        """
        dropped = {buf.name: buf.add(records) for buf, records in batches.items() if records}
        if state:
            self._state.update(state)
        waits = False
        if self.write_delay > 0:
            now = trio.current_time()
            for buf, records in batches.items():
                if records:
                    buf.ledger.committed(now)
            waits = not state and all(buf.may_wait(r) for buf, r in batches.items() if r)
        if waits:
            self.schedule.wake_for(now + self.write_delay)  # written when due
            await trio.lowlevel.checkpoint()
            synced = _Synced(ok=True)
        else:
            synced = await self._sync()
        for buf in batches:
            dropped.setdefault(buf.name, 0)
            buf.publish()  # also when the disk refused: deliver from memory
        return CommitResult(dropped, synced.errors, synced.recreated, self.degraded)

    async def sync(self, *, owed_only: bool = False) -> bool:
        """Write everything pending (records and acks); False if the disk refused.

        ``owed_only``: with write-behind, records only once they are due (see :meth:`_plan`).
        """
        return (await self._sync(owed_only=owed_only)).ok

    async def _sync(self, *, owed_only: bool = False) -> _Synced:
        async with self._lock:
            # This write takes every ack so far along (or, when the disk
            # refuses, the retry interval paces them: never a busy loop).
            self.schedule.writing()
            if self.file.cache is None:
                opened = None
                if self.schedule.may_retry():
                    opened = await self._thread.run(self.file.open)
                    if opened is None:
                        self.schedule.retry_later()
                if opened is None:
                    self.schedule.note_pending()
                    return _Synced(ok=False)
                self._install(opened)
                log.warning("buffer store %s can be opened again", self.path)
            recreated = 0
            if self.file.was_replaced():
                await self._thread.run(self._recreate_sync)
                recreated = 1
                if self.file.cache is None:
                    self.schedule.retry_later()
                    self.schedule.note_pending()
                    return _Synced(ok=False, recreated=recreated)
            plan, path, state = self._plan(owed_only=owed_only), self.path, dict(self._state)
            if plan or state:
                try:
                    await self._thread.run(self.index.write, self.file.cache, plan, state)
                except STORE_ERRORS as exc:
                    self.failed("write", exc, [step.buf for step in plan], degrade=True)
                    return _Synced(False, {step.buf.name: 1 for step in plan}, recreated)
                self._wrote(plan, state)
                if self.degraded:
                    log.warning("buffer store %s: records held in memory are on disk now", path)
            self.degraded = False
            self.schedule.wrote()
            for buf in self.buffers.values():
                buf.trim()
                buf.publish()
            return _Synced(ok=True, recreated=recreated)

    def failed(
        self, what: str, exc: BaseException, buffers: Iterable[DiskBuffer], *, degrade: bool = False
    ) -> None:
        """Count and log a refused disk operation; records stay in memory."""
        if degrade:
            self.degraded = True
        self.schedule.retry_later()
        held = 0
        for buf in buffers:
            buf.write_errors += 1
            held += buf.in_memory
            buf.publish()
        _errlog.log(
            logging.ERROR,
            what,
            "buffer store %s: %s failed (%s); %d record(s) held in memory",
            self.path,
            what,
            exc,
            held,
        )
        self.schedule.note_pending()

    async def acknowledged(self, *, soon: bool = False) -> None:
        """Called by a buffer whose head moved: write at once (``soon``) or within ``ack_delay``.

        ``soon`` does not wait for the write: :meth:`run` makes it within
        ``DRAIN_ACK_DELAY``, with every ack that arrives meanwhile, so a sink's
        loop never waits on an fsync and a drain writes a few times a
        second, not once per ack (:meth:`hurry` when a sink needs it sooner).
        """
        if self.ack_delay <= 0:
            await self.sync()
            return
        if soon:
            self.schedule.soon()
        elif self.schedule.has_pending():
            self.schedule.note_pending()
        else:
            # Acknowledged before they were written (write-behind): nothing
            # on disk to delete, nothing owed, no reason to wake run().
            await trio.lowlevel.checkpoint()

    def hurry(self) -> None:
        """Write the pending acknowledgements at once (a sink needs the room)."""
        self.schedule.hurry()

    def wake(self) -> None:
        """Have :meth:`run` look again at what is owed (a sink stopped delivering)."""
        self.schedule.wake()

    async def run(self) -> None:
        """Write what is owed: acks no commit took along within ``ack_delay``,
        write-behind records not acknowledged within ``write_delay``, and
        writes the disk refused (retried every ``REOPEN_INTERVAL``)."""
        await self.schedule.run(lambda: self.sync(owed_only=True), lambda: self.degraded)

    # -- the file deleted under us -------------------------------------------------

    def _recreate_sync(self) -> None:
        """Read every live record from the orphaned file, then write them to a new store."""
        cache = self.file.cache
        assert cache is not None
        held = sum(
            buf.hold_everything(functools.partial(self.index.read, cache, buf.name))
            for buf in self.buffers.values()
        )
        self.index.forget_records()
        self.recreated += 1
        log.error(
            "buffer store %s was deleted or replaced while open; recreating it "
            "and writing the %d record(s) held",
            self.path,
            held,
        )
        # The new file is empty: every record is written again by the caller's
        # plan, the rest of what the old one held here.
        self.degraded = not self.file.reopen()
        if not self.degraded:
            self.index.write_documents(self.file.cache)

    # -- boots and the alert engine's state ------------------------------------------

    def boot_offsets(self) -> Boots:
        """Every boot the store knows: key → (boot id, learned offset or None)."""
        return dict(self.index.boots)

    async def save_boot(self, boot_id: str, offset_ns: int | None) -> bool:
        """Remember a boot (and the clock offset it learned); False if the disk refused.

        The offset lets records of this boot stamped while the clock was wrong
        be corrected after a restart, even in a later boot.
        """
        async with self._lock:
            if self.file.cache is None:
                return False
            try:
                await self._thread.run(self.index.save_boot, self.file.cache, boot_id, offset_ns)
            except STORE_ERRORS as exc:
                _errlog.log(logging.ERROR, "boot", "buffer store %s: %s", self.path, exc)
                return False
            return True

    def alert_state(self) -> dict[str, str]:
        """The alert engine's rows, with changes not yet written applied."""
        return apply_state(self.index.alert_rows, self._state)

    # -- reading -------------------------------------------------------------------

    def read_sync(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """Records ``start <= seq < end`` of ``buf`` from disk (blocking)."""
        return self._thread.call(self.index.read, self.file.cache, buf.name, start, end)

    async def read(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """:meth:`read_sync` on the store's thread, in turn with writes."""
        async with self._lock:
            if self.file.cache is None:
                raise OSError(errno.EIO, "store not open")
            return await self._thread.run(self.index.read, self.file.cache, buf.name, start, end)

    # -- closing -------------------------------------------------------------------

    def _close_sync(self) -> int:
        if self.file.cache is None:
            # Never opened (the disk refused): try once more, so that what is
            # held in memory is not lost if the disk is back.
            opened = self.file.open()
            if opened is not None:
                self._install(opened)
        if self.file.cache is not None:
            plan, state = self._plan(), dict(self._state)
            if plan or state:
                try:
                    self.index.write(self.file.cache, plan, state)
                    self._wrote(plan, state)
                except STORE_ERRORS as exc:
                    log.error("buffer store %s: final write failed (%s)", self.path, exc)
        lost = sum(buf.in_memory for buf in self.buffers.values())
        if lost:
            log.error(
                "buffer store %s: %d record(s) never reached the disk and are lost",
                self.path,
                lost,
            )
        self.file.close()
        return lost

    def close(self) -> int:
        """Write pending acks and records, then close; committed records stay on disk.

        Returns:
            How many records never reached the disk (lost with this process);
            they are logged as an error.
        """
        try:
            return self._thread.call(self._close_sync)
        finally:
            self._thread.close()


async def open_buffer(
    directory: Path, *, max_records: int, name: str = "buffer", **options: Unpack[StoreOptions]
) -> DiskBuffer:
    """A buffer with a store of its own in ``directory`` (tests, tools); close its ``store``.

    Unlike a :class:`BufferStore`'s, its acknowledgements are written at once
    unless ``ack_delay`` says otherwise.
    """
    options.setdefault("ack_delay", 0.0)
    store = await BufferStore.open(directory, {name: max_records}, **options)
    return store.buffers[name]


_errlog = RateLimitedLog(log, interval=10.0)
