"""The MQTT sink's window against a real broker.

The window keeps a sliding window of messages queued on aiomqtt's paho
client (through gateway.sinks.mqtt.wire, tested on its own in test_wire.py).
It must deliver everything, in order, and empty the buffer only through
PUBACKs. A proxy that holds the broker's
PUBACKs until the test releases them shows the window slide: one PUBACK lets
exactly one more message go, never more than the window is in flight, the
buffer is acknowledged once per batch of PUBACKs, and a dropped connection
sends the unacknowledged window again.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trio
import trio_asyncio

from gateway.buffer import DiskBuffer, Record, open_buffer
from gateway.config.sections import MqttSection
from gateway.deadletter import DeadLetterFile
from gateway.metrics import Metrics
from gateway.sinks import mqtt as mqtt_sink
from gateway.sinks.mqtt import MqttSink
from gateway.sinks.mqtt.wire import Wire
from tests.support import Subscriber


def sink_config(port: int, test_id: str, **overrides: Any) -> MqttSection:
    """[mqtt] for a sink under test on 127.0.0.1:``port``, quick to reconnect."""
    values: dict[str, Any] = {"backoff_initial": 0.1, "backoff_max": 0.5, **overrides}
    return MqttSection(
        host="127.0.0.1", port=port, client_id=f"{test_id}-gw", topic_prefix=test_id, **values
    )


async def test_windows_deliver_everything_in_order(tmp_path: Path, broker, test_id: str) -> None:
    cfg = sink_config(broker.port, test_id)
    buffer = await open_buffer(tmp_path / "buffer", max_records=10_000, name="mqtt")
    topic = f"{test_id}/t/n"
    sub = Subscriber(broker.port, f"{test_id}/t/#")
    metrics = Metrics()
    sink = MqttSink(cfg, buffer, metrics, DeadLetterFile(tmp_path / "dead"), window=64)
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            for start in range(1, 1001, 100):  # several commits, windows across them
                await buffer.append([f"{i} {topic} {i}" for i in range(start, start + 100)])
            with trio.fail_after(60):
                await buffer.count.wait_value(lambda n: n == 0)
            sink.stop()

        def payloads() -> list[str]:
            return [p for t, p in sub.snapshot() if t == topic]

        assert sub.wait_for(lambda _: len(payloads()) >= 1000, 30)
        assert payloads() == [str(i) for i in range(1, 1001)]
        assert metrics.mqtt.delivered == 1000
    finally:
        sub.close()
        buffer.store.close()


async def test_a_window_the_socket_cannot_take_at_once_is_written_as_it_drains(
    tmp_path: Path, broker, test_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window is written straight from the sink; whatever the send buffer
    # cannot take yet must still leave, through the asyncio writer paho asks
    # for. Each group the sink sends (8 messages of 4 MiB) is more than
    # loopback's socket buffers hold, the last one too.
    left_over: list[bool] = []
    real = Wire.written_at_once

    @contextlib.contextmanager
    def noting(wire: Wire):  # type: ignore[no-untyped-def]
        with real(wire):
            yield
        left_over.append(wire.paho.want_write())

    monkeypatch.setattr(Wire, "written_at_once", noting)
    cfg = sink_config(broker.port, test_id, keepalive=600)  # no PINGREQ writes what was left
    buffer = await open_buffer(tmp_path / "buffer", max_records=10_000, name="mqtt")
    topic = f"{test_id}/big/n"
    sub = Subscriber(broker.port, f"{test_id}/big/#")
    metrics = Metrics()
    sink = MqttSink(cfg, buffer, metrics, DeadLetterFile(tmp_path / "dead"), window=16)
    n, size = 24, 4 * 1024 * 1024
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            await buffer.append([f"{i} {topic} {i:06d}{'x' * size}" for i in range(n)])
            with trio.fail_after(60):
                await buffer.count.wait_value(lambda k: k == 0)
            sink.stop()

        def payloads() -> list[str]:
            return [p[:6] for t, p in sub.snapshot() if t == topic]

        assert sub.wait_for(lambda _: len(payloads()) >= n, 30)
        assert payloads() == [f"{i:06d}" for i in range(n)]
        assert all(left_over), "a group fitted the socket: the test tested less"
        # On one connection: not rescued by a reconnect after the PUBACK timeout.
        assert (metrics.mqtt.connects, metrics.mqtt.connect_failures) == (1, 0)
    finally:
        sub.close()
        buffer.store.close()


def test_only_a_connack_refusal_gets_the_credentials_hint() -> None:
    from aiomqtt.exceptions import MqttConnectError

    # CONNACK 4 (3.1.1) and 134 (MQTT 5): bad user name or password.
    assert "mqtt.password_file" in mqtt_sink.describe_error(MqttConnectError(4))
    # paho's rc 4 on a publish means "not connected": no credentials hint.
    text = mqtt_sink.describe_error(aiomqtt.MqttCodeError(4, "Could not publish message"))
    assert "password" not in text


def test_json_payload_format() -> None:
    from gateway.clock import Stamp
    from gateway.records import json_payload

    ns = 1_795_773_905_582_000_000
    assert (
        json_payload("iiot/node1/temperature", "26.7", Stamp(ns))
        == '{"value":26.7,"unit":"celsius","ts":"2026-11-27T10:05:05.582Z"}'
    )
    assert json_payload("iiot/stats/crc_errors", "0", Stamp(ns)) == (
        '{"value":0,"ts":"2026-11-27T10:05:05.582Z"}'
    )
    unsynced = Stamp(ns, 5, "abcd1234", synced=False)
    assert json_payload("iiot/a/b", "-3", unsynced).endswith('"clock":"unsynced"}')
    assert json_payload("iiot/alerts/x", '{"state":"firing"}', Stamp(ns)) == ('{"state":"firing"}')


PUBLISH, PUBACK = 0x30, 0x40


def take_packets(data: bytearray) -> list[tuple[int, bytes]]:
    """The whole MQTT packets at the start of ``data``, removed: (type, packet)."""
    out = []
    while len(data) >= 2:
        length, shift, i = 0, 0, 1
        while i < len(data) and data[i] & 0x80:
            length += (data[i] & 0x7F) << shift
            shift, i = shift + 7, i + 1
        if i >= len(data):
            break
        length += data[i] << shift
        end = i + 1 + length
        if len(data) < end:
            break
        out.append((data[0] & 0xF0, bytes(data[:end])))
        del data[:end]
    return out


CONNECT = 0x10


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """An MQTT variable byte integer at ``data[i]``: (value, index after it)."""
    value, shift = 0, 0
    while data[i] & 0x80:
        value += (data[i] & 0x7F) << shift
        shift, i = shift + 7, i + 1
    return value + (data[i] << shift), i + 1


def protocol_level(connect: bytes) -> int:
    """The protocol level of a CONNECT packet (4: 3.1.1, 5: MQTT 5)."""
    _, i = _varint(connect, 1)
    (n,) = struct.unpack("!H", connect[i : i + 2])
    return connect[i + 2 + n]


def publish_fields(packet: bytes, *, v5: bool) -> tuple[str, int, bytes, bytes]:
    """A QoS 1/2 PUBLISH packet's (topic, packet id, properties, payload)."""
    _, i = _varint(packet, 1)
    (n,) = struct.unpack("!H", packet[i : i + 2])
    topic = packet[i + 2 : i + 2 + n].decode()
    (mid,) = struct.unpack("!H", packet[i + 2 + n : i + 4 + n])
    i += 4 + n
    props = b""
    if v5:
        length, j = _varint(packet, i)
        props, i = packet[j : j + length], j + length
    return topic, mid, props, packet[i:]


class PubackGate:
    """A proxy between a sink and the broker that holds the PUBACKs of one topic.

    The test passes them on with :meth:`release`. The gate notes every message
    of that topic the sink sends, and the most that were ever in flight on one
    connection (sent, their PUBACK not passed on yet).
    """

    def __init__(self, broker_port: int, topic: str) -> None:
        self.broker_port = broker_port
        self.topic = topic
        self.port = 0
        self.sent: list[str] = []  # payloads, every connection
        self.connections = 0
        self.held: list[bytes] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._topics: dict[int, str] = {}  # mid → topic, this connection
        self._v5 = False  # this connection's protocol
        self._client: trio.SocketStream | None = None
        self._connection = trio.CancelScope()
        self._changed = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (it is checked at each packet)."""
        with trio.fail_after(30):
            while not predicate():
                await self._changed.wait()

    async def release(self, n: int) -> None:
        """Pass on the ``n`` oldest PUBACKs held, in one write."""
        assert self._client is not None
        batch, self.held = self.held[:n], self.held[n:]
        self._in_flight -= len(batch)
        await self._client.send_all(b"".join(batch))

    async def release_until_empty(self, buffer: DiskBuffer) -> None:
        """Pass on every PUBACK as it comes, each time waiting for the sink to ack it, until
        ``buffer`` is empty."""
        while buffer.count.value:
            await self.until(lambda: bool(self.held))
            left = buffer.count.value - len(self.held)
            await self.release(len(self.held))
            with trio.fail_after(30):
                await buffer.count.wait_value(lambda n, left=left: n <= left)

    def drop(self) -> None:
        """End the connection: the PUBACKs held never arrive."""
        self._connection.cancel()

    def _note(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.broker_port)
        self._client, self.held, self._in_flight, self._topics = client, [], 0, {}
        self.connections += 1
        with trio.CancelScope() as self._connection, contextlib.suppress(*_CLOSED):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._to_broker, client, upstream)
                nursery.start_soon(self._to_sink, upstream, client)
        for stream in (client, upstream):
            with contextlib.suppress(*_CLOSED):
                await stream.aclose()
        self._note()

    async def _to_broker(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        pending = bytearray()
        while data := await src.receive_some(65536):
            pending += data
            # Noted before the broker has them: their PUBACKs must be known as ours.
            for kind, packet in take_packets(pending):
                if kind == CONNECT:
                    self._v5 = protocol_level(packet) == 5
                if kind == PUBLISH:
                    topic, mid, _, payload = publish_fields(packet, v5=self._v5)
                    self._topics[mid] = topic
                    if topic == self.topic:
                        self.sent.append(payload.decode())
                        self._in_flight += 1
                        self.max_in_flight = max(self.max_in_flight, self._in_flight)
            await dst.send_all(data)
            self._note()

    async def _to_sink(self, src: trio.SocketStream, dst: trio.SocketStream) -> None:
        pending = bytearray()
        while data := await src.receive_some(65536):
            pending += data
            out = b""
            for kind, packet in take_packets(pending):
                (mid,) = struct.unpack("!H", packet[2:4]) if kind == PUBACK else (0,)
                if kind == PUBACK and self._topics.get(mid) == self.topic:
                    self.held.append(packet)
                else:
                    out += packet
            if out:
                await dst.send_all(out)
            self._note()


_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


async def test_the_window_slides_one_puback_one_message(
    tmp_path: Path, broker, test_id: str
) -> None:
    window = 10
    topic = f"{test_id}/t/n"
    gate = PubackGate(broker.port, topic)
    buffer = await open_buffer(tmp_path / "buffer", max_records=10_000, name="mqtt")
    await buffer.append([f"{i} {topic} {i}" for i in range(1, 101)])
    acks: list[int] = []
    ack = buffer.ack

    async def noted_ack(
        records: Sequence[Record], *, dead: Sequence[str] = (), more: bool = False
    ) -> None:
        acks.append(max(r.key for r in records))
        await ack(records, dead=dead, more=more)

    buffer.ack = noted_ack  # type: ignore[method-assign]
    try:
        async with trio_asyncio.open_loop(), trio.open_nursery() as servers:
            await servers.start(gate.serve)
            cfg = sink_config(
                gate.port, test_id, backoff_initial=0.05, backoff_max=0.1, max_inflight=window
            )
            sink = MqttSink(cfg, buffer, Metrics(), DeadLetterFile(tmp_path / "dead"))
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run)
                # A full window goes out, and no more while no PUBACK comes back.
                await gate.until(lambda: len(gate.held) == window)
                assert gate.sent == [str(i) for i in range(1, window + 1)]

                # One PUBACK, one more message; three in one read: three more,
                # and one acknowledgement in the buffer for the three.
                await gate.release(1)
                await gate.until(lambda: len(gate.sent) == window + 1)
                await gate.release(3)
                await gate.until(lambda: len(gate.held) == window)
                assert gate.sent == [str(i) for i in range(1, window + 5)]
                assert acks == [1, 4]

                # The link drops with a full window in flight: it goes again.
                dropped_at = len(gate.sent)
                gate.drop()
                await gate.until(lambda: gate.connections == 2 and len(gate.held) == window)
                assert gate.sent[dropped_at:] == [str(i) for i in range(5, 5 + window)]

                # Then everything lands, in order.
                await gate.release_until_empty(buffer)
                sink.stop()
            servers.cancel_scope.cancel()
    finally:
        buffer.store.close()
    again = gate.sent[dropped_at : dropped_at + window]
    assert gate.sent[:dropped_at] + gate.sent[dropped_at + window :] == [
        str(i) for i in range(1, 101)
    ]
    assert again == gate.sent[4:dropped_at]  # the window in flight, nothing else
    assert gate.max_in_flight == window
    assert acks == sorted(acks)
    assert acks[-1] == 100
