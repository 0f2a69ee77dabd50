"""gateway.sinks.servers: the sticky rotation and its backoff per server, in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gateway.backoff import Backoff
from gateway.sinks.servers import Rotation


def exact(initial: float = 1.0, maximum: float = 8.0) -> Backoff:
    """A backoff without jitter (the delay is the ceiling) that resets after 10 s up."""
    return Backoff(initial, maximum, stable_after=10.0, jitter=lambda ceiling: ceiling)


async def fail(rotation: Rotation[str], **kwargs: float | bool) -> tuple[str, float]:
    """The active server fails; sleep what the rotation says; (the next server, the wait)."""
    delay = rotation.failed(**kwargs)  # type: ignore[arg-type]
    await trio.sleep(delay)
    return rotation.active, delay


async def test_one_server_backs_off_like_a_lone_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rotation = Rotation(["a"], exact)
    waits = [(await fail(rotation))[1] for _ in range(5)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert rotation.active == "a"
    assert rotation.switches == 0


async def test_failover_is_immediate_and_each_server_keeps_its_own_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rotation = Rotation(["a", "b", "c"], exact)
    # a drops: b has never failed, so it is tried at once.
    assert await fail(rotation) == ("b", 0.0)
    # b refuses too: c at once; c refuses: back to a, and as no time has
    # passed, the wait is what is left of a's own first delay.
    assert await fail(rotation) == ("c", 0.0)
    assert await fail(rotation) == ("a", 1.0)
    assert trio.current_time() == 1.0
    # a fails again (its second failure: 2 s); b's 1 s ended at t=1, so b at once.
    assert await fail(rotation) == ("b", 0.0)
    # b's second failure: 2 s from t=1; c's first ended at t=1: c at once.
    assert await fail(rotation) == ("c", 0.0)
    # c's second: to a, whose 2 s from t=1 end at t=3.
    assert await fail(rotation) == ("a", 2.0)
    assert trio.current_time() == 3.0
    assert [b.attempt for b in rotation.backoffs] == [2, 2, 2]
    assert rotation.switches == 6


async def test_sticky_the_working_server_stays_until_it_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rotation = Rotation(["first", "second"], exact)
    assert await fail(rotation) == ("second", 0.0)
    rotation.up()  # connected to the second
    # The first comes back meanwhile: nothing probes it; the second stays.
    await trio.sleep(3600.0)
    assert rotation.active == "second"
    # Only when the second fails is the first tried again, at once (its
    # delay ended long ago), and the second's backoff starts over (it was stable).
    assert await fail(rotation) == ("first", 0.0)
    assert rotation.backoffs[1].attempt == 1  # reset, then this failure counted


async def test_a_failure_that_is_not_the_servers_keeps_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rotation = Rotation(["a", "b"], exact)
    # A 429 with Retry-After 5: the same server, after 5 s (more than its 1 s).
    assert await fail(rotation, switch=False, at_least=5.0) == ("a", 5.0)
    assert await fail(rotation, switch=False) == ("a", 2.0)
    assert await fail(rotation) == ("b", 0.0)


async def test_floor_reaches_the_failed_servers_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rotation = Rotation(["a"], lambda: Backoff(1.0, 8.0, jitter=lambda ceiling: 0.0))
    # Full jitter drew 0; a takeover's floor of half the ceiling still waits.
    assert await fail(rotation, floor=0.5) == ("a", 0.5)


def test_needs_a_server() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Rotation([], exact)
