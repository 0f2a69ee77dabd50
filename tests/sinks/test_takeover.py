"""gateway.sinks.mqtt.takeover and the reconnect backoff under a client-id takeover.

Times are exact under a MockClock; the reason code is read from exceptions
shaped as aiomqtt raises them (a test that fails when a release changes that).
"""

from __future__ import annotations

import aiomqtt
import pytest
import trio
import trio.testing
from aiomqtt.exceptions import MqttCodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.backoff import Backoff
from gateway.sinks.mqtt.client import disconnect_reason
from gateway.sinks.mqtt.sink import STABLE_CONNECTION_S, TAKEOVER_DELAY_FLOOR
from gateway.sinks.mqtt.takeover import SESSION_TAKEN_OVER, TakeoverWatch


def ceiling(hi: float) -> float:
    return hi


def dropped(rc: ReasonCode) -> aiomqtt.MqttError:
    """What aiomqtt raises from message iteration after paho's on_disconnect(rc)."""
    try:
        try:
            raise MqttCodeError(rc, "Unexpected disconnection")
        except MqttCodeError as cause:
            raise aiomqtt.MqttError("Disconnected during message iteration") from cause
    except aiomqtt.MqttError as exc:
        return exc


def test_disconnect_reason_finds_session_taken_over() -> None:
    rc = ReasonCode(PacketTypes.DISCONNECT, identifier=SESSION_TAKEN_OVER)
    assert disconnect_reason(dropped(rc)) == SESSION_TAKEN_OVER


def test_a_closed_socket_has_no_reason() -> None:
    # paho's on_disconnect after a plain close: 0x80 "Unspecified error".
    assert disconnect_reason(dropped(ReasonCode(PacketTypes.DISCONNECT, identifier=0x80))) is None
    assert disconnect_reason(OSError("reset")) is None


async def connection(watch: TakeoverWatch, lasting: float, reason: int | None = None) -> object:
    watch.connected()
    await trio.sleep(lasting)
    return watch.ended(reason)


async def test_mqtt5_reason_is_a_takeover_at_once(autojump_clock: trio.testing.MockClock) -> None:
    watch = TakeoverWatch()
    takeover = await connection(watch, 100.0, SESSION_TAKEN_OVER)
    assert takeover is not None
    assert watch.suspected


async def test_three_short_connections_in_a_row_are_a_takeover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = TakeoverWatch(streak=3, short_lived=5.0)
    assert await connection(watch, 1.0) is None
    assert await connection(watch, 4.9) is None
    third = await connection(watch, 0.1)
    assert third is not None
    assert "3 connections in a row" in third.evidence  # type: ignore[attr-defined]
    # From now on every close before a stable connection is one, even a longer one
    # (the other gateway's backoff grows too).
    assert await connection(watch, 20.0) is not None
    assert await connection(watch, 60.0) is None
    assert not watch.suspected


async def test_a_refused_attempt_or_a_long_connection_breaks_the_streak(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watch = TakeoverWatch(streak=3, short_lived=5.0)
    await connection(watch, 1.0)
    await connection(watch, 1.0)
    assert watch.ended(None) is None  # refused: a restarting broker
    await connection(watch, 1.0)
    await connection(watch, 6.0)
    await connection(watch, 1.0)
    assert await connection(watch, 1.0) is None
    assert not watch.suspected


async def test_backoff_does_not_reset_on_connections_shorter_than_stable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The sink's policy: a connection counts as stable only after STABLE_CONNECTION_S,
    # even with a small backoff_max (connections under a takeover last up to it).
    backoff = Backoff(0.5, 8.0, stable_after=max(8.0, STABLE_CONNECTION_S), jitter=ceiling)
    delays = []
    for _ in range(6):
        backoff.up()
        await trio.sleep(8.0)  # each connection lasts backoff_max, then is taken over
        delay = backoff.next_delay()
        delays.append(delay)
        await trio.sleep(delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    backoff.up()
    await trio.sleep(STABLE_CONNECTION_S)
    assert backoff.next_delay() == 0.5


async def test_takeover_delay_is_at_least_half_the_ceiling(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backoff = Backoff(0.5, 8.0, jitter=lambda hi: 0.0)  # the unluckiest full jitter
    assert [backoff.next_delay(floor=TAKEOVER_DELAY_FLOOR) for _ in range(5)] == [
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
    ]
    assert backoff.next_delay() == 0.0


@pytest.mark.parametrize("floor", [0.0, 0.5, 1.0])
def test_floor_never_exceeds_the_ceiling(floor: float) -> None:
    backoff = Backoff(1.0, 4.0)
    for _ in range(20):
        assert backoff.next_delay(floor=floor) <= 4.0
