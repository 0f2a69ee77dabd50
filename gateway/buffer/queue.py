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

Where the records are is the buffer's :class:`~gateway.buffer.ledger.Ledger`; this
module holds the records themselves and the sink's API, and asks its :class:`Store`.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio
from trio_util import AsyncValue

from gateway.buffer.cachefile import STORE_ERRORS, check_name
from gateway.buffer.ledger import Ledger

CACHE_RECORDS = 4096  # committed records per buffer also kept in memory
_READ_FAILED_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class Record:
    """A buffered record: its sequence number in its buffer and its text."""

    key: int
    value: str


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What one :meth:`Store.commit` did, for the figures a caller keeps.

    Attributes:
        dropped: buffer name → old records dropped to stay in the bound
            (every buffer of the commit, 0 included).
        write_errors: buffer name → writes the disk refused in this commit.
        recreated: the store's file was found deleted under us and recreated.
        degraded: the disk refuses writes: records wait in memory.
    """

    dropped: dict[str, int]
    write_errors: dict[str, int] = field(default_factory=dict)
    recreated: int = 0
    degraded: bool = False


class Store(Protocol):
    """What a :class:`DiskBuffer` needs from the store it lives in (a ``BufferStore``)."""

    degraded: bool
    write_delay: float

    async def commit(
        self,
        batches: Mapping[DiskBuffer, Sequence[str]],
        *,
        state: Mapping[str, str | None] | None = None,
    ) -> CommitResult: ...

    async def read(self, buf: DiskBuffer, start: int, end: int) -> list[Record]: ...

    def failed(
        self, what: str, exc: BaseException, buffers: Iterable[DiskBuffer], *, degrade: bool = False
    ) -> None: ...

    async def acknowledged(self, *, soon: bool = False) -> None: ...

    def hurry(self) -> None: ...

    def wake(self) -> None: ...


class DiskBuffer:
    """One sink's bounded FIFO of text records inside a store.

    The sink reads it with :meth:`peek` (or :meth:`read` and :meth:`rewind`)
    and :meth:`ack`, and waits on :attr:`count` (the number of records it may
    deliver now, acknowledged ones excluded) or :attr:`unread` (those of them
    not handed out by :meth:`read` yet). For a buffer of its own (tests,
    tools), :func:`gateway.buffer.store.open_buffer` makes a store of one buffer.
    The store calls the methods under "the store's side" to write, open and recreate.
    """

    def __init__(
        self, store: Store, name: str, max_records: int, marker: str | None = None
    ) -> None:
        self.store = store
        self.name = name
        self.max_records = max_records
        self.marker = marker
        check_name(name)  # it prefixes the keys of the buffer's records
        self.dropped_total = 0
        self.write_errors = 0
        self.ledger = Ledger()
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
        # Whether the sink delivers now (connected, not holding): only then may
        # records wait in memory for their acknowledgement (see set_delivering).
        self.delivering = False
        # Acknowledged records whose rows may still be on disk (see unsynced_acks).
        self.unsynced: AsyncValue[int] = AsyncValue(0)
        # Where records refused for good go with their ack (set by the store).
        self.dead: DiskBuffer | None = None

    # -- state in memory ---------------------------------------------------------

    @property
    def head(self) -> int:
        """The oldest live record's sequence number."""
        return self.ledger.head

    @property
    def tail(self) -> int:
        """The sequence number the next committed record gets."""
        return self.ledger.tail

    @property
    def generation(self) -> int:
        """Bumped when the keys of records handed out before mean nothing now."""
        return self.ledger.generation

    @property
    def in_memory(self) -> int:
        """Records held only in memory because the disk refused them."""
        return self.ledger.in_memory

    @property
    def unsynced_acks(self) -> int:
        """Acknowledged records a crash now would deliver again: their rows are still on disk.

        Rows acknowledged before they were written (write-behind) do not
        count: they never reach the disk. While the disk refuses writes
        nothing is durable anyway, and this is 0, so that no sink waits on it.
        """
        if self.store.degraded:
            return 0
        return self.ledger.unsynced

    def _visible_tail(self) -> int:
        # Records become deliverable once written; when the disk refuses
        # writes, live delivery goes on from memory, and with write-behind
        # they are deliverable before they are written.
        if self.store.degraded or self.store.write_delay > 0:
            return self.ledger.tail
        return self.ledger.unwritten_from

    def set_delivering(self, delivering: bool) -> None:
        """The sink says whether it delivers now (connected, its server answering, not holding).

        With write-behind, records wait in memory only while their sink
        delivers them: when it stops, every one of them is written at once.
        """
        if delivering != self.delivering:
            self.delivering = delivering
            if not delivering:
                self.store.wake()

    def publish(self) -> int:
        """Tell the sink what it may deliver (:attr:`count`, :attr:`unread`, :attr:`unsynced`)."""
        ledger = self.ledger
        visible = self._visible_tail()
        count = max(0, visible - ledger.head)
        self.count.value = count
        self.unread.value = max(0, visible - ledger.next)
        self.unsynced.value = self.unsynced_acks
        return count

    def renumbered(self) -> None:
        """The store gave every record a new key: hand them all out again."""
        self.ledger.renumber()
        self.publish()

    # -- the store's side: commits, writes, opening -------------------------------

    def add(self, records: Sequence[str]) -> int:
        """Take committed records after the tail; return how many old ones the bound dropped."""
        tail = self.ledger.tail
        self._cache.extend(records)
        if self.marker is not None:
            for seq, value in enumerate(records, tail):
                if self.marker in value:
                    self._protected[seq] = value
                    self._protected_seqs.append(seq)
        self.ledger.add(len(records))
        dropped = max(0, self.ledger.waiting - self.max_records)
        if dropped:
            self._drop(dropped)
            self.dropped_total += dropped
        self.trim()
        # The head may have moved past every written record: the count a sink
        # waits on must never promise records that peek() cannot return.
        self.publish()
        return dropped

    def _drop(self, n: int) -> None:
        """Drop the ``n`` oldest records, skipping protected ones (see module doc)."""
        ledger = self.ledger
        end = ledger.head + n
        moved: list[str] = []
        seqs = self._protected_seqs
        # Every protected record inside the range widens it by one unprotected record.
        while seqs and seqs[0] < end:
            moved.append(self._protected.pop(seqs.popleft()))
            end += 1
        if end > ledger.tail:
            # Too few unprotected records: the oldest protected ones go too.
            del moved[: end - ledger.tail]
            end = ledger.tail
        ledger.drop(end - len(moved))
        for seq, value in enumerate(moved, ledger.head):
            self._protected[seq] = value
            # The slot may be on disk already, or in a write under way: rewrite it.
            self._rewrites[seq] = value
            if seq >= self._cache_start:
                self._cache[seq - self._cache_start] = value
        seqs.extendleft(reversed(range(ledger.head, end)))
        if moved and ledger.cursor > ledger.head:
            # Protected records now sit in slots a reader may have passed: like
            # a renumbering, every unacknowledged record is handed out again.
            ledger.renumber()

    def may_wait(self, records: Sequence[str]) -> bool:
        """Write-behind: whether ``records`` may wait in memory (delivered now, none protected)."""
        return self.delivering and not (self.marker and any(self.marker in r for r in records))

    def records_due(self, write_delay: float) -> float | None:
        """Write-behind: when the oldest unwritten, unacknowledged record must be written."""
        return self.ledger.due(
            write_delay, delivering=self.delivering, rewrites=bool(self._rewrites)
        )

    def _overlay(self, records: list[Record]) -> list[Record]:
        """Records read from disk, with any protected record the drop moved into their slot."""
        if not self._protected:
            return records
        return [
            Record(r.key, self._protected[r.key]) if r.key in self._protected else r
            for r in records
        ]

    def rows_written(self, rows: Sequence[tuple[int, str]]) -> None:
        """``rows`` reached the disk: rewrites among them are done."""
        if self._rewrites:
            for seq, value in rows:
                if self._rewrites.get(seq) == value:
                    del self._rewrites[seq]

    def adopt(
        self, first: int | None, last: int | None, protected: Sequence[tuple[int, str]]
    ) -> None:
        """Opening: the file's live records ``[first, last]``; those held in memory come after."""
        shift = self.ledger.adopt(first, last)
        if shift is None:
            return
        self._cache_start += shift
        held = [(seq + shift, value) for seq, value in self._protected.items()]
        self._rewrites = {seq + shift: value for seq, value in self._rewrites.items()}
        self._protected = dict([*protected, *held])
        self._protected_seqs = deque(sorted(self._protected))
        self.renumbered()  # what a sink has in flight carries the old keys

    def hold_everything(self, read: Callable[[int, int], list[Record]]) -> int:
        """The file is gone: hold every live record in memory (``read``: older rows); count them."""
        head = self.ledger.head
        if head < self._cache_start:
            # The rows the memory cache no longer holds: still readable from
            # the deleted file through the open connection.
            older = read(head, self._cache_start)
            self._cache.extendleft(reversed([r.value for r in older]))
            self._cache_start = head
        self.ledger.forget_disk()
        return self.ledger.waiting

    def trim(self) -> None:
        """Forget what is no longer needed in memory."""
        # Acknowledged or dropped records are never needed again; written ones
        # beyond CACHE_RECORDS are read back from disk when needed.
        ledger = self.ledger
        seqs = self._protected_seqs
        while seqs and seqs[0] < ledger.head:
            del self._protected[seqs.popleft()]
        if self._rewrites:
            self._rewrites = {k: v for k, v in self._rewrites.items() if k >= ledger.head}
        ledger.settle_commits()
        keep_from = max(ledger.head, min(ledger.disk_tail, ledger.tail - CACHE_RECORDS))
        for _ in range(min(keep_from - self._cache_start, len(self._cache))):
            self._cache.popleft()
        self._cache_start = max(self._cache_start, keep_from)

    def unwritten(self) -> list[tuple[int, str]]:
        """(seq, text) of every row a write must take: rewrites, then records not on disk."""
        start = self.ledger.unwritten_from
        values = itertools.islice(self._cache, start - self._cache_start, None)
        rewrites = [(seq, v) for seq, v in self._rewrites.items() if seq < start]
        return rewrites + list(zip(itertools.count(start), values, strict=False))

    def rewrites_pending(self) -> bool:
        """Protected records the drop moved whose new slots are not written yet."""
        return bool(self._rewrites)

    def pending(self) -> bool:
        """Anything a write would take: deletions, records or rewrites."""
        ledger = self.ledger
        return ledger.deletes_pending() or ledger.in_memory > 0 or bool(self._rewrites)

    def _from_cache(self, start: int, end: int) -> list[Record]:
        start = max(start, self._cache_start)
        values = itertools.islice(self._cache, start - self._cache_start, end - self._cache_start)
        return [Record(key, value) for key, value in zip(itertools.count(start), values)]

    # -- the async API used by the pipeline and the sinks -------------------------

    async def append(self, records: Sequence[str]) -> int:
        """Commit ``records`` in one transaction; return how many old ones were dropped.

        Never raises: when the disk refuses the write, the records wait in memory
        (bounded) and are committed, oldest first, with the next write that works.
        """
        return (await self.store.commit({self: records})).dropped[self.name]

    async def peek(self, limit: int) -> list[Record]:
        """Return up to ``limit`` of the oldest deliverable records not yet handed out.

        That is the oldest unacknowledged ones unless :meth:`read` moved the
        cursor. Nothing moves. Always a Trio checkpoint, even when it answers
        from memory: a sink that loops on peek() can never starve the event loop.
        """
        await trio.lowlevel.checkpoint()
        ledger = self.ledger
        start = ledger.next
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
        end = min(self._visible_tail(), ledger.next + limit)
        if start >= self._cache_start:
            out += self._from_cache(max(start, ledger.next), end)[: limit - len(out)]
        return out

    async def read(self, limit: int) -> list[Record]:
        """Hand out up to ``limit`` records after those handed out already (FIFO).

        Like :meth:`peek`, but the cursor moves past them: the next read goes
        on from there while these are still in flight. They stay in the
        buffer until acknowledged; :meth:`rewind` hands them out again.
        """
        generation = self.ledger.generation
        records = await self.peek(limit)
        if self.ledger.generation != generation:
            return []  # renumbered meanwhile: these keys mean nothing now
        if records:
            self.ledger.hand_out(records[-1].key)
            self.publish()
        return records

    def rewind(self) -> None:
        """Hand out every unacknowledged record again, oldest first (a new connection)."""
        self.ledger.rewind()
        self.publish()

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
            self.dead.add(dead)
        if not records:
            if dead:
                await self.store.acknowledged(soon=True)
            return 0
        ledger = self.ledger
        newest = max(r.key for r in records) + 1
        if newest <= ledger.head and not dead:
            await trio.lowlevel.checkpoint()
            return 0
        acked = sum(1 for r in records if r.key >= ledger.head)
        ledger.ack(newest)
        self.trim()
        self.publish()
        draining = (self.unread.value > 0 or more) and ledger.deletes_pending()
        await self.store.acknowledged(soon=bool(draining or dead))
        return acked

    def hurry_acks(self) -> None:
        """The sink needs the room: write the waiting acknowledgements now, not paced."""
        if self.ledger.deletes_pending():
            self.store.hurry()

    async def oldest_stamp(self) -> str | None:
        """The stamp of the oldest record waiting (its text up to the first space), or None.

        From memory when it is there, else one item read from the store. It
        is what "oldest waiting" is computed from, whether or not anything is
        being sent.
        """
        head = self.ledger.head
        if head >= self.ledger.tail:
            return None
        if head >= self._cache_start:
            value = self._cache[head - self._cache_start]
        else:
            try:
                rows = await self.store.read(self, head, head + 1)
            except STORE_ERRORS:
                return None
            if not rows:
                return None
            value = self._overlay(rows)[0].value
        return value.split(" ", 1)[0]
