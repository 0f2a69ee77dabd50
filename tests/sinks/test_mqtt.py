"""The MQTT sink's window publish against a real broker, with and without aiomqtt internals.

The fast path queues a window on aiomqtt's paho client and waits on one event;
the fallback (used if those internals ever disappear) publishes each message
through aiomqtt's public API. Both must deliver everything, in order, and empty
the buffer only through PUBACKs.
"""

from __future__ import annotations

from pathlib import Path

import aiomqtt
import pytest
import trio
import trio_asyncio

from gateway.buffer import DiskBuffer
from gateway.config import MqttSection
from gateway.deadletter import DeadLetterFile
from gateway.metrics import Metrics
from gateway.sinks import mqtt as mqtt_sink
from gateway.sinks.mqtt import MqttSink
from tests.conftest import Subscriber


@pytest.mark.parametrize("window_api", [True, False], ids=["window", "per-message"])
async def test_windows_deliver_everything_in_order(
    tmp_path: Path, broker, test_id: str, monkeypatch: pytest.MonkeyPatch, window_api: bool
) -> None:
    assert mqtt_sink._WINDOW_API, "aiomqtt's internals changed: the fast path is off"
    monkeypatch.setattr(mqtt_sink, "_WINDOW_API", window_api)
    cfg = MqttSection(
        host="127.0.0.1",
        port=broker.port,
        client_id=f"{test_id}-gw",
        topic_prefix=test_id,
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    buffer = await DiskBuffer.open(tmp_path / "buffer", max_records=10_000, name="mqtt")
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
        buffer.close()


def test_only_a_connack_refusal_gets_the_credentials_hint() -> None:
    from aiomqtt.exceptions import MqttConnectError

    # CONNACK 4 (3.1.1) and 134 (MQTT 5): bad user name or password.
    assert "mqtt.password_file" in mqtt_sink.describe_error(MqttConnectError(4))
    # paho's rc 4 on a publish means "not connected": no credentials hint.
    text = mqtt_sink.describe_error(aiomqtt.MqttCodeError(4, "Could not publish message"))
    assert "password" not in text


def test_json_payload_format() -> None:
    from gateway.records import RecordStamp, json_payload

    ns = 1_795_773_905_582_000_000
    assert (
        json_payload("iiot/node1/temperature", "26.7", RecordStamp(ns))
        == '{"value":26.7,"unit":"celsius","ts":"2026-11-27T10:05:05.582Z"}'
    )
    assert json_payload("iiot/stats/crc_errors", "0", RecordStamp(ns)) == (
        '{"value":0,"ts":"2026-11-27T10:05:05.582Z"}'
    )
    unsynced = RecordStamp(ns, "abcd1234", 5)
    assert json_payload("iiot/a/b", "-3", unsynced).endswith('"clock":"unsynced"}')
    assert json_payload("iiot/alerts/x", '{"state":"firing"}', RecordStamp(ns)) == (
        '{"state":"firing"}'
    )
