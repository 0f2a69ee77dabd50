"""MQTT 5 in the sink: the fallback to 3.1.1, sessions, Receive Maximum, PUBACK refusals.

A broker that refuses protocol 5 is a small server of the test's own
(Mosquitto cannot be configured to refuse it): it answers an MQTT 5 CONNECT
with a refusal and forwards 3.1.1 connections to a real Mosquitto. The rest
runs against real Mosquitto brokers, configured per test.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import trio
import trio_asyncio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.buffer import DiskBuffer, open_buffer
from gateway.clock import Stamp
from gateway.config.sections import MqttSection
from gateway.deadletter import DeadLetterFile, DeadLetterMover
from gateway.metrics import Metrics
from gateway.sinks.mqtt import MqttSink
from tests.services import Broker
from tests.sinks.test_mqtt import CONNECT, PubackGate, _varint, protocol_level, take_packets
from tests.support import Subscriber

_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
# What a broker says to a protocol level it does not speak: a 3.1.1 broker
# (and Mosquitto 2 to an unknown level) answers CONNACK return code 1; an
# MQTT 5 broker that will not speak 5 to this client answers reason 0x84.
REFUSALS = {"3.1.1 rc 1": bytes.fromhex("20020001"), "5.0 rc 0x84": bytes.fromhex("2003008400")}


class NoFiveBroker:
    """Refuses every MQTT 5 CONNECT; forwards other connections to a real broker.

    Notes each CONNECT it sees (``connects``), so a test can tell what the
    client tried, in which order, and with which flags.
    """

    def __init__(self, broker_port: int, refusal: bytes) -> None:
        self.broker_port = broker_port
        self.refusal = refusal
        self.port = 0
        self.connects: list[bytes] = []
        self._connection = trio.CancelScope()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def levels(self) -> list[int]:
        """The protocol level of each CONNECT, oldest first."""
        return [protocol_level(c) for c in self.connects]

    def drop(self) -> None:
        """End the forwarded connection (the client must reconnect)."""
        self._connection.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        data = bytearray()
        with contextlib.suppress(*_CLOSED):
            while not (packets := take_packets(data)):
                chunk = await client.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            (kind, connect), rest = packets[0], b"".join(p for _, p in packets[1:]) + data
            assert kind == CONNECT
            self.connects.append(connect)
            if protocol_level(connect) == 5:
                await client.send_all(self.refusal)
                await client.aclose()
                return
            upstream = await trio.open_tcp_stream("127.0.0.1", self.broker_port)
            await upstream.send_all(connect + rest)
            with trio.CancelScope() as self._connection:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
            for stream in (client, upstream):
                await stream.aclose()


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    with contextlib.suppress(*_CLOSED):
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    scope.cancel()


def connect_flags(connect: bytes) -> int:
    """The Connect Flags byte of a CONNECT packet (0x02: clean session / clean start)."""
    _, i = _varint(connect, 1)
    (n,) = struct.unpack("!H", connect[i : i + 2])
    return connect[i + 3 + n]


def connect_properties(connect: bytes) -> bytes:
    """The raw properties of an MQTT 5 CONNECT packet."""
    _, i = _varint(connect, 1)
    (n,) = struct.unpack("!H", connect[i : i + 2])
    length, j = _varint(connect, i + 2 + n + 1 + 1 + 2)
    return connect[j : j + length]


def config(port: int, test_id: str, **extra: object) -> MqttSection:
    return MqttSection(
        host="127.0.0.1",
        port=port,
        client_id=f"{test_id}-gw",
        topic_prefix=test_id,
        backoff_initial=0.05,
        backoff_max=0.1,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("refusal", list(REFUSALS.values()), ids=list(REFUSALS))
async def test_a_broker_that_refuses_5_is_spoken_to_in_3_1_1_from_then_on(
    tmp_path: Path, broker, test_id: str, refusal: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.sinks.mqtt")
    topic = f"{test_id}/t/n"
    fake = NoFiveBroker(broker.port, refusal)
    buffer = await open_buffer(tmp_path / "buffer", max_records=1000, name="mqtt")
    sub = Subscriber(broker.port, f"{test_id}/t/#")
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as servers:
            await servers.start(fake.serve)
            sink = MqttSink(
                config(fake.port, test_id), buffer, Metrics(), DeadLetterFile(tmp_path / "d")
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run)
                await buffer.append([f"{i} {topic} {i}" for i in range(1, 11)])
                with trio.fail_after(30):
                    await buffer.count.wait_value(lambda n: n == 0)
                assert fake.levels() == [5, 4]
                assert sink.figures.protocol == "3.1.1"
                # A later reconnect does not try 5 again.
                fake.drop()
                with trio.fail_after(30):
                    await sink.connected_value.wait_value(False)
                    await sink.connected_value.wait_value(True)
                assert len(fake.connects) == 3
                await buffer.append([f"{i} {topic} {i}" for i in range(11, 21)])
                with trio.fail_after(30):
                    await buffer.count.wait_value(lambda n: n == 0)
                sink.stop()
            servers.cancel_scope.cancel()
        assert fake.levels() == [5, 4, 4]
        assert sub.wait_for(lambda m: len([t for t, _ in m if t == topic]) >= 20, 30)
        assert [p for t, p in sub.snapshot() if t == topic] == [str(i) for i in range(1, 21)]
    finally:
        sub.close()
        buffer.store.close()
    refused = [r for r in caplog.records if "refused MQTT 5" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert refused[0].levelno == logging.WARNING
    connected = [r.getMessage() for r in caplog.records if "connected to" in r.getMessage()]
    assert connected
    assert all("(MQTT 3.1.1)" in line for line in connected)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_every_connection_starts_a_clean_session_that_ends_with_it(
    tmp_path: Path, broker, test_id: str, protocol: str
) -> None:
    """No session outlives the connection: the broker keeps nothing for the gateway.

    A persistent session would only make the broker (and paho) resend what
    the buffer resends anyway (see docs/architecture.md, "Sessions").
    """
    cfg = config(0, test_id, protocol=protocol)
    fake = NoFiveBroker(broker.port, REFUSALS["5.0 rc 0x84"])  # only to read the CONNECT
    # MQTT 5 CONNECTs go straight to the broker; the fake one notes 3.1.1 ones.
    buffer = await open_buffer(tmp_path / "buffer", max_records=1000, name="mqtt")
    gate = PubackGate(broker.port, f"{test_id}/none")
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as servers:
            await servers.start(fake.serve)
            await servers.start(gate.serve)
            port = gate.port if protocol == "5" else fake.port
            sink = MqttSink(
                config(port, test_id, protocol=protocol),
                buffer,
                Metrics(),
                DeadLetterFile(tmp_path / "d"),
            )
            connects: list[bytes] = []
            seen = gate._to_broker

            async def noting(src: trio.SocketStream, dst: trio.SocketStream) -> None:
                first = await src.receive_some(65536)
                connects.append(first)
                await dst.send_all(first)
                await seen(src, dst)

            gate._to_broker = noting  # type: ignore[method-assign]
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run)
                with trio.fail_after(30):
                    await sink.connected_value.wait_value(True)
                sink.stop()
            servers.cancel_scope.cancel()
    finally:
        buffer.store.close()
    connect = (connects if protocol == "5" else fake.connects)[0]
    assert connect_flags(connect) & 0x02  # clean session (3.1.1) / clean start (5)
    if protocol == "5":
        # Session Expiry Interval (0x11) 0, said on purpose; nothing else.
        assert connect_properties(connect) == bytes.fromhex("1100000000")

    # What the broker kept: a client taking over the id without a clean start
    # would be told "session present" if the gateway had left one behind.
    present: list[bool] = []
    probe = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=cfg.client_id,
        protocol=paho.MQTTv5 if protocol == "5" else paho.MQTTv311,
        **({} if protocol == "5" else {"clean_session": False}),
    )
    probe.on_connect = lambda c, u, flags, rc, props: present.append(flags.session_present)
    probe.connect("127.0.0.1", broker.port, clean_start=False if protocol == "5" else 3)
    try:
        while not present:
            probe.loop(0.1)
    finally:
        probe.disconnect()
    assert present == [False]


@pytest.mark.parametrize(("protocol", "window"), [("5", 5), ("3.1.1", 8)])
async def test_the_window_is_capped_at_the_brokers_receive_maximum(
    tmp_path: Path, test_id: str, protocol: str, window: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Mosquitto announces its max_inflight_messages as Receive Maximum (5 here)."""
    caplog.set_level(logging.INFO, logger="gateway.sinks.mqtt")
    broker = Broker(tmp_path, extra_conf="max_inflight_messages 5\n").start()
    topic = f"{test_id}/t/n"
    gate = PubackGate(broker.port, topic)
    buffer = await open_buffer(tmp_path / "buffer", max_records=1000, name="mqtt")
    await buffer.append([f"{i} {topic} {i}" for i in range(1, 41)])
    metrics = Metrics()
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as servers:
            await servers.start(gate.serve)
            cfg = config(gate.port, test_id, protocol=protocol, max_inflight=8)
            sink = MqttSink(cfg, buffer, metrics, DeadLetterFile(tmp_path / "d"))
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run)
                await gate.until(lambda: len(gate.held) == window)
                assert metrics.mqtt.window == window
                await gate.release_until_empty(buffer)
                sink.stop()
            servers.cancel_scope.cancel()
    finally:
        buffer.store.close()
        broker.stop()
    assert gate.max_in_flight == window
    assert gate.sent == [str(i) for i in range(1, 41)]
    line = next(r.getMessage() for r in caplog.records if "connected to" in r.getMessage())
    if protocol == "5":
        assert f"window {window} (mqtt.max_inflight 8, capped by the broker's Receive" in line
    else:
        assert f"window {window};" in line


async def test_a_puback_refusal_is_a_dead_letter_not_a_delivery(
    tmp_path: Path, test_id: str
) -> None:
    """Mosquitto 2 answers an MQTT 5 publish its ACL denies with PUBACK 0x87."""
    (tmp_path / "acl").write_text(f"topic readwrite {test_id}/ok/#\n")
    # As root, mosquitto would drop to a user that cannot read tmp_path.
    broker = Broker(tmp_path, extra_conf=f"acl_file {tmp_path / 'acl'}\nuser root\n").start()
    ok, denied = f"{test_id}/ok/n", f"{test_id}/denied/n"
    buffer = await open_buffer(tmp_path / "buffer", max_records=1000, name="mqtt")
    records = [f"{i} {denied if i % 3 == 0 else ok} {i}" for i in range(1, 31)]
    await buffer.append(records)
    metrics = Metrics()
    dead = DeadLetterFile(tmp_path / "dead" / "mqtt.txt")
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            sink = MqttSink(config(broker.port, test_id), buffer, metrics, dead)
            assert buffer.dead is not None
            await nursery.start(sink.run)
            await nursery.start(DeadLetterMover(buffer.dead, dead, metrics.mqtt).run)
            with trio.fail_after(30):
                await buffer.count.wait_value(lambda n: n == 0)
                # A figure, with no event to wait on: counted once acked into the store.
                while metrics.mqtt.dead_letters < 10:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                await buffer.dead.count.wait_value(lambda n: n == 0)
            sink.stop()
            nursery.cancel_scope.cancel()
    finally:
        buffer.store.close()
        broker.stop()
    # 0x10 "No matching subscribers" (nobody listens on the allowed topic) is
    # a success: those ten count as delivered.
    assert metrics.mqtt.delivered == 20
    assert metrics.mqtt.dead_letters == 10
    assert metrics.mqtt.refused.values == {("0x87",): 10}
    lines = (tmp_path / "dead" / "mqtt.txt").read_text().splitlines()
    assert lines == [
        f"{denied} {i} (refused by the broker: PUBACK 0x87 Not authorized)" for i in range(3, 31, 3)
    ]


def test_message_properties_carry_the_readings_time_and_expire_only_if_not_retained() -> None:
    ns = 1_795_773_905_582_000_000
    cfg = MqttSection(message_expiry=60)
    buffer = object.__new__(DiskBuffer)  # never used: properties need no buffer
    sink = MqttSink(cfg, buffer, Metrics(), DeadLetterFile(Path("unused")), gateway_id="gw-7")
    props = sink.message_properties(Stamp(ns), retained=False)
    assert props is not None
    assert props.UserProperty == [("ts", "2026-11-27T10:05:05.582Z"), ("gw", "gw-7")]
    assert props.MessageExpiryInterval == 60
    # Encoded once, as paho would encode it each time.
    fresh = Properties(PacketTypes.PUBLISH)
    fresh.UserProperty = [("ts", "2026-11-27T10:05:05.582Z"), ("gw", "gw-7")]
    fresh.MessageExpiryInterval = 60
    assert props.pack() == fresh.pack()
    retained = sink.message_properties(Stamp(ns), retained=True)
    assert retained is not None
    assert not hasattr(retained, "MessageExpiryInterval")  # it would delete the value
    unsynced = sink.message_properties(Stamp(ns, 5, "abcd1234", synced=False), retained=True)
    assert unsynced is not None
    assert unsynced.UserProperty == [
        ("ts", "2026-11-27T10:05:05.582Z"),
        ("gw", "gw-7"),
        ("clock", "unsynced"),
    ]
    never = MqttSink(MqttSection(), buffer, Metrics(), DeadLetterFile(Path("unused")))
    no_expiry = never.message_properties(Stamp(ns), retained=False)
    assert no_expiry is not None
    assert not hasattr(no_expiry, "MessageExpiryInterval")
    v311 = MqttSink(
        MqttSection(protocol="3.1.1"), buffer, Metrics(), DeadLetterFile(Path("unused"))
    )
    assert v311.message_properties(Stamp(ns), retained=False) is None
