"""One sink's buffer: a bounded FIFO of text records inside a ``BufferStore``.

The lifecycle of a record:

1. ``BufferStore.commit`` gives it the next sequence number of its buffer and
   writes it in one transaction with everything else pending. Only then can a
   sink see it ("committed before delivery").
2. A sink ``peek``\\ s the oldest records, delivers them, and ``ack``\\ s them.
   Acknowledging is FIFO: it acknowledges every older record too. The ack moves
   the buffer's head in memory at once; the rows are deleted with the next
   commit, or ``ack_delay`` seconds later when no commit comes. A crash in
   between delivers those records again (delivery is at-least-once), it never
   loses one.

   A sink that keeps many records in flight ``read``\\ s instead: each read
   hands out the records after the previous one (a read cursor ahead of the
   unacknowledged head), and ``rewind`` hands the unacknowledged ones out
   again, e.g. after a dropped connection.
3. Beyond ``max_records`` the oldest records are dropped and counted, so the
   source is never blocked by a sink that is down.

Recent records are also kept in memory, so a sink that keeps up never reads
SQLite; when the disk refuses writes, live delivery goes on from memory.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from trio_util import AsyncValue

if TYPE_CHECKING:
    from gateway.buffer.store import BufferStore, Durability

CACHE_RECORDS = 4096  # committed records per buffer also kept in memory
_READ_FAILED_PAUSE = 1.0


def table_name(name: str) -> str:
    """The SQLite table of buffer ``name`` (an ASCII identifier, checked)."""
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"invalid buffer name {name!r}")
    return name


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
    tools), :meth:`open` makes a one-table store.
    """

    def __init__(self, store: BufferStore, name: str, max_records: int) -> None:
        self.store = store
        self.name = name
        self.max_records = max_records
        self.table = table_name(name)
        self.dropped_total = 0
        self.write_errors = 0
        # Sequence numbers: live records are exactly [head, tail). Rows below
        # disk_head are deleted on disk; rows below disk_tail are written.
        self.head = 1
        self.tail = 1
        self.disk_head = 1
        self.disk_tail = 1
        # The next record read() hands out; below head it counts as head
        # (records dropped or acknowledged are never handed out).
        self.cursor = 1
        # Bumped when the store renumbers the records (it adopted a file's
        # rows): records handed out before carry keys that mean nothing now.
        self.generation = 0
        # Records [cache_start, tail) in memory: every unwritten one, plus up
        # to CACHE_RECORDS written ones for the sink to read without SQLite.
        self._cache: deque[str] = deque()
        self._cache_start = 1
        # Wakes the sink; the value is how many records it may deliver now.
        self.count: AsyncValue[int] = AsyncValue(0)
        # Of those, the ones read() has not handed out yet.
        self.unread: AsyncValue[int] = AsyncValue(0)

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        max_records: int,
        durability: Durability = "full",
        name: str = "buffer",
        ack_delay: float = 0.0,
    ) -> DiskBuffer:
        """A buffer with a store of its own in ``directory`` (acks written at once)."""
        from gateway.buffer.store import BufferStore

        store = await BufferStore.open(
            directory, {name: max_records}, durability=durability, ack_delay=ack_delay
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

    def _visible_tail(self) -> int:
        # Records become deliverable once written; when the disk refuses
        # writes, live delivery goes on from memory.
        return self.tail if self.store.degraded else max(self.disk_tail, self.head)

    def _next(self) -> int:
        return max(self.cursor, self.head)

    def _publish_count(self) -> int:
        visible = self._visible_tail()
        count = max(0, visible - self.head)
        self.count.value = count
        self.unread.value = max(0, visible - self._next())
        return count

    def _renumbered(self) -> None:
        """The store gave every record a new key: hand them all out again."""
        self.generation += 1
        self.cursor = self.head
        self._publish_count()

    def _add(self, records: Sequence[str]) -> int:
        self._cache.extend(records)
        self.tail += len(records)
        dropped = max(0, self.tail - self.head - self.max_records)
        if dropped:
            self.head += dropped
            self.dropped_total += dropped
        self._trim()
        # The head may have moved past every written record: the count a sink
        # waits on must never promise records that peek() cannot return.
        self._publish_count()
        return dropped

    def _trim(self) -> None:
        # Acknowledged or dropped records are never needed again; written ones
        # beyond CACHE_RECORDS are read back from disk when needed.
        keep_from = max(self.head, min(self.disk_tail, self.tail - CACHE_RECORDS))
        for _ in range(min(keep_from - self._cache_start, len(self._cache))):
            self._cache.popleft()
        self._cache_start = max(self._cache_start, keep_from)

    def _unwritten(self) -> list[tuple[int, str]]:
        start = max(self.disk_tail, self.head)
        values = itertools.islice(self._cache, start - self._cache_start, None)
        return list(zip(itertools.count(start), values, strict=False))

    def _pending(self) -> bool:
        return self.disk_head < self.head or max(self.disk_tail, self.head) < self.tail

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
                out = await self.store.read(self, start, min(self._cache_start, end))
            except (sqlite3.Error, OSError) as exc:
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

    async def ack(self, records: Sequence[Record]) -> None:
        """Acknowledge ``records`` and every older one (delivery is FIFO).

        The head moves at once; the rows leave the disk with the next commit or
        within the store's ``ack_delay``. Records already dropped are ignored.
        One call for many records costs what one for a single record does: a
        sink with many in flight acknowledges all that landed in one call.
        """
        if not records:
            return
        newest = max(r.key for r in records) + 1
        if newest <= self.head:
            return
        self.head = min(newest, self.tail)
        self._trim()
        self._publish_count()
        await self.store.acknowledged()

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
        if self.store.con is not None and self.head < min(self.disk_tail, self._cache_start):
            out = self.store.read_sync(self, self.head, min(self.disk_tail, self._cache_start))
        start = out[-1].key + 1 if out else self.head
        return out + self._from_cache(start, self.tail)

    def oldest(self) -> Record | None:
        """The oldest waiting record, or None."""
        if self.store.con is not None and self.head < min(self.disk_tail, self._cache_start):
            rows = self.store.read_sync(self, self.head, self.head + 1)
            if rows:
                return rows[0]
        rows = self._from_cache(self.head, self.head + 1)
        return rows[0] if rows else None

    def integrity_check(self) -> str:
        """SQLite ``PRAGMA integrity_check`` of the store ("ok" when healthy)."""
        return self.store.integrity_check()

    def close(self) -> int:
        """Close the store (a buffer opened with :meth:`open` owns one); see BufferStore.close."""
        return self.store.close()
