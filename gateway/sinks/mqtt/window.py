"""The sliding window's parts, and the aiomqtt and paho internals it relies on.

aiomqtt has no public API for queueing many messages at once and reading
their PUBACKs (its ``publish()`` costs an asyncio task, an Event and a timer
per message). The window uses its paho client and its pending-publish map:
:data:`WINDOW_API` says at import whether they are there, and the sink falls
back to one aiomqtt ``publish()`` per message when they are not.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.buffer import Record

# The aiomqtt and paho internals MqttSink._send relies on (aiomqtt 2.x, paho
# 2.x); without them the sink falls back to one aiomqtt publish() per message.
WINDOW_API = (
    hasattr(aiomqtt.Client, "_on_publish")
    and {"_client", "_pending_publishes"} <= set(aiomqtt.Client.__init__.__code__.co_names)
    and "_registered_write" in mqtt.Client.__init__.__code__.co_names
)


class InFlight:
    """One message sent and not acknowledged yet; stands in for aiomqtt's Event.

    aiomqtt's on_publish dispatch calls :meth:`set` with the PUBACK, in this
    thread: it only notes it and wakes the sink, which acknowledges records
    in order. A record that is no message, or that paho refuses, counts as
    landed at once and carries its ``dead`` letter.
    """

    __slots__ = ("acked", "dead", "mid", "record", "refused", "window")

    def __init__(self, record: Record, window: Window) -> None:
        self.record = record
        self.window = window
        self.acked = False
        self.mid: int | None = None
        self.dead: str | None = None
        self.refused: ReasonCode | None = None  # the PUBACK's reason code, if a refusal

    def set(self) -> None:
        self.acked = True
        self.window.wake.set()


class Window:
    """What one connection has in flight, oldest first, and the records to send next.

    ``wake`` is set by a PUBACK and by records read ahead; ``hungry`` asks
    for more records once fewer than a window's worth wait in ``ahead``.
    """

    __slots__ = ("ahead", "generation", "hungry", "progress_at", "size", "slots", "wake")

    def __init__(self, generation: int, size: int) -> None:
        self.generation = generation  # the buffer's numbering the keys belong to
        self.size = size
        self.slots: deque[InFlight] = deque()
        self.ahead: deque[Record] = deque()
        self.wake = trio.Event()
        self.hungry = trio.Event()
        self.progress_at = 0.0  # trio time of the last PUBACK or of a send into an empty window

    def take(self, n: int) -> list[Record]:
        """Up to ``n`` of the records read ahead, oldest first."""
        ahead = self.ahead
        batch = [ahead.popleft() for _ in range(min(n, len(ahead)))]
        if len(ahead) < self.size:
            self.hungry.set()
        return batch

    def forget(self, pending: dict[int, InFlight]) -> None:
        """Drop what is in flight and read ahead; out of aiomqtt's map (mids are reused)."""
        for slot in self.slots:
            if slot.mid is not None and pending.get(slot.mid) is slot:
                del pending[slot.mid]
        self.slots.clear()
        self.ahead.clear()
        self.hungry.set()


def note_refusals(paho: mqtt.Client, pending: Mapping[int, object]) -> None:
    """Mark a message the broker refused (PUBACK reason code ≥ 0x80) before aiomqtt sees it.

    aiomqtt's on_publish drops the reason code and would count the refusal
    as a delivery (an MQTT 5 broker says 0x87 "Not authorized" to a topic
    its ACL denies). 3.1.1 PUBACKs carry no code: paho reports success.
    """
    forward = cast("Callable[..., None]", paho.on_publish)

    def on_publish(
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            # Only the window's messages: presence and discovery publishes
            # wait on aiomqtt's own events in the same map.
            slot = pending.get(mid)
            if isinstance(slot, InFlight):
                slot.refused = reason_code
        forward(client, userdata, mid, reason_code, properties)

    paho.on_publish = on_publish


@contextlib.contextmanager
def written_at_once(paho: mqtt.Client) -> Iterator[None]:
    """Write what is published in the block when it ends, without an asyncio writer.

    The first publish() on an idle socket asks aiomqtt to watch it for
    writability; trio-asyncio starts a task for every such watch, which the
    write then cancels. With a window of 20 that happens every few messages:
    the MQTT 5 drain on a stock broker went from 15,208 to 17,725 msg/s
    without it (`make bench`, one machine). Inside
    the block paho is told a watch is already there; at its end the queued
    packets are written straight away. Only what the socket cannot take yet
    (a full send buffer) gets a real watch, from paho's loop_write().
    """
    registered = paho._registered_write
    paho._registered_write = True
    try:
        yield
    finally:
        paho._registered_write = registered
        paho.loop_write()


def cork_writes(paho: mqtt.Client) -> None:
    """Let the messages paho writes in one go leave in as few TCP segments as fit.

    paho sends each packet with its own send(), and TCP_NODELAY (which a
    window needs) makes each one a segment of its own: on loopback a tenth of
    the CPU per message, on a radio link a packet per message. Corked for the
    duration of one loop_write() (aiomqtt calls it when the socket can take
    more), the kernel packs them and sends the lot when uncorked, at once.
    """
    cork = getattr(socket, "TCP_CORK", None)  # Linux
    sock = paho.socket()
    if cork is None or not isinstance(sock, socket.socket):  # (or a WebSocket)
        return
    write = paho.loop_write

    def loop_write() -> MQTTErrorCode:
        with contextlib.suppress(OSError):  # a closed socket: paho reports it
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
        try:
            return write()
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)

    paho.loop_write = loop_write  # type: ignore[method-assign]
