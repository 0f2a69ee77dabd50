"""One buffer's ledger: where its records are, by sequence number, and nothing else.

Live records are exactly ``[head, tail)``. Rows below ``disk_head`` are
deleted on disk; rows below ``disk_tail`` are written; rows at or above
``tried_tail`` were never written, not even by a write that failed. The read
cursor is the next record :meth:`DiskBuffer.read` hands out (below the head it
counts as the head: records dropped or acknowledged are never handed out), and
the generation is bumped whenever the keys handed out before mean nothing now.

The buffer (:mod:`gateway.buffer.queue`) and the store's writer share the
ledger; each position moves only through one of the named transitions below.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WritePlan:
    """What one write takes along for a buffer: deletions below ``head``, rows up to ``tail``."""

    head: int
    tail: int


class Ledger:
    """Head, tail, what is on disk, what a write tried, the read cursor and the generation."""

    __slots__ = (
        "commits",
        "cursor",
        "disk_head",
        "disk_tail",
        "generation",
        "head",
        "tail",
        "tried_tail",
    )

    def __init__(self) -> None:
        self.head = 1
        self.tail = 1
        self.disk_head = 1
        self.disk_tail = 1
        self.tried_tail = 1
        self.cursor = 1
        self.generation = 0
        # Write-behind (the store's write_delay > 0): (tail after a commit, its
        # Trio time) for each commit with records not on disk yet, oldest first.
        self.commits: deque[tuple[int, float]] = deque()

    # -- what the positions say -----------------------------------------------------

    @property
    def waiting(self) -> int:
        """Live records, acknowledged ones excluded."""
        return self.tail - self.head

    @property
    def unwritten_from(self) -> int:
        """The first live record not on disk."""
        return max(self.disk_tail, self.head)

    @property
    def in_memory(self) -> int:
        """Live records not on disk."""
        return self.tail - self.unwritten_from

    @property
    def next(self) -> int:
        """The record the next read hands out."""
        return max(self.cursor, self.head)

    @property
    def unsynced(self) -> int:
        """Acknowledged rows that may still be on disk (a crash would deliver them again)."""
        return max(0, min(self.head, self.tried_tail) - self.disk_head)

    def deletes_pending(self) -> bool:
        """Acknowledged (or dropped) rows that may be on disk still: to delete."""
        return self.disk_head < min(self.head, self.tried_tail)

    def due(self, write_delay: float, *, delivering: bool, rewrites: bool) -> float | None:
        """Write-behind: when the oldest unwritten, unacknowledged record must be written.

        At once (-inf) when the sink does not deliver or ``rewrites`` wait; None
        when nothing is unwritten.
        """
        self.settle_commits()
        if self.unwritten_from >= self.tail and not rewrites:
            return None
        if not delivering or rewrites or not self.commits:
            return -math.inf  # now
        return self.commits[0][1] + write_delay

    # -- transitions ------------------------------------------------------------------

    def committed(self, at: float) -> None:
        """Write-behind: the records up to the tail were committed at Trio time ``at``."""
        self.commits.append((self.tail, at))

    def settle_commits(self) -> None:
        """Forget the commits whose records are all written or gone."""
        commits, start = self.commits, self.unwritten_from
        while commits and commits[0][0] <= start:
            commits.popleft()

    def add(self, n: int) -> None:
        """``n`` records were committed after the tail."""
        self.tail += n

    def drop(self, head: int) -> None:
        """The bound moved the head up to ``head`` (see DiskBuffer's drop)."""
        self.head = head

    def ack(self, newest: int) -> bool:
        """Every record below ``newest`` was delivered; False if that moves nothing."""
        head = max(self.head, min(newest, self.tail))
        moved = head != self.head
        self.head = head
        return moved

    def hand_out(self, key: int) -> None:
        """A read handed out every record up to ``key``."""
        self.cursor = max(self.cursor, key + 1)

    def rewind(self) -> None:
        """Hand out every unacknowledged record again."""
        self.cursor = self.head

    def renumber(self) -> None:
        """The keys handed out before mean nothing now: hand everything out again."""
        self.generation += 1
        self.cursor = self.head

    def settle(self) -> None:
        """Before planning a write: rows acknowledged before they were written are not on disk.

        (Write-behind, or records held while the disk refused: nothing to delete.)
        """
        if not self.deletes_pending():
            self.disk_head = max(self.disk_head, self.head)

    def plan(self, *, records: bool = True) -> WritePlan:
        """A write: deletions below the head and (``records``) every row up to the tail."""
        return WritePlan(self.head, self.tail if records else self.disk_tail)

    def written(self, plan: WritePlan) -> None:
        """The write of ``plan`` is committed."""
        self.tried_tail = max(self.tried_tail, plan.tail)
        self.disk_head = max(self.disk_head, plan.head)
        self.disk_tail = max(self.disk_tail, plan.tail)

    def adopt(self, first: int | None, last: int | None) -> int | None:
        """Opening: the file holds ``[first, last]``; what memory holds comes after it.

        Returns how far the records held in memory moved (their new keys), or
        None when the file holds none of this buffer's records.
        """
        if first is None or last is None:
            self.forget_disk()
            return None
        shift = max(0, last + 1 - self.head)
        self.commits = deque((tail + shift, at) for tail, at in self.commits)
        self.tail += shift
        self.head = self.disk_head = first
        self.disk_tail = self.tried_tail = last + 1
        return shift

    def forget_disk(self) -> None:
        """The file is gone (or empty): nothing is on disk, everything live is to write."""
        self.disk_head = self.disk_tail = self.tried_tail = self.head
