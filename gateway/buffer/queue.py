"""One sink's buffer: a bounded FIFO of text records inside a ``BufferStore``.

The lifecycle of a record:

1. ``BufferStore.commit`` gives it the next sequence number of its buffer and
   writes it in one transaction with everything else pending. Only then can a
   sink see it ("committed before delivery").
2. A sink ``peek``\\ s the oldest records, delivers them, and ``ack``\\ s them.
   Acknowledging is FIFO: it acknowledges every older record too. The ack moves
   the buffer's head in memory at once. While the buffer still holds records
   to deliver (a drain) the store deletes the rows at once, with whatever else
   the sink acknowledged meanwhile; when the ack leaves nothing waiting (field
   rate) the deletion rides with the next commit, or goes alone ``ack_delay``
   seconds later. A crash in between delivers those records again (delivery
   is at-least-once), it never loses one: :attr:`unsynced` says how many a
   crash now would deliver again, so that a sink can keep that number bounded.

   A record the server refused for good leaves with its ack into the
   buffer's *dead-letter queue* (:attr:`dead`), in the same transaction:
   it is never acknowledged out of the store before its dead letter is in it.

   A sink that keeps many records in flight ``read``\\ s instead: each read
   hands out the records after the previous one (a read cursor ahead of the
   unacknowledged head), and ``rewind`` hands the unacknowledged ones out
   again, e.g. after a dropped connection.
3. Beyond ``max_records`` the oldest records are dropped and counted, so the
   source is never blocked by a sink that is down.

A buffer may be given a *marker*: a record whose text contains it is
*protected* (alert events, :mod:`gateway.alerts`). The bound counts protected
records, but the drop skips them: the oldest unprotected records go instead,
and the protected ones among them move up to the slots just below the new
head, in their order, so that the FIFO order of everything kept is unchanged.
Only a buffer holding nothing but protected records drops protected ones.

Recent records are also kept in memory, so a sink that keeps up never reads
the file; when the disk refuses writes, live delivery goes on from memory.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from trio_util import AsyncValue

from gateway.buffer.cachefile import STORE_ERRORS, check_name

if TYPE_CHECKING:
    from gateway.buffer.store import BufferStore
    from gateway.config.sections import Durability

CACHE_RECORDS = 4096  # committed records per buffer also kept in memory
_READ_FAILED_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class Record:
    """A buffered record: its sequence number in its buffer and its text."""

    key: int
    value: str


class DiskBuffer:
    """One sink's bounded FIFO of text records inside a :class:`BufferStore`.

    The sink reads it with :meth:`peek` (or :meth:`read` and :meth:`rewind`)
    and :meth:`ack`, and waits on :attr:`count` (the number of records it may
    deliver now, acknowledged ones excluded) or :attr:`unread` (those of them
    not handed out by :meth:`read` yet). For a buffer of its own (tests,
    tools), :meth:`open` makes a store of one buffer.
    """

    def __init__(
        self, store: BufferStore, name: str, max_records: int, marker: str | None = None
    ) -> None:
        self.store = store
        self.name = name
        self.max_records = max_records
        self.marker = marker
        check_name(name)  # it prefixes the keys of the buffer's records
        self.dropped_total = 0
        self.write_errors = 0
        # Sequence numbers: live records are exactly [head, tail). Rows below
        # disk_head are deleted on disk; rows below disk_tail are written.
        self.head = 1
        self.tail = 1
        self.disk_head = 1
        self.disk_tail = 1
        # Rows at or above it were never written, not even by a write that failed.
        self._tried_tail = 1
        # The next record read() hands out; below head it counts as head
        # (records dropped or acknowledged are never handed out).
        self.cursor = 1
        # Bumped when the store renumbers the records (it adopted a file's
        # rows): records handed out before carry keys that mean nothing now.
        self.generation = 0
        # Records [cache_start, tail) in memory: every unwritten one, plus up
        # to CACHE_RECORDS written ones for the sink to read without the file.
        self._cache: deque[str] = deque()
        self._cache_start = 1
        # Wakes the sink; the value is how many records it may deliver now.
        self.count: AsyncValue[int] = AsyncValue(0)
        # Protected records in [head, tail): seq → text, and their seqs in order.
        self._protected: dict[int, str] = {}
        self._protected_seqs: deque[int] = deque()
        # Rows the drop moved protected records into, still to be written.
        self._rewrites: dict[int, str] = {}
        # Of those, the ones read() has not handed out yet.
        self.unread: AsyncValue[int] = AsyncValue(0)
        # Write-behind (the store's write_delay > 0): (tail after a commit, its
        # Trio time) for each commit with records not on disk yet, oldest first.
        self._commits: deque[tuple[int, float]] = deque()
        # Whether the sink delivers now (connected, not holding): only then may
        # records wait in memory for their acknowledgement (see set_delivering).
        self.delivering = False
        # Acknowledged records whose rows may still be on disk (see unsynced_acks).
        self.unsynced: AsyncValue[int] = AsyncValue(0)
        # Where records refused for good go with their ack (set by the store).
        self.dead: DiskBuffer | None = None

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        max_records: int,
        durability: Durability = "full",
        name: str = "buffer",
        ack_delay: float = 0.0,
        write_delay: float = 0.0,
    ) -> DiskBuffer:
        """A buffer with a store of its own in ``directory``."""
        from gateway.buffer.store import BufferStore

        store = await BufferStore.open(
            directory,
            {name: max_records},
            durability=durability,
            ack_delay=ack_delay,
            write_delay=write_delay,
        )
        return store.buffers[name]

    # -- state in memory ---------------------------------------------------------

    @property
    def in_memory(self) -> int:
        """Records held only in memory because the disk refused them."""
        return self.tail - max(self.disk_tail, self.head)

    @property
    def corrupt_moved(self) -> list[Path]:
        """Corrupt stores moved aside when this buffer's store was opened."""
        return self.store.corrupt_moved

    @property
    def unsynced_acks(self) -> int:
        """Acknowledged records a crash now would deliver again: their rows are still on disk.

        Rows acknowledged before they were written (write-behind) do not
        count: they never reach the disk. While the disk refuses writes
        nothing is durable anyway, and this is 0, so that no sink waits on it.
        """
        if self.store.degraded:
            return 0
        return max(0, min(self.head, self._tried_tail) - self.disk_head)

    def _visible_tail(self) -> int:
        # Records become deliverable once written; when the disk refuses
        # writes, live delivery goes on from memory, and with write-behind
        # they are deliverable before they are written.
        if self.store.degraded or self.store.write_delay > 0:
            return self.tail
        return max(self.disk_tail, self.head)

    def set_delivering(self, delivering: bool) -> None:
        """The sink says whether it delivers now (connected, its server answering, not holding).

        With write-behind, records wait in memory only while their sink
        delivers them: when it stops, every one of them is written at once.
        """
        if delivering != self.delivering:
            self.delivering = delivering
            if not delivering:
                self.store._wake.set()

    def _records_due(self, write_delay: float) -> float | None:
        """Write-behind: when the oldest unwritten, unacknowledged record must be written."""
        start = max(self.disk_tail, self.head)
        commits = self._commits
        while commits and commits[0][0] <= start:
            commits.popleft()
        if start >= self.tail and not self._rewrites:
            return None
        if not self.delivering or self._rewrites or not commits:
            return -math.inf  # now
        return commits[0][1] + write_delay

    def _next(self) -> int:
        return max(self.cursor, self.head)

    def _publish_count(self) -> int:
        visible = self._visible_tail()
        count = max(0, visible - self.head)
        self.count.value = count
        self.unread.value = max(0, visible - self._next())
        self.unsynced.value = self.unsynced_acks
        return count

    def _renumbered(self) -> None:
        """The store gave every record a new key: hand them all out again."""
        self.generation += 1
        self.cursor = self.head
        self._publish_count()

    def _add(self, records: Sequence[str]) -> int:
        self._cache.extend(records)
        if self.marker is not None:
            for seq, value in enumerate(records, self.tail):
                if self.marker in value:
                    self._protected[seq] = value
                    self._protected_seqs.append(seq)
        self.tail += len(records)
        dropped = max(0, self.tail - self.head - self.max_records)
        if dropped:
            self._drop(dropped)
            self.dropped_total += dropped
        self._trim()
        # The head may have moved past every written record: the count a sink
        # waits on must never promise records that peek() cannot return.
        self._publish_count()
        return dropped

    def _drop(self, n: int) -> None:
        """Drop the ``n`` oldest records, skipping protected ones (see module doc)."""
        end = self.head + n
        moved: list[str] = []
        seqs = self._protected_seqs
        # Every protected record inside the range widens it by one unprotected record.
        while seqs and seqs[0] < end:
            moved.append(self._protected.pop(seqs.popleft()))
            end += 1
        if end > self.tail:
            # Too few unprotected records: the oldest protected ones go too.
            del moved[: end - self.tail]
            end = self.tail
        self.head = end - len(moved)
        for seq, value in enumerate(moved, self.head):
            self._protected[seq] = value
            # The slot may be on disk already, or in a write under way: rewrite it.
            self._rewrites[seq] = value
            if seq >= self._cache_start:
                self._cache[seq - self._cache_start] = value
        seqs.extendleft(reversed(range(self.head, end)))
        if moved and self.cursor > self.head:
            # Protected records now sit in slots a reader may have passed: like
            # a renumbering, every unacknowledged record is handed out again.
            self.generation += 1
            self.cursor = self.head

    def _overlay(self, records: list[Record]) -> list[Record]:
        """Records read from disk, with any protected record the drop moved into their slot."""
        if not self._protected:
            return records
        return [
            Record(r.key, self._protected[r.key]) if r.key in self._protected else r
            for r in records
        ]

    def _written(self, rows: Sequence[tuple[int, str]]) -> None:
        """``rows`` reached the disk: rewrites among them are done."""
        if self._rewrites:
            for seq, value in rows:
                if self._rewrites.get(seq) == value:
                    del self._rewrites[seq]

    def _adopt_protected(self, on_disk: Sequence[tuple[int, str]], shift: int) -> None:
        """Opening: the file's protected records, then those held in memory (moved by ``shift``)."""
        held = [(seq + shift, value) for seq, value in self._protected.items()]
        self._rewrites = {seq + shift: value for seq, value in self._rewrites.items()}
        self._protected = dict([*on_disk, *held])
        self._protected_seqs = deque(sorted(self._protected))

    def _trim(self) -> None:
        # Acknowledged or dropped records are never needed again; written ones
        # beyond CACHE_RECORDS are read back from disk when needed.
        seqs = self._protected_seqs
        while seqs and seqs[0] < self.head:
            del self._protected[seqs.popleft()]
        if self._rewrites:
            self._rewrites = {k: v for k, v in self._rewrites.items() if k >= self.head}
        written = max(self.disk_tail, self.head)
        while self._commits and self._commits[0][0] <= written:
            self._commits.popleft()
        keep_from = max(self.head, min(self.disk_tail, self.tail - CACHE_RECORDS))
        for _ in range(min(keep_from - self._cache_start, len(self._cache))):
            self._cache.popleft()
        self._cache_start = max(self._cache_start, keep_from)

    def _unwritten(self) -> list[tuple[int, str]]:
        start = max(self.disk_tail, self.head)
        values = itertools.islice(self._cache, start - self._cache_start, None)
        rewrites = [(seq, v) for seq, v in self._rewrites.items() if seq < start]
        return rewrites + list(zip(itertools.count(start), values, strict=False))

    def _deletes_pending(self) -> bool:
        """Acknowledged (or dropped) rows that may be on disk still: to delete."""
        return self.disk_head < min(self.head, self._tried_tail)

    def _pending(self) -> bool:
        return (
            self._deletes_pending()
            or max(self.disk_tail, self.head) < self.tail
            or bool(self._rewrites)
        )

    def _from_cache(self, start: int, end: int) -> list[Record]:
        start = max(start, self._cache_start)
        values = itertools.islice(self._cache, start - self._cache_start, end - self._cache_start)
        return [Record(key, value) for key, value in zip(itertools.count(start), values)]

    # -- the async API used by the pipeline ---------------------------------------

    async def append(self, records: Sequence[str]) -> int:
        """Commit ``records`` in one transaction; return how many old ones were dropped.

        Never raises: when the disk refuses the write, the records wait in memory
        (bounded) and are committed, oldest first, with the next write that works.
        """
        return (await self.store.commit({self: records}))[self.name]

    async def peek(self, limit: int) -> list[Record]:
        """Return up to ``limit`` of the oldest deliverable records not yet handed out.

        That is the oldest unacknowledged ones unless :meth:`read` moved the
        cursor. Nothing moves. Always a Trio checkpoint, even when it answers
        from memory: a sink that loops on peek() can never starve the event loop.
        """
        await trio.lowlevel.checkpoint()
        start = self._next()
        end = min(self._visible_tail(), start + limit)
        out: list[Record] = []
        if start < min(self._cache_start, end):
            try:
                out = self._overlay(await self.store.read(self, start, min(self._cache_start, end)))
            except STORE_ERRORS as exc:
                # Never skip over records that cannot be read: try again later.
                self.store.failed(f"{self.name}: read", exc, [self])
                await trio.sleep(_READ_FAILED_PAUSE)
                return []
            if len(out) < min(self._cache_start, end) - start:
                return out  # rows were dropped meanwhile; the next peek goes on
            start = out[-1].key + 1 if out else start
        # The state may have moved while we read: take the rest as it is now.
        end = min(self._visible_tail(), self._next() + limit)
        if start >= self._cache_start:
            out += self._from_cache(max(start, self._next()), end)[: limit - len(out)]
        return out

    async def read(self, limit: int) -> list[Record]:
        """Hand out up to ``limit`` records after those handed out already (FIFO).

        Like :meth:`peek`, but the cursor moves past them: the next read goes
        on from there while these are still in flight. They stay in the
        buffer until acknowledged; :meth:`rewind` hands them out again.
        """
        generation = self.generation
        records = await self.peek(limit)
        if self.generation != generation:
            return []  # renumbered meanwhile: these keys mean nothing now
        if records:
            self.cursor = max(self.cursor, records[-1].key + 1)
            self._publish_count()
        return records

    def rewind(self) -> None:
        """Hand out every unacknowledged record again, oldest first (a new connection)."""
        self.cursor = self.head
        self._publish_count()

    async def ack(
        self, records: Sequence[Record], *, dead: Sequence[str] = (), more: bool = False
    ) -> int:
        """Acknowledge ``records`` and every older one (delivery is FIFO).

        The head moves at once. The rows leave the disk at once while records
        are still waiting to be handed out (a drain: a crash then delivers
        again only what the sink has in flight and what this write has not
        reached yet), otherwise with the next commit or within the store's
        ``ack_delay``: at field rate a sink acknowledges a packet's records as
        they land, and the ones still in flight are not a drain. Rows never
        written (write-behind) have nothing to delete: no write at all.
        Records already dropped are ignored. One call for many records costs
        what one for a single record does: a sink with many in flight
        acknowledges all that landed in one call.

        Args:
            records: the records delivered (or refused for good).
            dead: dead letters for records among them that a server refused for
                good: they go to :attr:`dead` in the same transaction as the
                ack, so a crash can deliver them again but never lose them.
            more: the sink holds records it read but has not sent yet (a
                read-ahead): a drain too, though none waits to be handed out.

        Returns:
            How many of ``records`` this acknowledged: those dropped (by the
            bound) while they were in flight are not, so a sink never counts a
            record as delivered that the buffer already counted as dropped.

        Raises:
            ValueError: ``dead`` was given to a buffer without a dead-letter queue.
        """
        if dead:
            if self.dead is None:
                raise ValueError(f"buffer {self.name} has no dead-letter queue")
            self.dead._add(dead)
        if not records:
            if dead:
                await self.store.acknowledged(soon=True)
            return 0
        newest = max(r.key for r in records) + 1
        if newest <= self.head and not dead:
            await trio.lowlevel.checkpoint()
            return 0
        acked = sum(1 for r in records if r.key >= self.head)
        self.head = max(self.head, min(newest, self.tail))
        self._trim()
        self._publish_count()
        draining = (self.unread.value > 0 or more) and self._deletes_pending()
        await self.store.acknowledged(soon=bool(draining or dead))
        return acked

    def hurry_acks(self) -> None:
        """The sink needs the room: write the waiting acknowledgements now, not paced."""
        if self._deletes_pending():
            self.store.hurry()

    async def oldest_stamp(self) -> str | None:
        """The stamp of the oldest record waiting (its text up to the first space), or None.

        From memory when it is there, else one item read from the store. It
        is what "oldest waiting" is computed from, whether or not anything is
        being sent.
        """
        if self.head >= self.tail:
            return None
        if self.head >= self._cache_start:
            value = self._cache[self.head - self._cache_start]
        else:
            try:
                rows = await self.store.read(self, self.head, self.head + 1)
            except STORE_ERRORS:
                return None
            if not rows:
                return None
            value = self._overlay(rows)[0].value
        return value.split(" ", 1)[0]

    # -- inspection (blocking; for the CLI and tests) -------------------------------

    def stats(self) -> dict[str, int]:
        """Records waiting, the store's bytes on disk, and the bound."""
        return {
            "records": self.tail - self.head,
            "bytes": self.store.disk_bytes(),
            "max_records": self.max_records,
        }

    def iter_all(self) -> list[Record]:
        """Every waiting record, oldest first."""
        out: list[Record] = []
        if self.store.cache is not None and self.head < min(self.disk_tail, self._cache_start):
            out = self._overlay(
                self.store.read_sync(self, self.head, min(self.disk_tail, self._cache_start))
            )
        start = out[-1].key + 1 if out else self.head
        return out + self._from_cache(start, self.tail)

    def oldest(self) -> Record | None:
        """The oldest waiting record, or None."""
        if self.store.cache is not None and self.head < min(self.disk_tail, self._cache_start):
            rows = self._overlay(self.store.read_sync(self, self.head, self.head + 1))
            if rows:
                return rows[0]
        rows = self._from_cache(self.head, self.head + 1)
        return rows[0] if rows else None

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` of the store's file ("ok" when healthy)."""
        return self.store.integrity_check()

    def close(self) -> int:
        """Close the store (a buffer opened with :meth:`open` owns one); see BufferStore.close."""
        return self.store.close()
