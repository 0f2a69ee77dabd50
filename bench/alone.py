"""The design's MQTT client alone: paho draining a backlog with nothing else to do.

This is the ceiling of any gateway built on paho (aiomqtt is paho inside):
the same QoS 1 messages and the same window as the gateway's drain, sent
from a tight loop. There is no buffer, no event loop and no second sink,
and the MQTT 5 properties are encoded once for all messages. ``python -m bench
drain`` measures it on each drain path, next to the gateway and mosquitto_pub.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from gateway.config.sections import DEFAULT_MAX_INFLIGHT as WINDOW  # the gateway's own window
from gateway.sinks.mqtt.wire import PackedProperties

METRICS = ("temperature", "humidity", "pressure", "gas", "rssi", "snr", "seq", "received", "lost")


def publish_alone(port: int, prefix: str, n: int, protocol: str) -> int:
    """Publish ``n`` QoS 1 messages under ``prefix`` and wait for every PUBACK.

    The window is :data:`WINDOW`, or the broker's Receive Maximum under
    MQTT 5 if that is lower, as it is for the gateway. Returns the window.
    """
    version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=version)
    client.max_inflight_messages_set(0)  # the loop below keeps the window
    client.max_queued_messages_set(0)
    window = WINDOW
    acked = 0

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        nonlocal window
        window = min(WINDOW, getattr(props, "ReceiveMaximum", WINDOW) if props else WINDOW)

    def on_publish(c: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        acked += 1

    client.on_connect = on_connect
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    deadline = time.monotonic() + 30
    while not client.is_connected():
        client.loop(0.1)
        if time.monotonic() > deadline:
            raise TimeoutError("no CONNACK")
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as the gateway's
    properties: Properties | None = None
    if version == mqtt.MQTTv5:
        properties = PackedProperties([("ts", "2026-01-01T00:00:00.000Z"), ("gw", "bench")], 0)
    topics = [f"{prefix}/node1/{metric}" for metric in METRICS]
    sent = 0
    give_up = time.monotonic() + 600
    while acked < n:
        while sent < n and sent - acked < window:
            client.publish(topics[sent % len(topics)], f"{sent}.5", 1, False, properties)
            sent += 1
        readable, writable, _ = select.select(
            [sock], [sock] if client.want_write() else [], [], 1.0
        )
        if readable:
            client.loop_read(window)
        if writable:
            client.loop_write()
        if time.monotonic() > give_up:
            raise TimeoutError(f"{acked} of {n} acknowledged")
    client.disconnect()
    return window


if __name__ == "__main__":
    # A process of its own, like the gateway's: the counting subscriber in the
    # benchmark's process must not take this loop's interpreter.
    import sys

    port_arg, prefix_arg, n_arg, protocol_arg = sys.argv[1:5]
    print(publish_alone(int(port_arg), prefix_arg, int(n_arg), protocol_arg))
