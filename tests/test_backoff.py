"""gateway.backoff: exact delays under a virtual clock, caps, reset, full jitter."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.backoff import Backoff


def ceiling(hi: float) -> float:
    """No jitter: the delay is the ceiling itself."""
    return hi


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, jitter=ceiling)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_cap_that_is_a_power_of_two_step() -> None:
    backoff = Backoff(1.0, 8.0, jitter=ceiling)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_exponent_stays_bounded_in_a_long_outage() -> None:
    backoff = Backoff(0.5, 30.0, jitter=ceiling)
    for _ in range(100_000):
        backoff.next_delay()
    assert backoff.attempt == 6
    assert backoff.next_delay() == 30.0


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_parameters(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial, maximum)


def test_reset_forgets_failures() -> None:
    backoff = Backoff(0.5, 30.0, jitter=ceiling)
    for _ in range(4):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() == 0.5


async def test_sleep_advances_virtual_time_by_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(0.5, 4.0, jitter=ceiling)
    start = trio.current_time()
    expected = [0.5, 1.0, 2.0, 4.0, 4.0]
    for delay in expected:
        before = trio.current_time()
        assert await backoff.sleep() == delay
        assert trio.current_time() - before == delay
    assert trio.current_time() - start == sum(expected)


async def test_sleep_at_least(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(0.5, 4.0, jitter=ceiling)
    before = trio.current_time()
    assert await backoff.sleep(at_least=7.0) == 7.0
    assert trio.current_time() - before == 7.0
    # The failure still counted: the next delay is the second one.
    assert backoff.next_delay() == 1.0


async def test_reset_after_a_stable_period(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(0.5, 30.0, stable_after=10.0, jitter=ceiling)
    for _ in range(5):
        await backoff.sleep()
    backoff.up()
    await trio.sleep(10.0)
    assert backoff.next_delay() == 0.5


async def test_no_reset_when_up_only_briefly(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(0.5, 30.0, stable_after=10.0, jitter=ceiling)
    for _ in range(3):
        await backoff.sleep()
    backoff.up()
    await trio.sleep(9.5)
    assert backoff.next_delay() == 4.0


async def test_up_counts_from_the_first_call(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(0.5, 30.0, stable_after=10.0, jitter=ceiling)
    for _ in range(3):
        backoff.next_delay()
    backoff.up()
    await trio.sleep(6.0)
    backoff.up()  # still the same up period: it does not restart the clock
    await trio.sleep(4.0)
    assert backoff.next_delay() == 0.5


async def test_stable_after_defaults_to_the_cap(autojump_clock: trio.testing.MockClock) -> None:
    backoff = Backoff(1.0, 8.0, jitter=ceiling)
    for _ in range(3):
        backoff.next_delay()
    backoff.up()
    await trio.sleep(7.5)
    assert backoff.next_delay() == 8.0
    backoff.up()
    await trio.sleep(8.0)
    assert backoff.next_delay() == 1.0


def test_full_jitter_stays_within_the_ceiling() -> None:
    backoff = Backoff(0.5, 30.0)
    seen = []
    for _ in range(2000):
        top = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= top
        seen.append(delay / top)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(seen) < 0.1
    assert max(seen) > 0.9


def test_jitter_receives_the_ceiling() -> None:
    ceilings: list[float] = []

    def record(hi: float) -> float:
        ceilings.append(hi)
        return hi / 2

    backoff = Backoff(0.25, 1.0, jitter=record)
    assert [backoff.next_delay() for _ in range(4)] == [0.125, 0.25, 0.5, 0.5]
    assert ceilings == [0.25, 0.5, 1.0, 1.0]
