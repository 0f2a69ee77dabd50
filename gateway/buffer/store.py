"""The disk buffers: bounded, durable FIFOs of small text records in one ``diskcache.Cache``.

Every sink has a :class:`DiskBuffer`; all of them live as queues (a key prefix
each) in one :class:`BufferStore` (``<buffer_dir>/cache.db``), so that a
packet's records for *both* sinks, and the acknowledgements that arrived since
the last packet, go to disk in one ``Cache.transact()``: one fsync per packet.

A record's lifecycle (commit, peek or read, ack, the bound's drop) is told in
:mod:`gateway.buffer.queue`; this module is the file underneath,
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
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from gateway.buffer import recovery
from gateway.buffer.cachefile import (
    ALERT_STATE_KEY,
    BOOTS_KEY,
    DEAD_SUFFIX,
    HEADS_KEY,
    SEQ_DIGITS,
    STORE_ERRORS,
    STORE_FILE,
    CorruptItem,
    _create,
    _file_identity,
    _is_corruption,
    hold,
    integrity_check,
    load_json,
    open_cache,
    record_key,
    store_bytes,
)
from gateway.buffer.chunks import MAX_ITEM, Chunks, decode, encode
from gateway.buffer.queue import DiskBuffer, Record
from gateway.buffer.worker import StoreThread
from gateway.clock import boot_key
from gateway.config.sections import Durability
from gateway.metrics import RateLimitedLog

log = logging.getLogger(__name__)

Boots = dict[str, tuple[str, int | None]]  # boot key → (boot id, learned offset or None)


class _Opened:
    """What opening the file found (on the store's thread, installed in Trio's)."""

    def __init__(self, cache: Any, fd: int) -> None:
        self.cache = cache
        self.fd = fd
        self.ranges: dict[str, tuple[int | None, int | None]] = {}
        self.protected: dict[str, list[tuple[int, str]]] = {}
        self.chunks: dict[str, Chunks] = {}
        self.heads: dict[str, int] = {}
        self.boots: Boots = {}
        self.alert_rows: dict[str, str] = {}


# (buffer, delete below, written up to, rows, protected seqs kept)
_Plan = list[tuple[DiskBuffer, int, int, list[tuple[int, str]], list[int]]]
# Seconds an acknowledgement that left its buffer caught up may wait to ride
# with the next commit (at field rate: one write per packet, not two). Acks
# during a drain are written at once (DiskBuffer.ack).
ACK_DELAY = 1.0
# Seconds acks during a drain may wait for others to share their write: a
# write per PUBACK burst would keep the store's one thread busy with fsyncs
# (and the drain's reads waiting behind them). A sink that needs the room
# sooner asks for it (DiskBuffer.hurry_acks).
DRAIN_ACK_DELAY = 0.05
DEAD_LETTER_BOUND = 10_000  # records refused for good, kept until the dead-letter file takes them
REOPEN_INTERVAL = 5.0  # seconds between attempts to write to a disk that refused


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
        self._lock = trio.Lock()
        self._pending_since: float | None = None
        # An ack during a drain (or a dead letter) asked for a write at once.
        self._soon_at: float | None = None
        self._retry_at = 0.0
        self._wake = trio.Event()
        # When run() wakes by itself (inf: only when woken; -inf: awake): a
        # commit or an ack wakes it only for a write due sooner than that.
        self._asleep_until = -math.inf
        self._retry_due = 0.0
        self.cache: Any = None  # the diskcache.Cache, None while the file cannot be opened
        self._fd: int | None = None  # holds the flock that keeps imports out
        self._thread = StoreThread()
        self._identity: tuple[int, int] | None = None
        # What the file holds besides records, as last written.
        self._boots: Boots = {}
        self._alert_rows: dict[str, str] = {}
        # Each buffer's items on disk, and the heads document as written.
        self._chunks: dict[str, Chunks] = {name: Chunks() for name in self.buffers}
        self._heads: dict[str, int] = {}
        self._decoded: tuple[str, int, list[str]] | None = None  # the last item read
        self.recreated = 0  # times the file was deleted under us and recreated
        opened = self._thread.call(self._open_or_replace)
        if opened is not None:
            self._install(opened)
        for buf in self.buffers.values():
            buf._publish_count()

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
        return await trio.to_thread.run_sync(
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

    # -- opening (on the store's thread) ----------------------------------------------

    def _open_file(self) -> _Opened:
        if not self.path.exists():
            _create(self.path)
        try:
            fd = hold(self.path, exclusive=False)
        except BlockingIOError:
            raise OSError(errno.EBUSY, "locked by `gateway buffer import`") from None
        try:
            cache = open_cache(self.directory, self.durability, list(self.buffers))
        except BaseException:
            os.close(fd)
            raise
        return _Opened(cache, fd)

    def _open_or_replace(self) -> _Opened | None:
        """Open the file (moving a corrupt one aside); None if the disk refuses."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                return self._open_read()
            except STORE_ERRORS as exc:
                if not _is_corruption(exc):
                    raise
                self._replace_corrupt(exc)
                return self._open_read()
        except STORE_ERRORS as exc:
            self._retry_at = time.monotonic() + REOPEN_INTERVAL
            _errlog.log(
                logging.ERROR,
                "open",
                "buffer store %s cannot be opened (%s): keeping records IN MEMORY ONLY "
                "(bounded) until it can; they are lost if the process dies",
                self.path,
                exc,
            )
            return None

    def _read_state(self, opened: _Opened) -> None:
        cache = opened.cache
        opened.heads = {k: int(v) for k, v in load_json(cache.get(HEADS_KEY), {}).items()}
        opened.chunks = {name: Chunks() for name in self.buffers}
        protected: dict[str, list[tuple[int, str]]] = {name: [] for name in self.buffers}
        # One pass over the keys (diskcache lists no key range): each item once.
        for key in cache.iterkeys():
            if not isinstance(key, str):
                continue
            name, _, digits = key.rpartition("-")
            buf = self.buffers.get(name)
            if buf is None or len(digits) != SEQ_DIGITS or not digits.isdigit():
                continue
            start = int(digits)
            values = decode(cache.get(key))
            if not values:
                continue
            opened.chunks[name].add(start, len(values))
            if buf.marker:
                # The drop must know where protected records are.
                head = opened.heads.get(name, 0)
                protected[name] += [
                    (seq, v)
                    for seq, v in enumerate(values, start)
                    if buf.marker in v and seq >= head
                ]
        for name, chunks in opened.chunks.items():
            first = max(chunks.starts[0], opened.heads.get(name, 0)) if chunks else None
            last = chunks.end - 1 if chunks else None
            if first is None or last is None or first > last:
                first = last = None
            opened.ranges[name] = (first, last)
            opened.protected[name] = protected[name]
        opened.boots = {
            key: (str(boot_id), offset)
            for key, (boot_id, offset) in load_json(cache.get(BOOTS_KEY), {}).items()
        }
        opened.alert_rows = dict(load_json(cache.get(ALERT_STATE_KEY), {}))

    def _install(self, opened: _Opened) -> None:
        """Take over an opened file: what it holds comes before records held in memory."""
        self.cache, self._fd = opened.cache, opened.fd
        for name, (first, last) in opened.ranges.items():
            self._adopt(self.buffers[name], first, last, opened.protected.get(name, []))
        self._chunks = opened.chunks
        self._heads = opened.heads
        self._decoded = None
        self._boots = opened.boots
        self._alert_rows = opened.alert_rows
        self.degraded = False
        self._identity = _file_identity(self.path)

    def _open_read(self) -> _Opened:
        opened = self._open_file()
        try:
            self._read_state(opened)  # every item is read: damage quick_check missed shows here
        except BaseException as exc:
            opened.cache.close()
            os.close(opened.fd)
            if isinstance(exc, ValueError):  # an item or a document that does not decode
                raise CorruptItem(str(exc)) from exc
            raise
        return opened

    def _replace_corrupt(self, exc: BaseException) -> None:
        """Move a corrupt file aside; the new one holds what could be salvaged from it."""
        bounds = {name: buf.max_records for name, buf in self.buffers.items()}
        aside, found = recovery.replace(self.path, exc, bounds, self.durability)
        self.corrupt_moved.append(aside)
        for name in bounds:  # dead-letter queues included
            self.salvaged[name] = self.salvaged.get(name, 0) + (found.count(name) if found else 0)
            lost = found.lost.get(name, 0) if found else 0
            self.salvage_lost[name] = self.salvage_lost.get(name, 0) + lost

    @staticmethod
    def _adopt(
        buf: DiskBuffer, first: int | None, last: int | None, protected: list[tuple[int, str]]
    ) -> None:
        """Take over what the file holds; records kept in memory come after it."""
        if last is None:
            buf.disk_head = buf.disk_tail = buf._tried_tail = buf.head
            return
        assert first is not None
        shift = max(0, last + 1 - buf.head)
        buf.tail += shift
        buf._cache_start += shift
        buf.head = buf.disk_head = first
        buf.disk_tail = last + 1
        buf._tried_tail = last + 1
        buf._commits = deque((tail + shift, at) for tail, at in buf._commits)
        buf._adopt_protected(protected, shift)
        buf._renumbered()  # what a sink has in flight carries the old keys

    # -- writing -------------------------------------------------------------------

    def _plan(self, *, owed_only: bool = False) -> _Plan:
        """What is not yet on disk: (buffer, delete below, written up to, rows, protected).

        ``owed_only`` (:meth:`run`'s writes): with write-behind, a buffer's
        records only once they are due (:meth:`DiskBuffer._records_due`);
        its deletions always. A write made for acks alone must not write
        records that would be acknowledged in time: each of them would cost
        a deletion, written alone, and that write would take the next
        records along, and so on, once a second for ever.
        """
        for buf in self.buffers.values():
            if not buf._deletes_pending():
                # Acknowledged before they were written (write-behind, or held
                # while the disk refused): nothing on disk to delete.
                buf.disk_head = max(buf.disk_head, buf.head)
        now = trio.current_time() if owed_only and self.write_delay > 0 else None
        plan: _Plan = []
        for buf in self.buffers.values():
            if not buf._pending():
                continue
            due = buf._records_due(self.write_delay) if now is not None else None
            if now is not None and (due is None or due > now):
                if buf._deletes_pending():
                    plan.append((buf, buf.head, buf.disk_tail, [], []))
                continue
            plan.append(
                (
                    buf,
                    buf.head,
                    buf.tail,
                    buf._unwritten(),
                    sorted(s for s in buf._protected if buf.head <= s < buf.tail),
                )
            )
        return plan

    def _write_sync(self, plan: _Plan, state: Mapping[str, str | None] | None = None) -> None:
        """One transaction: each buffer's deletions and rows, the alert state (store's thread)."""
        cache = self.cache
        assert cache is not None
        rows_after = dict(self._alert_rows)
        for key, value in (state or {}).items():
            if value is None:
                rows_after.pop(key, None)
            else:
                rows_after[key] = value
        heads = dict(self._heads)
        # The index changes only once the transaction is committed.
        removed: list[tuple[str, int]] = []
        added: list[tuple[str, int, int]] = []
        with cache.transact():
            for buf, head, _tail, rows, _ in plan:
                name, chunks = buf.name, self._chunks[buf.name]
                gone = chunks.below(head)  # every record in them acknowledged
                for start in gone:
                    cache.delete(record_key(name, start))
                removed += [(name, start) for start in gone]
                end = chunks.end
                # Rows inside items on disk: protected records moved into their slots.
                rewrites: dict[int, dict[int, str]] = {}
                new: list[tuple[int, str]] = []
                for seq, value in rows:
                    item = chunks.containing(seq) if seq < end else None
                    if item is None:
                        new.append((seq, value))
                    else:
                        rewrites.setdefault(item, {})[seq - item] = value
                for item, slots in rewrites.items():
                    values = decode(cache.get(record_key(name, item)))
                    for offset, value in slots.items():
                        if offset < len(values):
                            values[offset] = value
                    cache.set(record_key(name, item), encode(values))
                for start, values in _runs(sorted(new)):
                    cache.set(record_key(name, start), encode(values))
                    added.append((name, start, len(values)))
                live = [s for s in chunks.starts if s not in gone] + [
                    a[1] for a in added if a[0] == name
                ]
                if live and min(live) < head:
                    heads[name] = head  # the first live record is inside an item
                else:
                    heads.pop(name, None)
            if heads != self._heads:
                cache.set(HEADS_KEY, json.dumps(heads))
            if state:
                cache.set(ALERT_STATE_KEY, json.dumps(rows_after))
        for name, start in removed:
            self._chunks[name].remove(start)
        for name, start, count in added:
            self._chunks[name].add(start, count)
        self._heads = heads
        self._decoded = None
        self._alert_rows = rows_after
        for buf, head, tail, _, _ in plan:
            buf._tried_tail = max(buf._tried_tail, tail)
            buf.disk_head = max(buf.disk_head, head)
            buf.disk_tail = max(buf.disk_tail, tail)

    def _wrote(self, plan: _Plan, state: Mapping[str, str | None]) -> None:
        """After a write that worked, in Trio's thread (commits change the same state)."""
        for buf, _, _, rows, _ in plan:
            buf._written(rows)
        for key, value in state.items():
            # A newer change of the same key waits for the next write.
            if key in self._state and self._state[key] == value:
                del self._state[key]

    async def commit(
        self,
        batches: Mapping[DiskBuffer, Sequence[str]],
        *,
        state: Mapping[str, str | None] | None = None,
    ) -> dict[str, int]:
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

        Returns how many old records each buffer dropped to stay in its bound.
        Never raises: records the disk refuses wait in memory (see module doc).
        """
        dropped = {buf.name: buf._add(records) for buf, records in batches.items() if records}
        if state:
            self._state.update(state)
        if self.write_delay > 0:
            now = trio.current_time()
            for buf, records in batches.items():
                if records:
                    buf._commits.append((buf.tail, now))
            if not state and all(
                buf.delivering and not (buf.marker and any(buf.marker in r for r in records))
                for buf, records in batches.items()
                if records
            ):
                for buf in batches:
                    dropped.setdefault(buf.name, 0)
                    buf._publish_count()
                self._wake_for(trio.current_time() + self.write_delay)  # written when due
                await trio.lowlevel.checkpoint()
                return dropped
        await self.sync()
        for buf in batches:
            dropped.setdefault(buf.name, 0)
            buf._publish_count()  # also when the disk refused: deliver from memory
        return dropped

    async def sync(self, *, owed_only: bool = False) -> bool:
        """Write everything pending (records and acks); False if the disk refused.

        ``owed_only``: with write-behind, records only once they are due (see :meth:`_plan`).
        """
        async with self._lock:
            # This write takes every ack so far along (or, when the disk
            # refuses, the retry interval paces them: never a busy loop).
            self._soon_at = None
            if self.cache is None:
                opened = None
                if time.monotonic() >= self._retry_at:
                    opened = await self._thread.run(self._open_or_replace)
                if opened is None:
                    self._note_pending()
                    return False
                self._install(opened)
                log.warning("buffer store %s can be opened again", self.path)
            if self._file_was_replaced():
                await self._thread.run(self._recreate_sync)
            plan, path, state = self._plan(owed_only=owed_only), self.path, dict(self._state)
            if plan or state:
                try:
                    await self._thread.run(self._write_sync, plan, state)
                except STORE_ERRORS as exc:
                    self.failed("write", exc, [p[0] for p in plan], degrade=True)
                    return False
                self._wrote(plan, state)
                if self.degraded:
                    log.warning("buffer store %s: records held in memory are on disk now", path)
            self.degraded = False
            self._pending_since = trio.current_time() if self._has_pending() else None
            for buf in self.buffers.values():
                buf._trim()
                buf._publish_count()
            return True

    def failed(
        self, what: str, exc: BaseException, buffers: Iterable[DiskBuffer], *, degrade: bool = False
    ) -> None:
        """Count and log a refused disk operation; records stay in memory."""
        if degrade:
            self.degraded = True
        self._retry_due = trio.current_time() + REOPEN_INTERVAL
        held = 0
        for buf in buffers:
            buf.write_errors += 1
            held += buf.in_memory
            buf._publish_count()
        _errlog.log(
            logging.ERROR,
            what,
            "buffer store %s: %s failed (%s); %d record(s) held in memory",
            self.path,
            what,
            exc,
            held,
        )
        self._note_pending()

    def _has_pending(self) -> bool:
        """Acks, state or (without write-behind) records waiting for a write."""
        if self.write_delay > 0:
            # Records have due times of their own (_next_due).
            return bool(self._state) or any(
                buf._deletes_pending() or bool(buf._rewrites) for buf in self.buffers.values()
            )
        return bool(self._state) or any(buf._pending() for buf in self.buffers.values())

    def _next_due(self) -> float | None:
        """The Trio time of the next write :meth:`run` owes; None: nothing owed."""
        dues = []
        if self._soon_at is not None:
            dues.append(self._soon_at)
        if self._pending_since is not None:
            if self._has_pending() or self.degraded:
                dues.append(self._pending_since + self.ack_delay)
            else:
                self._pending_since = None
        if self.write_delay > 0:
            for buf in self.buffers.values():
                due = buf._records_due(self.write_delay)
                if due is not None:
                    dues.append(due)
        return min(dues, default=None)

    def _note_pending(self) -> None:
        if self._pending_since is None:
            self._pending_since = trio.current_time()
        due = self._pending_since + self.ack_delay
        self._wake_for(due if self._soon_at is None else min(due, self._soon_at))

    def _wake_for(self, due: float) -> None:
        """Wake :meth:`run` for a write due at ``due``, unless it wakes by then anyway."""
        if due < self._asleep_until:
            self._wake.set()

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
        if not soon and not self._has_pending():
            # Acknowledged before they were written (write-behind): nothing
            # on disk to delete, nothing owed, no reason to wake run().
            await trio.lowlevel.checkpoint()
            return
        if soon:
            at = trio.current_time() + DRAIN_ACK_DELAY
            self._soon_at = at if self._soon_at is None else min(self._soon_at, at)
        self._note_pending()

    def hurry(self) -> None:
        """Write the pending acknowledgements at once (a sink needs the room)."""
        if self._soon_at != -math.inf:
            self._soon_at = -math.inf
            self._note_pending()

    async def run(self) -> None:
        """Write what is owed: acks no commit took along within ``ack_delay``,
        write-behind records not acknowledged within ``write_delay``, and
        writes the disk refused (retried every ``REOPEN_INTERVAL``)."""
        while True:
            due = self._next_due()
            if due is not None and self.degraded:
                due = max(due, self._retry_due)
            if due is None or trio.current_time() < due:
                # A commit, an ack or a sink that stops delivering may bring it forward.
                self._asleep_until = math.inf if due is None else due
                try:
                    with trio.move_on_at(self._asleep_until):
                        await self._wake.wait()
                finally:
                    self._asleep_until = -math.inf
                if self._wake.is_set():
                    self._wake = trio.Event()
                continue
            if not await self.sync(owed_only=True):
                self._pending_since = trio.current_time()

    # -- boots and their clock offsets ------------------------------------------------

    def boot_offsets(self) -> Boots:
        """Every boot the store knows: key → (boot id, learned offset or None)."""
        return dict(self._boots)

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
        assert self.cache is not None
        for buf in self.buffers.values():
            if buf.head < buf._cache_start:
                # The rows the memory cache no longer holds: still readable from
                # the deleted file through the open connection.
                older = self.read_sync(buf, buf.head, buf._cache_start)
                buf._cache.extendleft(reversed([r.value for r in older]))
                buf._cache_start = buf.head
            buf.disk_head = buf.disk_tail = buf._tried_tail = buf.head
            self._chunks[buf.name] = Chunks()
        self._heads = {}
        self._decoded = None
        held = sum(buf.tail - buf.head for buf in self.buffers.values())
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
        self.cache.set(BOOTS_KEY, _boots_json(self._boots))
        self.cache.set(ALERT_STATE_KEY, json.dumps(self._alert_rows))

    def _save_boot_sync(self, boot_id: str, offset_ns: int | None) -> None:
        key = boot_key(boot_id)
        known = self._boots.get(key)
        if offset_ns is None and known is not None and known[0] == boot_id:
            offset_ns = known[1]  # a boot keeps the offset it learned
        if known == (boot_id, offset_ns):
            return  # once per boot (and per offset it learns), not per record
        boots = {**self._boots, key: (boot_id, offset_ns)}
        if self.cache is not None:
            self.cache.set(BOOTS_KEY, _boots_json(boots))
        self._boots = boots

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

    # -- the alert engine's state ---------------------------------------------------------

    def alert_state(self) -> dict[str, str]:
        """The alert engine's rows, with changes not yet written applied."""
        rows = dict(self._alert_rows)
        for key, value in self._state.items():
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = value
        return rows

    # -- reading -------------------------------------------------------------------

    def _read_rows(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        cache = self.cache
        assert cache is not None
        out = []
        for item in list(self._chunks[buf.name].overlapping(start, end)):
            # A sink reads on where its last read ended: often in the same item.
            if self._decoded is not None and self._decoded[:2] == (buf.name, item):
                values = self._decoded[2]
            else:
                values = decode(cache.get(record_key(buf.name, item)))
                self._decoded = (buf.name, item, values)
            for seq in range(max(start, item), min(end, item + len(values))):
                out.append(Record(seq, values[seq - item]))
        return out

    def read_sync(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """Records ``start <= seq < end`` of ``buf`` from disk (blocking)."""
        return self._thread.call(self._read_rows, buf, start, end)

    async def read(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """:meth:`read_sync` on the store's thread, in turn with writes."""
        async with self._lock:
            if self.cache is None:
                raise OSError(errno.EIO, "store not open")
            return await self._thread.run(self._read_rows, buf, start, end)

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


def _runs(rows: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Sorted rows as items: runs of consecutive sequence numbers, MAX_ITEM at most."""
    runs: list[tuple[int, list[str]]] = []
    for seq, value in rows:
        if runs and runs[-1][0] + len(runs[-1][1]) == seq and len(runs[-1][1]) < MAX_ITEM:
            runs[-1][1].append(value)
        else:
            runs.append((seq, [value]))
    return runs


def _boots_json(boots: Boots) -> str:
    return json.dumps({key: [boot_id, offset] for key, (boot_id, offset) in boots.items()})


_errlog = RateLimitedLog(log, interval=10.0)
