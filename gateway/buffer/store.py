"""The disk buffers: bounded, durable FIFOs of small text records in one ``diskcache.Cache``.

Every sink has a :class:`DiskBuffer`; all of them live as queues (a key prefix
each) in one :class:`BufferStore` (``<buffer_dir>/cache.db``), so that a
packet's records for *both* sinks, and the acknowledgements that arrived since
the last packet, go to disk in one ``Cache.transact()``: one fsync per packet.

A record's lifecycle (commit, peek or read, ack, the bound's drop) is told in
:mod:`gateway.buffer.queue`, where the records are in
:mod:`gateway.buffer.ledger`; this module owns the file underneath and the
transactions. Beside it: :mod:`gateway.buffer.opening` (open, or move a
corrupt file aside and salvage it with :mod:`gateway.buffer.recovery`),
:mod:`gateway.buffer.writer` (what a write takes, and the transaction),
:mod:`gateway.buffer.schedule` (when the store writes by itself),
:mod:`gateway.buffer.cachefile` the keys it holds and
:mod:`gateway.buffer.chunks` how a commit's records are one item per buffer.

Beside the records the store keeps the boots (each boot's id and clock offset,
stored once per boot), the alert engine's active alerts (written in the same
transaction as the events that changed them) and where protected records are.

Recent records are also kept in memory, so a sink that keeps up never reads the
file. When the disk refuses writes (full, read-only, gone) the records stay in
memory, still bounded, live delivery goes on, and they are written, oldest
first, by the next write that works. A corrupt file is moved aside and replaced.

All diskcache work runs on one thread of the store's (:mod:`gateway.buffer.worker`),
one call at a time: one connection, and a transaction never spans threads.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gateway.buffer import opening
from gateway.buffer.cachefile import (
    ALERT_STATE_KEY,
    BOOTS_KEY,
    DEAD_SUFFIX,
    STORE_ERRORS,
    STORE_FILE,
    _file_identity,
    integrity_check,
    store_bytes,
)
from gateway.buffer.layout import Boots, apply_state, boots_json, merge_boots
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
        self.corrupt_moved: list[Path] = []
        # Records salvaged from corrupt files, and those of their live range lost.
        self.salvaged = dict.fromkeys(sinks, 0)
        self.salvage_lost = dict.fromkeys(sinks, 0)
        self.degraded = True  # until the file is open and the last write worked
        self.recreated = 0  # times the file was deleted under us and recreated
        self.schedule = Schedule(
            self.buffers, self._state, ack_delay=ack_delay, write_delay=write_delay
        )
        self._lock = trio.Lock()
        self.cache: Any = None  # the diskcache.Cache, None while the file cannot be opened
        self._fd: int | None = None  # holds the flock that keeps imports out
        self._thread = StoreThread()
        self._identity: tuple[int, int] | None = None
        self.index = FileIndex(self.buffers)
        opened = self._thread.call(self._open_or_replace)
        if opened is not None:
            self._install(opened)
        for buf in self.buffers.values():
            buf.publish()

    @classmethod
    async def open(
        cls,
        directory: Path,
        sinks: Mapping[str, int],
        *,
        durability: Durability = "full",
        ack_delay: float = ACK_DELAY,
        write_delay: float = 0.0,
        protect: Mapping[str, str] | None = None,
        dead_letters: bool = True,
    ) -> BufferStore:
        """Open (or create, or replace a corrupt) store without blocking Trio."""
        started = trio.current_time()
        store = await trio.to_thread.run_sync(
            lambda: cls(
                directory,
                sinks,
                durability=durability,
                ack_delay=ack_delay,
                write_delay=write_delay,
                protect=protect,
                dead_letters=dead_letters,
            )
        )
        if store.cache is None:
            store.schedule.retry_later(started)
        return store

    # -- opening (on the store's thread) ----------------------------------------------

    def _open_or_replace(self) -> opening.Opened | None:
        """Open the file (moving a corrupt one aside); None if the disk refuses."""
        bounds = {name: buf.max_records for name, buf in self.buffers.items()}
        markers = {name: buf.marker for name, buf in self.buffers.items()}
        opened, replaced = opening.open_store(self.directory, self.durability, bounds, markers)
        if replaced is not None:
            found = replaced.found
            self.corrupt_moved.append(replaced.aside)
            for name in bounds:  # dead-letter queues included
                got = found.count(name) if found else 0
                self.salvaged[name] = self.salvaged.get(name, 0) + got
                lost = found.lost.get(name, 0) if found else 0
                self.salvage_lost[name] = self.salvage_lost.get(name, 0) + lost
        return opened

    def _install(self, opened: opening.Opened) -> None:
        """Take over an opened file: what it holds comes before records held in memory."""
        self.cache, self._fd = opened.cache, opened.fd
        for name, (first, last) in opened.ranges.items():
            self.buffers[name].adopt(first, last, opened.protected.get(name, []))
        self.index.take(opened.chunks, opened.heads, opened.boots, opened.alert_rows)
        self.degraded = False
        self._identity = _file_identity(self.path)

    # -- writing -------------------------------------------------------------------

    def _plan(self, *, owed_only: bool = False) -> Plan:
        """What is not yet on disk (``owed_only``: see :func:`gateway.buffer.writer.plan`)."""
        due_by = trio.current_time() if owed_only and self.write_delay > 0 else None
        return plan(self.buffers.values(), due_by=due_by, write_delay=self.write_delay)

    def _write_sync(self, plan: Plan, state: Mapping[str, str | None] | None = None) -> None:
        """One transaction: each buffer's deletions and rows, the alert state (store's thread)."""
        assert self.cache is not None
        self.index.write(self.cache, plan, state)

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
        synced = _Synced(ok=True)
        if self.write_delay > 0:
            now = trio.current_time()
            for buf, records in batches.items():
                if records:
                    buf.note_commit(now)
            if not state and all(
                buf.may_wait(records) for buf, records in batches.items() if records
            ):
                self.schedule.wake_for(now + self.write_delay)  # written when due
                await trio.lowlevel.checkpoint()
            else:
                synced = await self._sync()
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
            if self.cache is None:
                opened = None
                if self.schedule.may_retry():
                    opened = await self._thread.run(self._open_or_replace)
                    if opened is None:
                        self.schedule.retry_later()
                if opened is None:
                    self.schedule.note_pending()
                    return _Synced(ok=False)
                self._install(opened)
                log.warning("buffer store %s can be opened again", self.path)
            recreated = 0
            if self._file_was_replaced():
                await self._thread.run(self._recreate_sync)
                recreated = 1
                if self.cache is None:
                    self.schedule.retry_later()
                    self.schedule.note_pending()
                    return _Synced(ok=False, recreated=recreated)
            plan, path, state = self._plan(owed_only=owed_only), self.path, dict(self._state)
            if plan or state:
                try:
                    await self._thread.run(self._write_sync, plan, state)
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

    def _file_was_replaced(self) -> bool:
        """True when the path no longer names the file we have open (deleted, replaced).

        SQLite would go on writing to the unlinked file: no error, and the
        whole backlog gone at the next start. One stat per commit finds it.
        """
        return self.cache is not None and _file_identity(self.path) != self._identity

    def _close_file(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _recreate_sync(self) -> None:
        """Read every live record from the orphaned file, then write them to a new store."""
        cache = self.cache
        assert cache is not None
        held = 0
        for buf in self.buffers.values():
            name = buf.name
            held += buf.hold_everything(functools.partial(self.index.read, cache, name))
        self.index.forget_records()
        self._close_file()
        self.recreated += 1
        log.error(
            "buffer store %s was deleted or replaced while open; recreating it "
            "and writing the %d record(s) held",
            self.path,
            held,
        )
        opened = self._open_or_replace()
        if opened is None:
            self.degraded = True
            return
        # The new file is empty: every record is written again by the caller's
        # plan, the rest of what the old one held here.
        self.cache, self._fd = opened.cache, opened.fd
        self._identity = _file_identity(self.path)
        self.degraded = False
        self.cache.set(BOOTS_KEY, boots_json(self.index.boots))
        self.cache.set(ALERT_STATE_KEY, json.dumps(self.index.alert_rows))

    # -- boots and the alert engine's state ------------------------------------------

    def boot_offsets(self) -> Boots:
        """Every boot the store knows: key → (boot id, learned offset or None)."""
        return dict(self.index.boots)

    def _save_boot_sync(self, boot_id: str, offset_ns: int | None) -> None:
        boots = merge_boots(self.index.boots, [(boot_id, offset_ns)], keep_known=False)
        if boots == self.index.boots:
            return  # once per boot (and per offset it learns), not per record
        if self.cache is not None:
            self.cache.set(BOOTS_KEY, boots_json(boots))
        self.index.boots = boots

    async def save_boot(self, boot_id: str, offset_ns: int | None) -> bool:
        """Remember a boot (and the clock offset it learned); False if the disk refused.

        The offset lets records of this boot stamped while the clock was wrong
        be corrected after a restart, even in a later boot.
        """
        async with self._lock:
            if self.cache is None:
                return False
            try:
                await self._thread.run(self._save_boot_sync, boot_id, offset_ns)
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
        return self._thread.call(self.index.read, self.cache, buf.name, start, end)

    async def read(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """:meth:`read_sync` on the store's thread, in turn with writes."""
        async with self._lock:
            if self.cache is None:
                raise OSError(errno.EIO, "store not open")
            return await self._thread.run(self.index.read, self.cache, buf.name, start, end)

    # -- inspection and closing -------------------------------------------------------

    def disk_bytes(self) -> int:
        """Bytes of the store's files on disk."""
        return store_bytes(self.path)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` of the file ("ok" when healthy)."""
        if self.cache is None:
            return "not open"
        return integrity_check(self.path)

    def _close_sync(self) -> int:
        if self.cache is None:
            # Never opened (the disk refused): try once more, so that what is
            # held in memory is not lost if the disk is back.
            opened = self._open_or_replace()
            if opened is not None:
                self._install(opened)
        if self.cache is not None:
            plan, state = self._plan(), dict(self._state)
            if plan or state:
                try:
                    self._write_sync(plan, state)
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
        self._close_file()
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
    directory: Path,
    *,
    max_records: int,
    durability: Durability = "full",
    name: str = "buffer",
    ack_delay: float = 0.0,
    write_delay: float = 0.0,
) -> DiskBuffer:
    """A buffer with a store of its own in ``directory`` (tests, tools); close its ``store``."""
    store = await BufferStore.open(
        directory,
        {name: max_records},
        durability=durability,
        ack_delay=ack_delay,
        write_delay=write_delay,
    )
    return store.buffers[name]


_errlog = RateLimitedLog(log, interval=10.0)
