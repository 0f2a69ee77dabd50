"""End to end: what MQTT consumers see of a reading's time, with `gateway run` as a process.

An independent MQTT 5 subscriber (paho) reads the user properties ``ts`` and
``gw`` on every message, and on messages replayed after a broker outage ``ts``
is still the reading's receive time. With 3.1.1 and plain payloads the bytes
on the wire are what they always were. A topic the broker's ACL denies is
refused in the PUBACK: a dead letter, counted and on the status page.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from gateway.records import rfc3339_ms
from tests.faults.proxy import Proxy
from tests.services import Broker, free_port
from tests.sinks.test_mqtt import CONNECT, PUBLISH, protocol_level, publish_fields, take_packets
from tests.support import DESIGN_EXAMPLE, base_config, gateway_cli, wait_until
from tests.test_e2e import scrape

# A packet every 0.1 s whose a/n is its number: every message is unique.
COUNTING_CHILD = """
import json, time
n = 0
while True:
    n += 1
    print(json.dumps({"v": 1, "seq": n, "a": {"n": n}}), flush=True)
    time.sleep(0.1)
"""
# The DESIGN.md example: 9 messages, in this order.
EXAMPLE_MESSAGES = [
    ("node1/temperature", "26.7"),
    ("node1/humidity", "55.4"),
    ("node1/gas_resistance", "101169"),
    ("node2/temperature", "24.3"),
    ("node2/pressure", "1013.25"),
    ("signal/rssi", "-33"),
    ("signal/snr", "13"),
    ("stats/packets_received", "42"),
    ("stats/crc_errors", "0"),
]


@dataclass(frozen=True)
class Received:
    topic: str
    payload: str
    properties: dict[str, str]  # the user properties
    at_ns: int  # when the subscriber got it


class V5Subscriber:
    """An independent MQTT 5 subscriber (paho, ``protocol=MQTTv5``) on its own thread."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(15):
            raise TimeoutError("no SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        props = dict(getattr(message.properties, "UserProperty", []))
        got = Received(message.topic, message.payload.decode(), props, time.time_ns())
        with self._lock:
            self.messages.append(got)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def data(self) -> list[Received]:
        """The readings (not the gateway's presence messages)."""
        return [m for m in self.snapshot() if "/gateway/" not in m.topic]

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float) -> bool:
        return wait_until(lambda: predicate(self.data()), timeout, interval=0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class WireRecorder(Proxy):
    """A proxy that keeps every byte the gateway sends to the broker."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self.sent = bytearray()

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        to_broker = dst.socket.getpeername()[1] == self.target
        try:
            while data := await src.receive_some(65536):
                if to_broker:
                    self.sent += data
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


def figure(port: int, key: tuple[str, tuple[tuple[str, str], ...]]) -> float | None:
    """One sample of a gateway's /metrics (None while it does not listen yet)."""
    try:
        return scrape(port).get(key)
    except OSError:
        return None


def export(buffer_dir: Path) -> list[dict[str, Any]]:
    """`gateway buffer export` of the MQTT buffer (safe while the gateway runs)."""
    out = gateway_cli("buffer", "export", "--sink", "mqtt", "--buffer-dir", str(buffer_dir))
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [line for line in lines if line.get("sink") == "mqtt"]


def counting_config(tmp_path: Path, test_id: str, port: int, tsdb_url: str) -> dict[str, Any]:
    child = tmp_path / "counting.py"
    child.write_text(COUNTING_CHILD)
    return base_config(tmp_path, test_id, port, tsdb_url, [sys.executable, str(child)])


def file_config(tmp_path: Path, test_id: str, port: int, tsdb_url: str) -> dict[str, Any]:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(DESIGN_EXAMPLE + b"\n")
    cfg = base_config(tmp_path, test_id, port, tsdb_url, ["unused"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    return cfg


def test_mqtt5_every_message_carries_ts_and_gw_and_a_replay_keeps_the_readings_time(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    proxy = Proxy(broker.port).start()  # holds the gateway off a healed broker
    cfg = counting_config(tmp_path, test_id, proxy.port, tsdb.url)
    status_port = free_port()
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    topic = f"{test_id}/a/n"
    sub = V5Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: len(m) >= 5, 30), gw.log_text()
        live = sub.data()
        sub.close()

        def metric(name: str) -> float:
            return figure(status_port, (name, ())) or 0.0

        # The broker goes away; readings wait in the buffer.
        broker.stop()
        assert wait_until(lambda: metric("gateway_mqtt_connected") == 0.0, 30), gw.log_text()
        assert wait_until(lambda: metric("gateway_mqtt_buffered_messages") >= 10, 30)
        waiting = export(tmp_path / "buffer")
        assert len(waiting) >= 10
        assert all("~" not in r["stamp"] for r in waiting)  # the clock is right here

        proxy.set_mode("refuse")
        broker.start()
        back_ns = time.time_ns()
        sub = V5Subscriber(broker.port, f"{test_id}/#")
        proxy.set_mode("heal")
        last = waiting[-1]["payload"]
        assert sub.wait_for(lambda m: any(r.payload == last for r in m), 30), gw.log_text()
        replayed = {r.payload: r for r in sub.data()}
    finally:
        code = gw.terminate()
        sub.close()
        proxy.close()
    assert code == 0, gw.log_text()

    # Every message, live or replayed, says when its reading arrived and from where.
    for got in [*live, *replayed.values()]:
        assert got.topic == topic
        assert set(got.properties) == {"ts", "gw"}, got
        assert got.properties["gw"] == test_id
    # A replayed message carries its reading's receive time, from before the
    # broker came back, not the time it was sent again.
    for record in waiting:
        got = replayed[record["payload"]]
        assert got.properties["ts"] == rfc3339_ms(record["received_ns"])
        assert record["received_ns"] < back_ns < got.at_ns


def test_mqtt5_json_payload_carries_the_same_time_as_the_ts_property(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg = file_config(tmp_path, test_id, broker.port, tsdb.url)
    cfg["mqtt"]["payload"] = "json"
    sub = V5Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: len(m) >= 9, 30), gw.log_text()
    finally:
        assert gw.terminate() == 0
        sub.close()
    got = sub.data()
    assert [(m.topic, json.loads(m.payload)["value"]) for m in got] == [
        (f"{test_id}/{t}", json.loads(v)) for t, v in EXAMPLE_MESSAGES
    ]
    for m in got:
        assert json.loads(m.payload)["ts"] == m.properties["ts"]
    assert len({m.properties["ts"] for m in got}) == 1  # one packet, one time


def test_mqtt_3_1_1_plain_bytes_on_the_wire_are_unchanged(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """3.1.1 QoS 1 retained PUBLISH: 0x33, length, topic, packet id, the number as text."""
    recorder = WireRecorder(broker.port).start()
    cfg = file_config(tmp_path, test_id, recorder.port, tsdb.url)
    cfg["mqtt"]["protocol"] = "3.1.1"
    sub = V5Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: len(m) >= 9, 30), gw.log_text()
    finally:
        assert gw.terminate() == 0
        sub.close()
        recorder.close()
    packets = take_packets(bytearray(recorder.sent))
    connects = [p for kind, p in packets if kind == CONNECT]
    assert [protocol_level(c) for c in connects] == [4]
    publishes = [(*publish_fields(p, v5=False), p) for kind, p in packets if kind == PUBLISH]
    data = [(t, mid, payload, p) for t, mid, _, payload, p in publishes if "/gateway/" not in t]
    assert [(t, payload.decode()) for t, _, payload, _ in data] == [
        (f"{test_id}/{t}", v) for t, v in EXAMPLE_MESSAGES
    ]
    for topic, mid, payload, packet in data:
        body = len(topic).to_bytes(2, "big") + topic.encode() + mid.to_bytes(2, "big") + payload
        assert len(body) < 128  # one length byte
        assert packet == bytes([0x33, len(body)]) + body
    # A 3.1.1 subscriber's view is the seed's: and there are no properties to see.
    assert all(m.properties == {} for m in sub.data())


def test_mqtt5_a_topic_the_acl_denies_is_refused_dead_lettered_and_shown(
    tmp_path: Path, tsdb, test_id, gateway_factory
) -> None:
    """Mosquitto 2 answers a v5 QoS 1 publish its ACL denies with PUBACK 0x87."""
    acl = "".join(
        f"topic readwrite {test_id}/{level}/#\n"
        for level in ("node1", "signal", "stats", "gateway")
    )
    (tmp_path / "acl").write_text(acl)
    broker = Broker(
        tmp_path,
        # Stock Mosquitto's in-flight limit, announced as its Receive Maximum.
        # As root, mosquitto would drop to a user that cannot read tmp_path.
        extra_conf=f"acl_file {tmp_path / 'acl'}\nmax_inflight_messages 20\nuser root\n",
    ).start()
    cfg = file_config(tmp_path, test_id, broker.port, tsdb.url)
    status_port = free_port()
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    sub = V5Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    refused = ("gateway_mqtt_refused_total", (("code", "0x87"),))
    try:
        assert wait_until(lambda: figure(status_port, refused) == 2.0, 30), gw.log_text()
        figures = scrape(status_port)
        assert figures[("gateway_mqtt_published_total", ())] == 7.0
        assert figures[("gateway_mqtt_dead_letter_total", ())] == 2.0
        assert figures[("gateway_mqtt_window", ())] == 20.0
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status", timeout=5) as r:
            mqtt = json.load(r)["sinks"]["mqtt"]
        assert (mqtt["protocol"], mqtt["window"], mqtt["refused"]) == ("5", 20, 2)
        assert (mqtt["delivered"], mqtt["dead_letters"]) == (7, 2)
        assert sub.wait_for(lambda m: len(m) >= 7, 30)
    finally:
        assert gw.terminate() == 0
        sub.close()
        broker.stop()
    assert [m.topic for m in sub.data()] == [
        f"{test_id}/{t}" for t, _ in EXAMPLE_MESSAGES if not t.startswith("node2/")
    ]
    dead = (tmp_path / "buffer" / "dead-letter" / "mqtt.txt").read_text().splitlines()
    assert dead == [
        f"{test_id}/node2/temperature 24.3 (refused by the broker: PUBACK 0x87 Not authorized)",
        f"{test_id}/node2/pressure 1013.25 (refused by the broker: PUBACK 0x87 Not authorized)",
    ]
    log = gw.log_text()
    assert "window 20 (mqtt.max_inflight 200, capped by the broker's Receive Maximum 20)" in log
    assert "can never be published" in log


def test_mqtt5_while_the_clock_is_not_known_right_ts_is_the_best_known_and_says_so(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg = file_config(tmp_path, test_id, broker.port, tsdb.url)
    # The clock counts as right only while this file exists: it never does.
    cfg["gateway"]["clock_sync"] = "file"
    cfg["gateway"]["clock_sync_file"] = str(tmp_path / "synchronized")
    sub = V5Subscriber(broker.port, f"{test_id}/#")
    before = rfc3339_ms(time.time_ns())
    gw = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: len(m) >= 9, 30), gw.log_text()
    finally:
        assert gw.terminate() == 0
        sub.close()
    for m in sub.data():
        assert m.properties["clock"] == "unsynced"
        assert m.properties["ts"] >= before  # the best-known time: this machine's clock
        assert m.properties["gw"] == test_id
