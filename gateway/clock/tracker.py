"""Stamps that survive the wall clock being wrong, and their right time once it is known.

Readings stamped with ``time.time_ns()`` while the wall clock is wrong (see
:mod:`gateway.clock.kernel`) carry that wrong time into the buffers and, after
replay, into InfluxDB. :class:`ClockTracker` stamps each reading with the
best-known wall time *and* its boottime and boot (:class:`Stamp`), learns
``offset = wall - boottime`` while the clock is right, and from it gives the
right time of a stamp of this boot taken while it was not
(:meth:`ClockTracker.correct`): ``boottime + offset``.

Nothing here stores anything: a store saves :attr:`ClockTracker.boot_id` and
:attr:`ClockTracker.offset_ns` and hands the offset back through
:meth:`ClockTracker.restore` after a restart within the same boot. The offsets
of earlier boots are the store's, and :class:`gateway.records.StampResolver`
applies them.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from trio_util import AsyncBool, periodic

from gateway.clock.kernel import CLOCK_SYNC_POLICIES, SyncVerdict, boot_id, boottime_ns, check_sync
from gateway.config.sections import DEFAULT_CLOCK_SYNC_FILE, ClockSync

log = logging.getLogger("gateway.clock")

POLL_INTERVAL = 5.0
"""Seconds between sync checks: a file's appearance and adjtimex have no event."""

JITTER_NS = 1_000_000
"""A drop of ``wall - boottime`` up to this is read jitter, not a clock step.

1 ms is below what NTP over a WAN link promises, so a stamp held that little
ahead of the wall clock still counts as right.
"""

# Reading boottime and the wall clock takes two system calls; a preemption in
# between skews their difference. A spread this small is good enough to stop.
_READ_SPREAD_NS = 20_000
_READ_TRIES = 3


def boot_key(boot_id: str) -> str:
    """A boot's short key in stamps and records: the first 8 hex digits of its id."""
    return boot_id.replace("-", "")[:8].lower()


@dataclass(frozen=True, slots=True)
class Stamp:
    """When a reading arrived, in a form that can still be put right later.

    The tracker makes them with every field; a stamp read back from a record
    (:func:`gateway.records.parse_stamp`) taken while the clock was right has
    only its wall time, the rest being of no further use.

    Attributes:
        wall_ns: the best-known wall time at receipt (ns since the epoch, UTC).
        boottime_ns: ``CLOCK_BOOTTIME`` at receipt; strictly increasing per boot
            (nudged by a ns or so when readings share an instant).
        boot: the key (:func:`boot_key`) of the boot ``boottime_ns`` counts
            from; a store keeps each boot's full id and offset once.
        synced: the wall clock was known right at that moment, so ``wall_ns``
            needs no correction.

    Raises:
        ValueError: a stamp that is not ``synced`` without its boot and boottime.
    """

    wall_ns: int
    boottime_ns: int | None = None
    boot: str | None = None
    synced: bool = True

    def __post_init__(self) -> None:
        if not self.synced and (self.boot is None or self.boottime_ns is None):
            raise ValueError("a stamp taken while the clock was not right needs its boot time")


class ClockTracker:
    """Stamps readings, learns ``wall - boottime`` while the clock is right, corrects the rest.

    Every stamp's time is ``boottime + offset``. While the clock is known right
    the offset is the clock's own (``wall - boottime`` now) and is remembered;
    while it is not, the remembered offset of this boot is used, or the wall
    clock as it is when none is known yet. The offset of successive stamps
    never decreases, which gives the guarantees the stores rely on:

    * stamps are strictly increasing, and at least as far apart as their
      boottimes: a wall-clock step, forward or back, never reorders, squeezes
      or duplicates them (InfluxDB keeps one point per series and instant);
    * a step back leaves the stamps going on from the last one, in boottime
      order, ahead of the clock; they are marked not ``synced`` then, and
      :meth:`correct` gives their right time.

    Call :meth:`refresh` (or run :meth:`watch`) before the first stamp: until a
    check has said otherwise the clock counts as not synchronised.

    Args:
        policy: ``[gateway] clock_sync`` (see :func:`~gateway.clock.kernel.check_sync`).
        sync_file: ``[gateway] clock_sync_file``.
        boot: this boot's id (default: :func:`~gateway.clock.kernel.boot_id`).
        wall: the wall clock in ns (default ``time.time_ns``; injectable).
        boottime: the boot clock in ns (default
            :func:`~gateway.clock.kernel.boottime_ns`; injectable).
        check: the sync check (default ``check_sync(policy, sync_file)``; injectable).
        jitter_ns: see :data:`JITTER_NS`.

    Raises:
        ValueError: for an unknown policy.

    Attributes:
        boot_id: this boot's id; :attr:`boot_key` its key, which its stamps carry.
        synchronised: whether the wall clock is right, as of the last check
            (``AsyncBool``: wait on it, or on its transitions).
        verdict: the last check's :class:`~gateway.clock.kernel.SyncVerdict`;
            None before the first.
        since_ns: best-known wall time at which ``synchronised`` last changed
            (or was first checked); None before the first check.
        offset_ns: ``wall - boottime`` learned this boot while the clock was
            right (or restored); None while unknown. Save it with ``boot_id``.
    """

    def __init__(
        self,
        policy: ClockSync = "auto",
        sync_file: str | os.PathLike[str] = DEFAULT_CLOCK_SYNC_FILE,
        *,
        boot: str | None = None,
        wall: Callable[[], int] = time.time_ns,
        boottime: Callable[[], int] = boottime_ns,
        check: Callable[[], SyncVerdict] | None = None,
        jitter_ns: int = JITTER_NS,
    ) -> None:
        if policy not in CLOCK_SYNC_POLICIES:
            raise ValueError(f"clock_sync must be one of {CLOCK_SYNC_POLICIES}, not {policy!r}")
        self.policy = policy
        self.sync_file = sync_file
        self.boot_id = boot_id() if boot is None else boot
        self.boot_key = boot_key(self.boot_id)
        self.jitter_ns = jitter_ns
        self._wall = wall
        self._boottime = boottime
        self._check = check or functools.partial(check_sync, policy, sync_file)
        self.synchronised = AsyncBool(False)
        self.verdict: SyncVerdict | None = None
        self.since_ns: int | None = None
        self.offset_ns: int | None = None
        # The latest stamp's boottime and offset: the next one goes on from them.
        self._last: tuple[int, int] | None = None
        self._holding = False  # stamps are held ahead of a clock that stepped back
        # Offsets of the stamps made unsynchronised since the clock was last
        # right: how far off they are is worth one line when it is right again.
        self._unsynced = 0
        self._unsynced_offsets = (0, 0)

    def _read(self) -> tuple[int, int]:
        """``(boottime, wall)`` of one instant, as near as two clock reads allow.

        The reads are not atomic, and since the stamps' offset never goes back,
        one read skewed by a preemption would shift every later stamp. So the
        wall read is bracketed by two boottime reads; the tightest try wins.
        """
        best_spread, best = -1, (0, 0)
        for _ in range(_READ_TRIES):
            before = self._boottime()
            wall = self._wall()
            spread = self._boottime() - before
            if best_spread < 0 or spread < best_spread:
                best_spread, best = spread, (before + spread // 2, wall)
            if spread <= _READ_SPREAD_NS:
                break
        return best

    def stamp(self) -> Stamp:
        """Stamp a reading received now.

        Returns:
            ``boottime + offset``, the offset being the clock's own while it is
            right (and then remembered), else this boot's remembered one, else
            the wall clock's now; never less than the previous stamp's offset.
        """
        boottime_ns, wall = self._read()
        synced = bool(self.synchronised.value)
        offset = wall - boottime_ns
        if synced:
            self.offset_ns = offset
        elif self.offset_ns is not None:
            # The clock may have been stepped meanwhile (by hand, or by a
            # wrong source): the offset learned while it was right is better.
            offset = self.offset_ns
        if self._last is not None:
            last_boottime, held = self._last
            boottime_ns = max(boottime_ns, last_boottime + 1)
            if offset < held:
                # The clock went back (or a read was late): going on from the
                # last stamp along boottime keeps order without squeezing.
                behind = held - offset
                if behind > self.jitter_ns:
                    synced = False
                    if not self._holding:
                        log.warning(
                            "wall clock %.3f s behind the last stamp (stepped back): stamps go"
                            " on from it in boottime order, marked unsynchronised",
                            behind / 1e9,
                        )
                self._holding = behind > self.jitter_ns
                offset = held
            else:
                self._holding = False
        if not synced:
            lo, hi = self._unsynced_offsets
            self._unsynced_offsets = (
                (offset, offset) if not self._unsynced else (min(lo, offset), max(hi, offset))
            )
            self._unsynced += 1
        self._last = (boottime_ns, offset)
        return Stamp(boottime_ns + offset, boottime_ns, self.boot_key, synced)

    def correct(self, stamp: Stamp) -> int | None:
        """The right wall time of ``stamp``, as far as this boot knows it now.

        Returns:
            ``stamp.wall_ns`` for a stamp taken while the clock was right;
            ``boottime + offset`` for one of this boot taken while it was not,
            once the offset is known (learned now, or restored); None when it
            is not, or the stamp is of another boot (whose offset is the
            store's: :class:`gateway.records.StampResolver`).
        """
        if stamp.synced:
            return stamp.wall_ns
        if stamp.boot != self.boot_key or self.offset_ns is None or stamp.boottime_ns is None:
            return None
        return stamp.boottime_ns + self.offset_ns

    def restore(self, offset_ns: int | None) -> None:
        """Take back this boot's offset, as a store saved it before a restart.

        It counts until the clock is seen right again; one learned since is
        newer and wins.

        Args:
            offset_ns: this boot's ``wall - boottime``, or None if it never had one.
        """
        if self.offset_ns is None:
            self.offset_ns = offset_ns

    def refresh(self) -> SyncVerdict:
        """Check once whether the clock is right; learn its offset if so; log changes.

        Returns:
            The check's verdict (also in :attr:`verdict`).
        """
        verdict = self._check()
        boottime_ns, wall = self._read()
        first = self.verdict is None
        changed = first or verdict.synchronised != self.synchronised.value
        if verdict.synchronised:
            self.offset_ns = wall - boottime_ns
            if changed:
                log.info("clock synchronised: %s%s", verdict.how, self._unsynced_summary())
        elif first:
            log.info("clock not synchronised: %s; stamps are provisional until it is", verdict.how)
        elif changed:
            log.warning(
                "clock no longer synchronised: %s; stamping boottime + the last known offset",
                verdict.how,
            )
        if changed:
            self.since_ns = wall if self.offset_ns is None else boottime_ns + self.offset_ns
        self.verdict = verdict
        self.synchronised.value = verdict.synchronised
        return verdict

    def _unsynced_summary(self) -> str:
        """How far off the stamps made while unsynchronised are; forget them."""
        if not self._unsynced or self.offset_ns is None:
            return ""
        lo, hi = (self.offset_ns - o for o in reversed(self._unsynced_offsets))
        n, self._unsynced = self._unsynced, 0
        stamps = "1 stamp" if n == 1 else f"{n} stamps"
        need = f"{lo / 1e9:+.3f} s" if lo == hi else f"{lo / 1e9:+.3f} to {hi / 1e9:+.3f} s"
        return f"; {stamps} taken before need {need} (correct())"

    async def watch(
        self,
        *,
        interval: float = POLL_INTERVAL,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep :attr:`synchronised` up to date: check now, then every ``interval`` s.

        Neither the flag file's appearance nor the kernel's status has an event
        to wait for, hence polling (on the Trio clock). ``task_status.started()``
        comes after the first check, so stamps made after ``nursery.start``
        already know.
        """
        started = False
        async for _ in periodic(interval):
            self.refresh()
            if not started:
                started = True
                task_status.started()
