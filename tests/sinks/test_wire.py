"""gateway.sinks.mqtt.wire: every aiomqtt/paho internal the window uses, checked and exercised.

An upgrade of aiomqtt or paho past the pins in pyproject.toml that moves or
changes one of them fails here, by name, before the window loses PUBACKs.
The checks are run one by one; then each internal is used as the window uses
it: on an unconnected client for the callbacks, against a real broker for
the writes.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
import trio
import trio_asyncio
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.buffer import open_buffer
from gateway.config.sections import MqttSection
from gateway.deadletter import DeadLetterFile
from gateway.metrics import Metrics
from gateway.sinks.mqtt import MqttSink, wire
from gateway.sinks.mqtt.wire import Landing, PackedProperties, Wire, WireError
from tests.services import Broker


class Noted(Landing):
    """A landing that notes what aiomqtt and the wire tell it."""

    __slots__ = ("landed", "refused")

    def __init__(self) -> None:
        self.landed = asyncio.Event()
        self.refused: ReasonCode | None = None

    def set(self) -> None:
        self.landed.set()

    def refuse(self, code: ReasonCode) -> None:
        self.refused = code


def puback(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.PUBACK, identifier=code)  # type: ignore[no-untyped-call]


def properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]


async def on_asyncio(scenario):  # type: ignore[no-untyped-def]
    """Run ``scenario()`` inside asyncio (aiomqtt clients bind to the running loop)."""
    async with trio_asyncio.open_loop():
        return await trio_asyncio.aio_as_trio(scenario)()


@pytest.mark.parametrize("name", list(wire.CHECKS))
def test_each_internal_is_there(name: str) -> None:
    assert wire.CHECKS[name](), f"{name}: changed in the installed aiomqtt/paho"


def test_nothing_is_missing_and_require_passes() -> None:
    assert wire.MISSING == ()
    wire.require_internals()


async def test_a_missing_internal_stops_the_sink_before_it_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "MISSING", ("paho Client._registered_write",))
    buffer = await open_buffer(tmp_path / "buffer", max_records=10, name="mqtt")
    cfg = MqttSection(host="127.0.0.1", port=1, client_id="wire-gw", topic_prefix="wire")
    sink = MqttSink(cfg, buffer, Metrics(), DeadLetterFile(tmp_path / "dead"))
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            with pytest.raises(WireError) as caught:
                await nursery.start(sink.run)  # raised before it reports ready
        text = str(caught.value)
        assert "paho Client._registered_write" in text
        assert "pyproject.toml" in text
    finally:
        buffer.store.close()


async def test_aiomqtt_settles_a_landing_put_into_its_pending_map() -> None:
    async def scenario() -> None:
        client = aiomqtt.Client("127.0.0.1")
        w = Wire(client)
        assert isinstance(w.paho, mqtt.Client)
        landing, other = Noted(), Noted()
        w.track(7, landing)
        w.track(8, other)
        w.paho.on_publish(w.paho, None, 7, puback(0), properties(PacketTypes.PUBACK))
        assert landing.landed.is_set()
        assert landing.refused is None
        assert not other.landed.is_set()
        # Settled once: aiomqtt took it out of its map.
        w.paho.on_publish(w.paho, None, 7, puback(0), properties(PacketTypes.PUBACK))
        # untrack leaves a mid that was reused for something else alone.
        w.untrack(8, landing)
        w.paho.on_publish(w.paho, None, 8, puback(0), properties(PacketTypes.PUBACK))
        assert other.landed.is_set()

    await on_asyncio(scenario)


async def test_a_refusal_reaches_the_landing_and_aiomqtt_events_still_land() -> None:
    async def scenario() -> None:
        client = aiomqtt.Client("127.0.0.1", protocol=aiomqtt.ProtocolVersion.V5)
        w = Wire(client)
        w.note_refusals()
        landing = Noted()
        w.track(3, landing)
        w.paho.on_publish(w.paho, None, 3, puback(0x87), properties(PacketTypes.PUBACK))
        assert landing.refused is not None
        assert landing.refused.value == 0x87
        assert landing.landed.is_set()
        # A publish of aiomqtt's own (presence, discovery) is still settled by it.
        event = asyncio.Event()
        w.track(4, event)  # type: ignore[arg-type]
        w.paho.on_publish(w.paho, None, 4, puback(0x87), properties(PacketTypes.PUBACK))
        assert event.is_set()

    await on_asyncio(scenario)


async def test_the_connacks_receive_maximum_is_read_and_aiomqtt_still_sees_the_connack() -> None:
    async def scenario() -> None:
        client = aiomqtt.Client("127.0.0.1", protocol=aiomqtt.ProtocolVersion.V5)
        w = Wire(client)
        seen: list[int] = []
        w.note_connack(seen.append)
        props = properties(PacketTypes.CONNACK)
        props.ReceiveMaximum = 7
        connack = ReasonCode(PacketTypes.CONNACK, identifier=0)  # type: ignore[no-untyped-call]
        w.paho.on_connect(w.paho, None, mqtt.ConnectFlags(False), connack, props)
        assert seen == [7]
        assert client._connected.done()  # aiomqtt's on_connect ran too

    await on_asyncio(scenario)


async def test_written_at_once_holds_back_the_writer_then_writes() -> None:
    async def scenario() -> None:
        w = Wire(aiomqtt.Client("127.0.0.1"))
        writes: list[bool] = []
        w.paho.loop_write = lambda: writes.append(w.paho._registered_write) or 0  # type: ignore[method-assign,func-returns-value]
        assert w.paho._registered_write is False
        with w.written_at_once():
            assert w.paho._registered_write is True
            assert writes == []
        assert w.paho._registered_write is False
        assert writes == [False]  # written at the end, with paho free to ask for a writer

    await on_asyncio(scenario)


async def test_against_a_broker_a_window_is_written_corked_and_lands(
    tmp_path: Path, test_id: str
) -> None:
    broker = Broker(tmp_path, extra_conf="max_inflight_messages 7\n").start()
    corked: list[int] = []

    async def scenario() -> None:
        client = aiomqtt.Client(
            "127.0.0.1",
            broker.port,
            identifier=f"{test_id}-wire",
            protocol=aiomqtt.ProtocolVersion.V5,
            max_inflight_messages=0,
        )
        w = Wire(client)
        seen: list[int] = []
        w.note_connack(seen.append)
        async with client:
            assert seen == [7]
            w.note_refusals()
            sock = w.paho.socket()
            assert isinstance(sock, socket.socket)
            write = w.paho.loop_write

            def probe() -> mqtt.MQTTErrorCode:
                corked.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))
                return write()

            w.paho.loop_write = probe  # type: ignore[method-assign]
            w.cork()
            asked: list[object] = []
            asks = w.paho.on_socket_register_write
            w.paho.on_socket_register_write = lambda *args: asked.append(args)
            landings = [Noted() for _ in range(5)]
            props = PackedProperties([("ts", "2026-01-01T00:00:00.000Z"), ("gw", test_id)], 0)
            with w.written_at_once():
                for i, landing in enumerate(landings):
                    info = w.publish(f"{test_id}/w/n", str(i), 1, False, props)
                    assert info.rc == 0
                    w.track(info.mid, landing)
            w.paho.on_socket_register_write = asks
            assert asked == []  # no asyncio writer for what fitted the socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK) == 0
            async with asyncio.timeout(10):
                for landing in landings:
                    await landing.landed.wait()
            assert all(landing.refused is None for landing in landings)

    try:
        await on_asyncio(scenario)
    finally:
        broker.stop()
    assert corked[:1] == [1]


def test_packed_properties_encode_as_paho_would() -> None:
    user = [("ts", "2026-01-01T00:00:00.000Z"), ("gw", "gw-01")]
    packed = PackedProperties(user, 60)
    plain = properties(PacketTypes.PUBLISH)
    plain.UserProperty = user
    plain.MessageExpiryInterval = 60
    assert packed.pack() == plain.pack()  # type: ignore[no-untyped-call]
    assert packed.UserProperty == user
    no_expiry = properties(PacketTypes.PUBLISH)
    no_expiry.UserProperty = user
    assert PackedProperties(user, 0).pack() == no_expiry.pack()  # type: ignore[no-untyped-call]
