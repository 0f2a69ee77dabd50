"""When the store writes by itself: acks, write-behind records and retries, on one clock.

Commits write at once. What no commit takes along is owed by
:meth:`Schedule.run`: acknowledgements within ``ack_delay`` (or
``DRAIN_ACK_DELAY`` during a drain, at once when a sink hurries them),
write-behind records not acknowledged within ``write_delay``, and writes the
disk refused, retried every ``REOPEN_INTERVAL``. Every time here is Trio's.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

import trio

from gateway.buffer.queue import DiskBuffer

# Seconds an acknowledgement that left its buffer caught up may wait to ride
# with the next commit (at field rate: one write per packet, not two). Acks
# during a drain are written at once (DiskBuffer.ack).
ACK_DELAY = 1.0
# Seconds acks during a drain may wait for others to share their write: a
# write per PUBACK burst would keep the store's one thread busy with fsyncs
# (and the drain's reads waiting behind them). A sink that needs the room
# sooner asks for it (DiskBuffer.hurry_acks).
DRAIN_ACK_DELAY = 0.05
REOPEN_INTERVAL = 5.0  # seconds between attempts to write to a disk that refused


class Schedule:
    """The store's clock: what is owed, and when :meth:`run` writes it.

    Args:
        buffers: the store's buffers (asked what they have pending and when due).
        state: the store's alert-state changes not written yet (shared, never rebound).
        ack_delay: see :class:`~gateway.buffer.store.BufferStore`.
        write_delay: see :class:`~gateway.buffer.store.BufferStore`.
    """

    def __init__(
        self,
        buffers: Mapping[str, DiskBuffer],
        state: Mapping[str, str | None],
        *,
        ack_delay: float,
        write_delay: float,
    ) -> None:
        self.buffers = buffers
        self.state = state
        self.ack_delay = ack_delay
        self.write_delay = write_delay
        self.pending_since: float | None = None
        # An ack during a drain (or a dead letter) asked for a write at once.
        self.soon_at: float | None = None
        # No attempt to reach a disk that refused before this.
        self.retry_due = 0.0
        self._wake = trio.Event()
        # When run() wakes by itself (inf: only when woken; -inf: awake): a
        # commit or an ack wakes it only for a write due sooner than that.
        self._asleep_until = -math.inf

    def has_pending(self) -> bool:
        """Acks, state or (without write-behind) records waiting for a write."""
        if self.write_delay > 0:
            # Records have due times of their own (next_due).
            return bool(self.state) or any(
                buf.ledger.deletes_pending() or buf.rewrites_pending()
                for buf in self.buffers.values()
            )
        return bool(self.state) or any(buf.pending() for buf in self.buffers.values())

    def next_due(self, degraded: bool) -> float | None:
        """The Trio time of the next write :meth:`run` owes; None: nothing owed."""
        dues = []
        if self.soon_at is not None:
            dues.append(self.soon_at)
        if self.pending_since is not None:
            if self.has_pending() or degraded:
                dues.append(self.pending_since + self.ack_delay)
            else:
                self.pending_since = None
        if self.write_delay > 0:
            for buf in self.buffers.values():
                due = buf.records_due(self.write_delay)
                if due is not None:
                    dues.append(due)
        return min(dues, default=None)

    def note_pending(self) -> None:
        """Something waits for a write: owed within ``ack_delay`` (or sooner, if asked)."""
        if self.pending_since is None:
            self.pending_since = trio.current_time()
        due = self.pending_since + self.ack_delay
        self.wake_for(due if self.soon_at is None else min(due, self.soon_at))

    def wake_for(self, due: float) -> None:
        """Wake :meth:`run` for a write due at ``due``, unless it wakes by then anyway."""
        if due < self._asleep_until:
            self._wake.set()

    def wake(self) -> None:
        """Wake :meth:`run` to look again (a sink stopped delivering)."""
        self._wake.set()

    def soon(self) -> None:
        """Acks during a drain: written within ``DRAIN_ACK_DELAY``, with any arriving meanwhile."""
        at = trio.current_time() + DRAIN_ACK_DELAY
        self.soon_at = at if self.soon_at is None else min(self.soon_at, at)
        self.note_pending()

    def hurry(self) -> None:
        """Write the pending acknowledgements at once (a sink needs the room)."""
        if self.soon_at != -math.inf:
            self.soon_at = -math.inf
            self.note_pending()

    def writing(self) -> None:
        """A write begins: it takes every ack so far along."""
        self.soon_at = None

    def wrote(self) -> None:
        """A write worked: what is still pending is owed from now."""
        self.pending_since = trio.current_time() if self.has_pending() else None

    def retry_later(self, now: float | None = None) -> None:
        """The disk refused: no new attempt before ``REOPEN_INTERVAL`` from ``now``."""
        self.retry_due = (trio.current_time() if now is None else now) + REOPEN_INTERVAL

    def may_retry(self) -> bool:
        """Whether a disk that refused may be tried again now."""
        return trio.current_time() >= self.retry_due

    async def run(self, sync: Callable[[], Awaitable[bool]], degraded: Callable[[], bool]) -> None:
        """Call ``sync`` whenever a write is owed; never returns."""
        while True:
            due = self.next_due(degraded())
            if due is not None and degraded():
                due = max(due, self.retry_due)
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
            if not await sync():
                self.pending_since = trio.current_time()
