"""gateway.clock.tracker: the stamps, their offsets and corrections, watch() on Trio's clock."""

from __future__ import annotations

import functools
import itertools
import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.clock import ClockTracker, Stamp, SyncVerdict, boot_id, boot_key
from gateway.records import StampResolver

# --- the tracker ------------------------------------------------------------------

S = 1_000_000_000
MS = 1_000_000
BOOT = "0b0e1d00-0000-4000-8000-000000000001"
KEY = boot_key(BOOT)  # what the stamps of BOOT carry
OTHER_KEY = "0b0e1d02"  # a boot before it
# wall - boottime of a right clock: booted at 2026-11-28 00:00:00 UTC.
RIGHT = 1_795_824_000 * S
HOUR = 3600 * S


class Clocks:
    """A box's two clocks, moved by the test (and by Trio's clock, if ``trio_time``).

    ``boottime`` only ever advances; ``wall`` is ``boottime + offset``, and a
    step of the wall clock is a change of ``offset``.
    """

    def __init__(self, offset: int = RIGHT, *, trio_time: bool = False) -> None:
        self.boot_ns = 10 * S
        self.offset = offset
        self.trio_time = trio_time

    def boottime(self) -> int:
        extra = round(trio.current_time() * S) if self.trio_time else 0
        return self.boot_ns + extra

    def wall(self) -> int:
        return self.boottime() + self.offset

    def advance(self, ns: int) -> None:
        self.boot_ns += ns

    def step(self, ns: int) -> None:
        self.offset += ns


class Sync:
    """A sync check whose answer the test sets."""

    def __init__(self, synchronised: bool = False) -> None:
        self.synchronised = synchronised

    def check(self) -> SyncVerdict:
        word = "synchronised" if self.synchronised else "not synchronised"
        return SyncVerdict(self.synchronised, f"test: {word}")


def make_tracker(clocks: Clocks, sync: Sync, **kwargs: int) -> ClockTracker:
    return ClockTracker(
        boot=BOOT, wall=clocks.wall, boottime=clocks.boottime, check=sync.check, **kwargs
    )


@pytest.fixture
def clock_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog, recording the "gateway.clock" logger from INFO on."""
    caplog.set_level(logging.INFO, logger="gateway.clock")
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """(level, message) of each "gateway.clock" record of the test so far."""
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway.clock"]


def assert_in_order(stamps: list[Stamp]) -> None:
    """Strictly increasing, and never closer together than their boottimes."""
    for a, b in itertools.pairwise(stamps):
        assert b.boottime_ns > a.boottime_ns
        assert b.wall_ns - a.wall_ns >= b.boottime_ns - a.boottime_ns


def test_a_right_clock_stamps_its_own_time() -> None:
    clocks, sync = Clocks(), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    s = tracker.stamp()
    assert s == Stamp(clocks.wall(), clocks.boottime(), KEY, True)
    assert tracker.offset_ns == RIGHT
    assert tracker.correct(s) == s.wall_ns


def test_before_any_check_the_clock_is_not_trusted() -> None:
    clocks = Clocks()
    tracker = make_tracker(clocks, Sync(True))
    s = tracker.stamp()
    assert s == Stamp(clocks.wall(), clocks.boottime(), KEY, False)
    assert tracker.offset_ns is None
    assert tracker.correct(s) is None


@pytest.mark.parametrize(
    "behind",
    [HOUR, RIGHT],  # fake-hwclock an hour old; no saved time at all (1970)
    ids=["fake-hwclock", "1970"],
)
def test_forward_step_before_the_first_sync_is_followed_and_corrected(behind: int) -> None:
    """The box boots with its clock behind; NTP steps it before a check sees that."""
    clocks, sync = Clocks(RIGHT - behind), Sync(False)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    early = tracker.stamp()
    assert early == Stamp(RIGHT - behind + 10 * S, 10 * S, KEY, False)
    clocks.advance(S)
    clocks.step(behind)
    stepped = tracker.stamp()
    # No offset known yet: the wall clock as it is now; a gap, never a squeeze.
    assert stepped == Stamp(RIGHT + 11 * S, 11 * S, KEY, False)
    assert tracker.correct(early) is None
    clocks.advance(S)
    sync.synchronised = True
    tracker.refresh()
    synced = tracker.stamp()
    assert synced == Stamp(RIGHT + 12 * S, 12 * S, KEY, True)
    assert tracker.correct(early) == RIGHT + 10 * S
    assert tracker.correct(stepped) == RIGHT + 11 * S
    assert_in_order([early, stepped, synced])


def test_forward_step_while_synchronised_is_followed() -> None:
    clocks, sync = Clocks(), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    before = tracker.stamp()
    clocks.advance(MS)
    clocks.step(5 * S)
    after = tracker.stamp()
    assert after == Stamp(clocks.wall(), clocks.boottime(), KEY, True)
    assert after.wall_ns - before.wall_ns == 5 * S + MS
    assert tracker.offset_ns == RIGHT + 5 * S


def test_a_step_while_unsynchronised_is_ignored_once_an_offset_is_known() -> None:
    """Someone sets the clock by hand while NTP is away: the learned offset wins."""
    clocks, sync = Clocks(), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    sync.synchronised = False
    tracker.refresh()
    for step in (HOUR, -2 * HOUR):
        clocks.advance(S)
        clocks.step(step)
        s = tracker.stamp()
        assert s == Stamp(clocks.boottime() + RIGHT, clocks.boottime(), KEY, False)
        assert tracker.correct(s) == s.wall_ns


def test_backward_step_before_the_first_sync_goes_on_along_boottime(
    clock_log: pytest.LogCaptureFixture,
) -> None:
    clocks, sync = Clocks(), Sync(False)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    first = tracker.stamp()
    clocks.advance(S)
    clocks.step(-HOUR)
    stamps = [first, tracker.stamp()]
    # Not squeezed: one second of boottime is one second between the stamps.
    assert stamps[1].wall_ns == first.wall_ns + S
    for _ in range(100):
        clocks.advance(MS)
        stamps.append(tracker.stamp())
    assert [b.wall_ns - a.wall_ns for a, b in itertools.pairwise(stamps[1:])] == [MS] * 100
    assert_in_order(stamps)
    held = [m for m in messages(clock_log) if m[0] == logging.WARNING]
    assert held == [
        (
            logging.WARNING,
            "wall clock 3600.000 s behind the last stamp (stepped back): stamps go on from it"
            " in boottime order, marked unsynchronised",
        )
    ]


def test_backward_step_while_synchronised_is_held_and_correctable() -> None:
    """NTP steps a fast clock back: stamps keep their order and say they are off."""
    clocks, sync = Clocks(RIGHT + 30 * S), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    ahead = tracker.stamp()
    assert ahead.synced
    clocks.advance(2 * S)
    clocks.step(-30 * S)
    held = tracker.stamp()
    assert held == Stamp(ahead.wall_ns + 2 * S, ahead.boottime_ns + 2 * S, KEY, False)
    assert tracker.offset_ns == RIGHT
    assert tracker.correct(held) == clocks.wall()
    clocks.advance(S)
    later = tracker.stamp()
    assert later == Stamp(held.wall_ns + S, held.boottime_ns + S, KEY, False)
    assert tracker.correct(later) == clocks.wall()


def test_read_jitter_is_not_a_step(clock_log: pytest.LogCaptureFixture) -> None:
    clocks, sync = Clocks(), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    first = tracker.stamp()
    clocks.advance(MS)
    clocks.step(-500)  # well under JITTER_NS
    second = tracker.stamp()
    assert second == Stamp(first.wall_ns + MS, first.boottime_ns + MS, KEY, True)
    assert not [m for m in messages(clock_log) if m[0] >= logging.WARNING]


@pytest.mark.parametrize("synchronised", [True, False])
def test_many_stamps_in_the_same_ns_are_distinct(synchronised: bool) -> None:
    clocks = Clocks()
    tracker = make_tracker(clocks, Sync(synchronised))
    tracker.refresh()
    stamps = [tracker.stamp() for _ in range(10_000)]
    assert_in_order(stamps)
    assert len({s.wall_ns for s in stamps}) == 10_000
    assert stamps[-1].wall_ns - stamps[0].wall_ns == 9_999
    assert all(s.synced is synchronised for s in stamps)


def test_strictly_increasing_across_a_backward_step_in_the_same_ns() -> None:
    clocks, sync = Clocks(), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    stamps = [tracker.stamp() for _ in range(100)]
    clocks.step(-10 * S)  # boottime does not move at all
    stamps += [tracker.stamp() for _ in range(100)]
    clocks.advance(MS)
    stamps += [tracker.stamp() for _ in range(100)]
    assert_in_order(stamps)
    assert [s.wall_ns - stamps[0].wall_ns for s in stamps[:200]] == list(range(200))
    assert stamps[200].wall_ns - stamps[199].wall_ns == MS - 199
    assert all(s.synced for s in stamps[:100])
    assert not any(s.synced for s in stamps[100:])


def test_sync_lost_and_regained(clock_log: pytest.LogCaptureFixture) -> None:
    clocks, sync = Clocks(), Sync(True)
    tracker = make_tracker(clocks, sync)
    tracker.refresh()
    right = tracker.stamp()
    clocks.advance(S)
    sync.synchronised = False
    tracker.refresh()
    assert tracker.since_ns == 11 * S + RIGHT
    # While NTP is away the clock is stepped 2 s ahead; NTP agrees when it returns.
    clocks.step(2 * S)
    clocks.advance(S)
    away = tracker.stamp()
    assert away == Stamp(12 * S + RIGHT, 12 * S, KEY, False)
    clocks.advance(S)
    sync.synchronised = True
    tracker.refresh()
    assert tracker.offset_ns == RIGHT + 2 * S
    assert tracker.since_ns == 13 * S + RIGHT + 2 * S
    back = tracker.stamp()
    assert back == Stamp(13 * S + RIGHT + 2 * S, 13 * S, KEY, True)
    assert tracker.correct(away) == 12 * S + RIGHT + 2 * S
    assert tracker.correct(right) == right.wall_ns
    assert_in_order([right, away, back])
    assert messages(clock_log) == [
        (logging.INFO, "clock synchronised: test: synchronised"),
        (
            logging.WARNING,
            "clock no longer synchronised: test: not synchronised; stamping boottime + the last"
            " known offset",
        ),
        (
            logging.INFO,
            "clock synchronised: test: synchronised; 1 stamp taken before need +2.000 s"
            " (correct())",
        ),
    ]


def test_foreign_boot() -> None:
    tracker = make_tracker(Clocks(), Sync(True))
    tracker.refresh()
    unsynced = Stamp(RIGHT - HOUR, 5 * S, OTHER_KEY, False)
    synced = Stamp(RIGHT + 7 * S, 7 * S, OTHER_KEY, True)
    # That boot never saw a right clock (as far as we know): no correction.
    assert tracker.correct(unsynced) is None
    assert tracker.correct(synced) == synced.wall_ns
    assert StampResolver(tracker, {}).resolve(unsynced) == (unsynced.wall_ns, False)
    # A store saved that boot's offset: the resolver puts its stamps right ...
    resolver = StampResolver(tracker, {OTHER_KEY: RIGHT - 100 * S})
    assert resolver.resolve(unsynced) == (RIGHT - 95 * S, True)
    # ... without touching this boot's offset.
    assert tracker.correct(unsynced) is None
    assert tracker.offset_ns == RIGHT


def test_restart_within_the_same_boot() -> None:
    """A store saved boot id and offset; a new process of the same boot takes the offset back."""
    clocks, sync = Clocks(RIGHT - HOUR), Sync(False)
    old = make_tracker(clocks, sync)
    old.refresh()
    early = old.stamp()
    sync.synchronised = True
    clocks.advance(S)
    clocks.step(HOUR)
    old.refresh()
    saved = (old.boot_id, old.offset_ns)
    # The daemon restarts while NTP is unreachable and the clock has been stepped.
    clocks.advance(5 * S)
    clocks.step(-HOUR)
    sync.synchronised = False
    new = make_tracker(clocks, sync)
    new.refresh()
    assert new.correct(early) is None
    boot, offset = saved
    assert boot == new.boot_id
    new.restore(offset)
    assert new.offset_ns == RIGHT
    assert new.correct(early) == RIGHT + 10 * S
    after = new.stamp()
    assert after == Stamp(RIGHT + 16 * S, 16 * S, KEY, False)
    assert_in_order([early, after])


def test_a_learned_offset_beats_a_restored_one() -> None:
    tracker = make_tracker(Clocks(), Sync(True))
    tracker.refresh()
    tracker.restore(RIGHT - HOUR)
    assert tracker.offset_ns == RIGHT


def test_a_stamp_of_a_wrong_clock_needs_its_boot_and_boottime() -> None:
    with pytest.raises(ValueError, match="boot time"):
        Stamp(RIGHT, synced=False)
    assert Stamp(RIGHT).synced


def test_a_preempted_read_is_retried() -> None:
    """A late wall read would skew wall - boottime for good: the tightest read wins."""
    boottimes = iter([10 * S, 10 * S + 5 * MS, 11 * S, 11 * S + 100])
    walls = iter([RIGHT + 10 * S + 5 * MS, RIGHT + 11 * S + 50])
    tracker = ClockTracker(
        boot=BOOT,
        wall=lambda: next(walls),
        boottime=lambda: next(boottimes),
        check=Sync(True).check,
    )
    tracker.synchronised.value = True
    s = tracker.stamp()
    assert s == Stamp(RIGHT + 11 * S + 50, 11 * S + 50, KEY, True)
    assert tracker.offset_ns == RIGHT


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    """Where the test's systemd-timesyncd flag file would be (absent until touched)."""
    return tmp_path / "timesync" / "synchronized"


def test_the_tracker_checks_as_its_policy_says(flag: Path) -> None:
    assert ClockTracker("none", boot=BOOT).refresh().synchronised
    tracker = ClockTracker("file", flag, boot=BOOT)
    assert not tracker.refresh().synchronised
    flag.parent.mkdir()
    flag.touch()
    assert tracker.refresh().synchronised
    with pytest.raises(ValueError, match="clock_sync"):
        ClockTracker("sometimes", boot=BOOT)  # type: ignore[arg-type]


def test_real_tracker_on_this_machine() -> None:
    tracker = ClockTracker()
    verdict = tracker.refresh()
    assert tracker.verdict is verdict
    stamps = [tracker.stamp() for _ in range(100)]
    assert {s.boot for s in stamps} == {boot_key(boot_id())}
    assert_in_order(stamps)


# --- watch() on Trio's clock -------------------------------------------------------


async def test_watch_transitions(
    autojump_clock: trio.testing.MockClock, clock_log: pytest.LogCaptureFixture
) -> None:
    clocks, sync = Clocks(RIGHT - HOUR, trio_time=True), Sync(False)
    tracker = make_tracker(clocks, sync)
    changes: list[tuple[float, bool]] = []

    async def record() -> None:
        async for value, _ in tracker.synchronised.transitions():
            changes.append((trio.current_time(), value))

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(record)
        await nursery.start(tracker.watch)
        # started() comes after the first check, with no time passed.
        assert trio.current_time() == t0
        assert tracker.verdict == SyncVerdict(False, "test: not synchronised")
        assert tracker.since_ns == RIGHT - HOUR + 10 * S
        assert tracker.offset_ns is None

        await trio.sleep(12)  # NTP steps the clock and says so at t=12 ...
        clocks.step(HOUR)
        sync.synchronised = True
        await tracker.synchronised.wait_value(True)
        assert trio.current_time() - t0 == 15  # ... seen at the next poll
        assert tracker.since_ns == RIGHT + 25 * S
        assert tracker.offset_ns == RIGHT

        await trio.sleep(16)  # t=31: lost ...
        sync.synchronised = False
        await tracker.synchronised.wait_value(False)
        assert trio.current_time() - t0 == 35
        assert tracker.since_ns == RIGHT + 45 * S

        await trio.sleep(5.5)  # t=40.5: back ...
        sync.synchronised = True
        await tracker.synchronised.wait_value(True)
        assert trio.current_time() - t0 == 45

        await trio.sleep(60)  # a quiet minute: polled, nothing logged
        nursery.cancel_scope.cancel()
    assert changes == [(t0 + 15, True), (t0 + 35, False), (t0 + 45, True)]
    assert [level for level, _ in messages(clock_log)] == [
        logging.INFO,
        logging.INFO,
        logging.WARNING,
        logging.INFO,
    ]
    assert messages(clock_log)[0] == (
        logging.INFO,
        "clock not synchronised: test: not synchronised; stamps are provisional until it is",
    )


async def test_watch_polls_at_the_interval_given(autojump_clock: trio.testing.MockClock) -> None:
    checks: list[float] = []
    sync = Sync(True)

    def check() -> SyncVerdict:
        checks.append(trio.current_time())
        return sync.check()

    clocks = Clocks(trio_time=True)
    tracker = ClockTracker(boot=BOOT, wall=clocks.wall, boottime=clocks.boottime, check=check)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(tracker.watch, interval=2.5))
        assert tracker.synchronised.value
        await trio.sleep(10.1)
        nursery.cancel_scope.cancel()
    assert [t - t0 for t in checks] == [0, 2.5, 5, 7.5, 10]


async def test_power_cut(
    autojump_clock: trio.testing.MockClock, clock_log: pytest.LogCaptureFixture
) -> None:
    """The whole story: boot an hour behind, stamp, NTP returns, correct what was held."""
    clocks, sync = Clocks(RIGHT - HOUR, trio_time=True), Sync(False)
    tracker = make_tracker(clocks, sync)
    right_at: dict[Stamp, int] = {}

    def stamp() -> Stamp:
        s = tracker.stamp()
        right_at[s] = clocks.boottime() + RIGHT
        return s

    async with trio.open_nursery() as nursery:
        await nursery.start(tracker.watch)
        stamps = []
        for _ in range(3):
            await trio.sleep(1)  # t = 1, 2, 3
            stamps += [stamp(), stamp()]  # read together
        await trio.sleep(4)  # t = 7: NTP steps the clock; the check sees it at t = 10
        clocks.step(HOUR)
        sync.synchronised = True
        await trio.sleep(1)
        stamps.append(stamp())  # t = 8
        await trio.sleep(3)
        stamps.append(stamp())  # t = 11
        nursery.cancel_scope.cancel()
    assert [s.synced for s in stamps] == [False] * 7 + [True]
    assert messages(clock_log)[-1] == (
        logging.INFO,
        "clock synchronised: test: synchronised; 7 stamps taken before need +0.000 to"
        " +3600.000 s (correct())",
    )
    assert [s.wall_ns - right_at[s] for s in stamps[:6:2]] == [-HOUR] * 3
    assert_in_order(stamps)
    # Each stamp put right to the ns; the second of a pair read together is 1 ns later.
    corrected = [tracker.correct(s) for s in stamps]
    nudge = [0, 1, 0, 1, 0, 1, 0, 0]
    assert corrected == [right_at[s] + n for s, n in zip(stamps, nudge, strict=True)]
