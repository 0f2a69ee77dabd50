"""The one place that uses aiomqtt's and paho's internals: the window's way onto the wire.

aiomqtt has no public API for queueing many messages at once and reading
their PUBACKs (its ``publish()`` costs an asyncio task, an Event and a timer
per message), and it drops what the window needs to read: the CONNACK's
Receive Maximum and the PUBACK's reason code. So the window queues messages
on aiomqtt's paho client itself, puts a :class:`Landing` of its own into
aiomqtt's map of pending publishes (aiomqtt's ``on_publish`` settles it),
wraps the callbacks aiomqtt gave paho, and writes what it queued without an
asyncio writer per group.

Nothing else in the gateway touches these internals. Each one is listed in
:data:`CHECKS` with the check that proves it is there in the installed
release; :data:`MISSING` names those that fail, and :func:`require_internals` (called
by the sink before it reports ready) turns that into a :class:`WireError`
instead of a window that silently loses PUBACKs. ``tests/sinks/test_wire.py``
runs every check and exercises each internal, so an upgrade of aiomqtt or
paho past the pins in pyproject.toml fails there first.
"""

from __future__ import annotations

import contextlib
import socket
import types
from collections.abc import Callable, Iterator
from typing import Any, cast

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import GatewayError


def _names(func: Any) -> frozenset[str]:
    """Every global and attribute name ``func``'s code (nested functions included) uses."""
    names: set[str] = set()
    todo = [func.__code__]
    while todo:
        code = todo.pop()
        names.update(code.co_names)
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return frozenset(names)


def _aiomqtt_uses(method: str, *names: str) -> bool:
    func = getattr(aiomqtt.Client, method, None)
    return func is not None and set(names) <= _names(func)


def _paho_uses(method: str, *names: str) -> bool:
    func = getattr(mqtt.Client, method, None)
    return func is not None and set(names) <= _names(func)


# Each internal the window relies on, and the check that it is there
# (aiomqtt 2.5 on paho 2.2, the pins in pyproject.toml).
CHECKS: dict[str, Callable[[], bool]] = {
    # Wire.paho: the paho client aiomqtt drives, built with callback API 2
    # (the signatures the wrappers below take and forward).
    "aiomqtt.Client._client (its paho client, callback API 2)": lambda: _aiomqtt_uses(
        "__init__", "_client", "VERSION2"
    ),
    # Wire.track: the map aiomqtt's on_publish settles, keyed by mid.
    "aiomqtt.Client._pending_publishes": lambda: _aiomqtt_uses("__init__", "_pending_publishes"),
    # Landing.set: aiomqtt's on_publish pops the mid's entry and calls set() on it.
    "aiomqtt.Client._on_publish (pending.pop(mid).set())": lambda: _aiomqtt_uses(
        "_on_publish", "_pending_publishes", "pop", "set"
    ),
    # Wire.note_connack / note_refusals wrap the callbacks aiomqtt installed.
    "aiomqtt.Client.__init__ sets paho's on_connect and on_publish": lambda: _aiomqtt_uses(
        "__init__", "on_connect", "on_publish", "_on_connect", "_on_publish"
    ),
    # Wire.cork: aiomqtt's writer calls loop_write() on the client instance.
    "aiomqtt.Client._on_socket_register_write calls loop_write()": lambda: _aiomqtt_uses(
        "_on_socket_register_write", "loop_write"
    ),
    # Wire.written_at_once: paho asks for a writer only while the flag is False.
    "paho Client._registered_write": lambda: (
        _paho_uses("__init__", "_registered_write")
        and _paho_uses("_call_socket_register_write", "_registered_write")
    ),
    # PackedProperties: paho encodes a PUBLISH's properties with pack().
    "paho Client._send_publish encodes properties with pack()": lambda: (
        _paho_uses("_send_publish", "pack") and callable(getattr(Properties, "pack", None))
    ),
}

MISSING: tuple[str, ...] = tuple(name for name, check in CHECKS.items() if not check())


class WireError(GatewayError):
    """The installed aiomqtt or paho lacks an internal the MQTT window needs."""


def require_internals() -> None:
    """Raise :class:`WireError` naming every internal that is missing (else nothing).

    Raises:
        WireError: the installed aiomqtt/paho changed; the sink cannot deliver.
    """
    if MISSING:
        raise WireError(
            "the installed aiomqtt/paho lack what the MQTT window uses: "
            + "; ".join(MISSING)
            + " (install the versions pyproject.toml pins, or port gateway/sinks/mqtt/wire.py "
            "and run tests/sinks/test_wire.py)"
        )


class Landing:
    """What the window puts into aiomqtt's pending map in place of aiomqtt's Event.

    aiomqtt's ``on_publish`` calls :meth:`set` at the PUBACK, in the event
    loop's thread; :meth:`refuse` comes first when the PUBACK is a refusal.
    """

    __slots__ = ()

    def set(self) -> None:
        raise NotImplementedError

    def refuse(self, code: ReasonCode) -> None:
        raise NotImplementedError


class Wire:
    """One aiomqtt client's paho client and pending map, as the window uses them.

    Build one per client (inside asyncio, right after the client), and only
    after :func:`require` passed.

    Attributes:
        paho: aiomqtt's paho client.
        publish: paho's synchronous ``publish()``: queues one message.
        track: ``track(mid, landing)``: aiomqtt settles ``landing`` at the PUBACK.
    """

    __slots__ = ("_pending", "paho", "publish", "track")

    def __init__(self, client: aiomqtt.Client) -> None:
        self.paho: mqtt.Client = client._client
        # aiomqtt only ever calls set() on what this map holds: a Landing will do.
        self._pending = cast("dict[int, Any]", client._pending_publishes)
        self.publish = self.paho.publish
        self.track: Callable[[int, Landing], None] = self._pending.__setitem__

    def untrack(self, mid: int, landing: Landing) -> None:
        """Out of aiomqtt's map, if ``mid`` still means ``landing`` (mids are reused)."""
        if self._pending.get(mid) is landing:
            del self._pending[mid]

    def note_connack(self, receive_maximum: Callable[[int], None]) -> None:
        """Call ``receive_maximum`` with the CONNACK's Receive Maximum (aiomqtt drops it)."""
        paho = self.paho
        forward = cast("Callable[..., None]", paho.on_connect)

        def on_connect(
            client: mqtt.Client,
            userdata: Any,
            flags: mqtt.ConnectFlags,
            reason_code: ReasonCode,
            properties: Properties | None = None,
        ) -> None:
            value = getattr(properties, "ReceiveMaximum", None)
            if isinstance(value, int) and value > 0:
                receive_maximum(value)
            forward(client, userdata, flags, reason_code, properties)

        paho.on_connect = on_connect

    def note_refusals(self) -> None:
        """Tell a :class:`Landing` the broker refused it (PUBACK ≥ 0x80) before aiomqtt sets it.

        aiomqtt's on_publish drops the reason code and would count the refusal
        as a delivery (an MQTT 5 broker says 0x87 "Not authorized" to a topic
        its ACL denies). 3.1.1 PUBACKs carry no code: paho reports success.
        """
        paho, pending = self.paho, self._pending
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
                landing = pending.get(mid)
                if isinstance(landing, Landing):
                    landing.refuse(reason_code)
            forward(client, userdata, mid, reason_code, properties)

        paho.on_publish = on_publish

    @contextlib.contextmanager
    def written_at_once(self) -> Iterator[None]:
        """Write what is published in the block when it ends, without an asyncio writer.

        The first publish() on an idle socket asks aiomqtt to watch it for
        writability; trio-asyncio starts a task for every such watch, which
        the write then cancels. With a window of 20 that happens every few
        messages (what it costs: the MQTT 5 drain rows of bench/results.md).
        Inside the block paho is told a watch is already there; at its end
        the queued packets are written straight away. Only what the socket
        cannot take yet (a full send buffer) gets a real watch, from paho's
        loop_write().
        """
        paho = self.paho
        registered = paho._registered_write
        paho._registered_write = True
        try:
            yield
        finally:
            paho._registered_write = registered
            paho.loop_write()

    def cork(self) -> None:
        """Let the messages paho writes in one go leave in as few TCP segments as fit.

        paho sends each packet with its own send(), and TCP_NODELAY (which a
        window needs) makes each one a segment of its own: CPU per message on
        loopback, a radio packet per message on a radio link. Corked for the
        duration of one loop_write() (aiomqtt calls it when the socket can
        take more), the kernel packs them and sends the lot when uncorked, at
        once. Call it once connected (before, there is no socket).
        """
        cork = getattr(socket, "TCP_CORK", None)  # Linux
        paho = self.paho
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


class PackedProperties(Properties):
    """A PUBLISH's user properties (and expiry), encoded once.

    paho encodes a message's properties each time it writes the message
    (with :meth:`pack`, checked in :data:`CHECKS`); the messages of one
    packet share one object, so it is done once per packet (what that saves:
    bench/results.md). Not to be changed once built.
    """

    def __init__(self, user: list[tuple[str, str]], expiry: int) -> None:
        super().__init__(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.UserProperty = user
        if expiry:
            self.MessageExpiryInterval = expiry
        # Properties refuses attributes that are no MQTT property: set past it.
        object.__setattr__(self, "_packed", super().pack())  # type: ignore[no-untyped-call]

    def pack(self) -> bytes:
        """The encoded properties (what paho puts on the wire)."""
        packed: bytes = self.__dict__["_packed"]
        return packed
