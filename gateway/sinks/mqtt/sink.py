"""The MQTT sink: connect, deliver the buffer through a sliding window, reconnect.

See the package's docstring for what it promises; :mod:`.window` holds the
window's parts and :mod:`.properties` the MQTT 5 properties.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import aiomqtt
import paho.mqtt.client as mqtt
import trio
import trio_asyncio
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from trio_util import wait_any

from gateway.backoff import Backoff
from gateway.buffer import DiskBuffer, Record
from gateway.config import DEFAULT_MAX_INFLIGHT, MqttSection
from gateway.deadletter import DeadLetterFile
from gateway.errors import leaf, scrub
from gateway.homeassistant import Discovery
from gateway.metrics import Metrics, RateLimitedLog
from gateway.records import (
    RecordStamp,
    alerts_topic,
    json_payload,
    rfc3339_ms,
    split_record,
    status_topic,
)
from gateway.sinks.mqtt import window as wire
from gateway.sinks.mqtt.client import (
    describe_error,
    disconnect_reason,
    new_client,
    reason_value,
    tls_context,
)
from gateway.sinks.mqtt.properties import PackedProperties, new_properties, refused_letter
from gateway.sinks.mqtt.takeover import Takeover, TakeoverWatch
from gateway.sinks.mqtt.window import (
    InFlight,
    Window,
    cork_writes,
    note_refusals,
    written_at_once,
)
from gateway.telemetry import Packet

log = logging.getLogger("gateway.sinks.mqtt")  # one name for the whole sink

WINDOW = DEFAULT_MAX_INFLIGHT  # messages in flight unless mqtt.max_inflight says otherwise
# Messages queued on paho between two looks at the event loop. Small groups
# put the first of a refill on the wire at once and keep the stream smooth:
# over a 50 ms round trip, groups of 8 drained 10-25 % faster than one group
# per refill. While PUBACKs keep arriving the sink is busy rather than waiting
# for the link, and larger groups cost less CPU per message (about 10 % on
# loopback). Measured on a 2-core machine; see README "Performance".
SEND_GROUP = 8
SEND_GROUP_BUSY = 32
STATUS_TIMEOUT = 2.0  # waiting for the "offline" PUBACK at shutdown
ONLINE, OFFLINE = "online", "offline"
# What a broker, a network or TLS can cause: never fatal, always retried. Anything
# else is a bug of ours and ends the daemon (systemd restarts it, the log says why).
RETRYABLE = (aiomqtt.MqttError, OSError, ssl.SSLError, trio.TooSlowError)
DEAD_LETTER_FILE = "mqtt.txt"  # "topic payload (why)" per line
V5: Literal["5"] = "5"
V311: Literal["3.1.1"] = "3.1.1"
# CONNACK "Unsupported Protocol Version": a 5.0 broker says 0x84; paho reports
# a 3.1.1 broker's return code 1 (what Mosquitto 2 answers to a protocol level
# it does not speak) as 0x84 too.
UNSUPPORTED_PROTOCOL = 0x84
# MQTT 5: without a Receive Maximum in its CONNACK a broker takes 65535 at once.
DEFAULT_RECEIVE_MAXIMUM = 65535
# Seconds a connection must last before the reconnect backoff starts over. Not
# mqtt.backoff_max: a connection another client keeps taking over lasts as long
# as that client's backoff delay, up to backoff_max, and must not count as stable.
STABLE_CONNECTION_S = 60.0
# After a takeover the delay is at least this share of the backoff ceiling: an
# immediate reconnect only throws the other gateway off again.
TAKEOVER_DELAY_FLOOR = 0.5


class MqttSink:
    """Deliver the MQTT buffer to the broker, reconnecting forever.

    Args:
        cfg: the ``[mqtt]`` section.
        buffer: the sink's disk buffer.
        metrics: counters and gauges (this sink's are ``metrics.mqtt``).
        dead_letters: where messages that can never be published go.
        window: messages in flight at most; default ``cfg.max_inflight``
            (under MQTT 5 never more than the broker's Receive Maximum).
        discovery: Home Assistant discovery configs to publish, if enabled.
        gateway_id: the ``gw`` user property of every MQTT 5 message.
    """

    def __init__(
        self,
        cfg: MqttSection,
        buffer: DiskBuffer,
        metrics: Metrics,
        dead_letters: DeadLetterFile,
        *,
        window: int | None = None,
        discovery: Discovery | None = None,
        gateway_id: str = "",
    ) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.metrics = metrics
        self.figures = metrics.mqtt
        self.dead_letters = dead_letters
        self.window = cfg.max_inflight if window is None else window
        self.discovery = discovery
        self.gateway_id = gateway_id
        self._json = cfg.payload == "json"
        # The protocol spoken now: cfg.protocol, or 3.1.1 once the broker refused 5.
        self.protocol = cfg.protocol
        # The window of the current connection (the status page shows it).
        self.effective_window = self.window
        self.figures.window = self.window
        self.figures.protocol = self.protocol
        self._receive_maximum = DEFAULT_RECEIVE_MAXIMUM  # from the last CONNACK
        # The last message's properties: the messages of one packet share them.
        self._props_key: tuple[int, bool, bool] | None = None
        self._props: Properties | None = None
        self._discovery_wake = trio.Event()
        self.backoff = Backoff(
            cfg.backoff_initial,
            cfg.backoff_max,
            stable_after=max(cfg.backoff_max, STABLE_CONNECTION_S),
        )
        self.takeovers = TakeoverWatch()
        self.connected = False
        self.last_error = ""
        self.last_delivery: float | None = None  # trio time of the last acknowledgement
        self._stop = trio.Event()
        # Cancelled by stop(): waiting for records costs no extra tasks this way.
        self._idle = trio.CancelScope()
        # The shielded disconnect; abort() cancels it.
        self._cleanup = trio.CancelScope()
        self._aborted = False
        self._errlog = RateLimitedLog(log, interval=30.0)
        self._tls = tls_context(cfg)
        self._secrets = (cfg.password,)
        self._alerts_level = alerts_topic(cfg.topic_prefix)

    def retain(self, topic: str) -> bool:
        """Whether a message to ``topic`` is retained: ``mqtt.retain``, and alerts always."""
        return self.cfg.retain or topic.startswith(self._alerts_level)

    @property
    def healthy(self) -> bool:
        """Connected to the broker (the status page's verdict on this sink)."""
        return self.connected

    def stop(self) -> None:
        """Ask the sink to let its window land, publish "offline" and disconnect."""
        self._stop.set()
        self._idle.cancel()

    def abort(self) -> None:
        """Stop without a goodbye: the disconnect is no longer waited for."""
        self._aborted = True
        self.stop()
        self._cleanup.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, deliver, reconnect with backoff, until :meth:`stop`.

        Needs a running trio-asyncio loop (``trio_asyncio.open_loop()``); reports
        ready once the loop is there, before the first connection attempt.
        """
        trio_asyncio.current_loop.get()  # LookupError without one: a bug, not a retry
        task_status.started()
        while not self._stop.is_set():
            failure: BaseException | None = None
            try:
                await self._session()
            except* RETRYABLE as group:
                failure = leaf(group)
            if failure is not None:
                self._set_connected(False)
                self.last_error = scrub(describe_error(failure), self._secrets)
                takeover = self.takeovers.ended(disconnect_reason(failure))
                if takeover is not None:
                    self._note_takeover(takeover)
                elif not self.takeovers.suspected:
                    self.figures.takeover = ""
                delay = self.backoff.next_delay(
                    floor=TAKEOVER_DELAY_FLOOR if self.takeovers.suspected else 0.0
                )
                self.figures.connect_failures += 1
                log.debug("mqtt: attempt failed: %s; next in %.2f s", self.last_error, delay)
                self._errlog.log(
                    logging.WARNING,
                    "connect",
                    "mqtt: %s:%d: %s; %d message(s) buffered; retrying in %.1f s",
                    self.cfg.host,
                    self.cfg.port,
                    self.last_error,
                    self.buffer.count.value,
                    delay,
                )
                await wait_any(functools.partial(trio.sleep, delay), self._stop.wait)

    def _note_takeover(self, takeover: Takeover) -> None:
        """Count, show and log a connection another client with our id took over."""
        client_id = self.cfg.client_id
        self.figures.takeovers += 1
        verdict = "" if takeover.certain else "probably "
        self.figures.takeover = (
            f"{verdict}another client uses client id {client_id!r}: {takeover.evidence}"
        )
        self.last_error = self.figures.takeover
        self._errlog.log(
            logging.ERROR,
            "takeover",
            "mqtt: %stwo gateways use client id %r (%s): give each box its own gateway.id "
            '(or mqtt.client_id) in its config; see docs/operations.md, "One client id per box"',
            verdict,
            client_id,
            takeover.evidence,
        )

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self.figures.connected = value
        # Write-behind: records wait in memory only while they can be acked soon.
        self.buffer.set_delivering(value)

    async def _new_client(self) -> aiomqtt.Client:
        # Runs inside asyncio: aiomqtt.Client binds to the running loop.
        cfg = self.cfg
        v5 = self.protocol == V5
        will_props: Properties | None = None
        session: dict[str, Any]
        if v5:
            # A clean start and a session that ends with the connection, on
            # purpose (docs/architecture.md, "Sessions"): the buffer resends
            # what was not acknowledged, so a broker-kept session would only
            # add duplicates.
            connect_props = new_properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = 0
            session = {"clean_start": True, "properties": connect_props}
            will_props = new_properties(PacketTypes.WILLMESSAGE)
            will_props.UserProperty = [("gw", self.gateway_id)]
        else:
            session = {"clean_session": True}
        client = new_client(
            cfg,
            cfg.client_id,
            tls=self._tls,
            keepalive=cfg.keepalive,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(
                status_topic(cfg.topic_prefix), OFFLINE, qos=1, retain=True, properties=will_props
            ),
            # No limit in paho: the window is the limit. paho must never hold
            # back what the window sends, and with a limit it rescans every
            # message in flight on each PUBACK (a third of the CPU per message
            # at a window of 200).
            max_inflight_messages=0,
            # paho writes each message with its own send(): without this, Nagle
            # holds a window's later messages until the first one is ACKed.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            **session,
        )
        # A full window is pending on purpose: aiomqtt would warn about it.
        client.pending_calls_threshold = self.window + 10
        self._receive_maximum = DEFAULT_RECEIVE_MAXIMUM
        if wire.WINDOW_API and v5:
            self._note_connack(client._client)
        return client

    def _note_connack(self, paho: mqtt.Client) -> None:
        """Keep the broker's Receive Maximum from the CONNACK (aiomqtt drops it)."""
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
                self._receive_maximum = value
            forward(client, userdata, flags, reason_code, properties)

        paho.on_connect = on_connect

    def _connection_window(self) -> int:
        """The window of this connection: ``window``, capped by the Receive Maximum under 5.

        More unacknowledged QoS 1 messages than the broker's Receive Maximum
        is a protocol error (0x93): a broker may close the connection for it.
        """
        if self.protocol != V5:
            return self.window
        return min(self.window, self._receive_maximum)

    def _fall_back(self, exc: MqttConnectError) -> None:
        """The broker refused MQTT 5: speak 3.1.1 to it for the rest of the process.

        Not retried with 5 on later reconnects: a broker does not learn a
        protocol between two connections, each retry would cost a refused
        connection, and consumers would see ``ts`` come and go.
        """
        self.protocol = V311
        log.warning(
            "mqtt: %s:%d refused MQTT 5 (%s); using 3.1.1 until restart: messages carry no "
            'ts/gw properties and PUBACK refusals cannot be seen (payload = "json" carries ts)',
            self.cfg.host,
            self.cfg.port,
            exc.rc,
        )

    async def _session(self) -> None:
        client: aiomqtt.Client = await trio_asyncio.aio_as_trio(self._new_client)()
        try:
            # aiomqtt ignores a connection reset before CONNACK; only this bound ends it.
            with trio.fail_after(self.cfg.connect_timeout + 1):
                await trio_asyncio.aio_as_trio(client.__aenter__)()
        except MqttConnectError as exc:
            if self.protocol == V5 and reason_value(exc.rc) == UNSUPPORTED_PROTOCOL:
                self._fall_back(exc)
                return  # run() tries again at once, in 3.1.1
            raise
        self.takeovers.connected()
        if wire.WINDOW_API:
            cork_writes(client._client)
        self.effective_window = self._connection_window()
        self.figures.window = self.effective_window
        self.figures.protocol = self.protocol
        try:
            await trio_asyncio.aio_as_trio(client.publish)(
                status_topic(self.cfg.topic_prefix),
                ONLINE,
                qos=1,
                retain=True,
                properties=self._live_properties(),
            )
            self._set_connected(True)
            self.backoff.up()
            self.figures.connects += 1
            self.last_error = ""
            log.info(
                "mqtt: connected to %s:%d (MQTT %s); window %d%s; %d message(s) to replay",
                self.cfg.host,
                self.cfg.port,
                self.protocol,
                self.effective_window,
                self._window_note(),
                self.buffer.count.value,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, client)
                if self.discovery is not None:
                    nursery.start_soon(self._publish_discovery, client)
                await self._deliver(client)
                # Stopping: the in-flight window landed; say goodbye on purpose.
                with trio.move_on_after(STATUS_TIMEOUT):
                    await trio_asyncio.aio_as_trio(client.publish)(
                        status_topic(self.cfg.topic_prefix),
                        OFFLINE,
                        qos=1,
                        retain=True,
                        timeout=STATUS_TIMEOUT,
                        properties=self._live_properties(),
                    )
                nursery.cancel_scope.cancel()
        finally:
            self._set_connected(False)
            self._cleanup = trio.CancelScope(shield=not self._aborted)
            with (
                self._cleanup,
                trio.move_on_after(STATUS_TIMEOUT),
                contextlib.suppress(aiomqtt.MqttError, OSError),
            ):
                await trio_asyncio.aio_as_trio(client.__aexit__)(None, None, None)

    def _window_note(self) -> str:
        if self.effective_window < self.window:
            return (
                f" (mqtt.max_inflight {self.window}, capped by the broker's "
                f"Receive Maximum {self._receive_maximum})"
            )
        return ""

    def _live_properties(self) -> Properties | None:
        """MQTT 5 properties of a message about now (presence, discovery): ``ts`` now, ``gw``."""
        if self.protocol != V5:
            return None
        props = new_properties(PacketTypes.PUBLISH)
        props.UserProperty = [("ts", rfc3339_ms(time.time_ns())), ("gw", self.gateway_id)]
        return props

    def message_properties(self, stamp: RecordStamp, retained: bool) -> Properties | None:
        """The MQTT 5 properties of a buffered message (None under 3.1.1).

        ``ts`` is the reading's receive time as stamped; while the clock was
        not known right that is the best-known time, and ``clock=unsynced``
        says so. ``mqtt.message_expiry`` applies to non-retained messages only:
        on a retained one it would delete the topic's value.
        """
        if self.protocol != V5:
            return None
        key = (stamp.wall_ns, stamp.synced, retained)
        if key != self._props_key:  # a packet's messages share a stamp: build once
            user = [("ts", rfc3339_ms(stamp.wall_ns)), ("gw", self.gateway_id)]
            if not stamp.synced:
                user.append(("clock", "unsynced"))
            expiry = self.cfg.message_expiry if not retained else 0
            self._props_key, self._props = key, PackedProperties(user, expiry)
        return self._props

    def observe(self, packet: Packet) -> None:
        """A pipeline observer: note new metrics for Home Assistant discovery."""
        metrics = ((group, metric) for group, metric, _ in packet.metrics())
        if self.discovery is not None and self.discovery.observe_metrics(metrics):
            self._discovery_wake.set()

    async def _publish_discovery(self, client: aiomqtt.Client) -> None:
        """Every discovery config after a connect, then each new metric's as it appears.

        Retained, so Home Assistant finds them whenever it (re)subscribes.
        """
        assert self.discovery is not None
        configs = self.discovery.all_configs()
        while True:
            for topic, payload in configs:
                await trio_asyncio.aio_as_trio(client.publish)(
                    topic, payload, qos=1, retain=True, properties=self._live_properties()
                )
            await self._discovery_wake.wait()
            self._discovery_wake = trio.Event()
            configs = self.discovery.take_new()

    async def _watch_disconnect(self, client: aiomqtt.Client) -> None:
        # Iterating client.messages raises as soon as paho sees the socket die,
        # while a publish awaiting PUBACK would only time out.
        async def watch() -> None:
            async for _ in client.messages:
                pass

        await trio_asyncio.aio_as_trio(watch)()
        raise aiomqtt.MqttError("connection closed by the broker")

    async def _deliver(self, client: aiomqtt.Client) -> None:
        """Keep the window full until stopped; return once what is in flight landed."""
        if not wire.WINDOW_API:
            await self._deliver_each(client)
            return
        buffer = self.buffer
        # A new connection: whatever the last one had in flight goes again.
        buffer.rewind()
        window = Window(buffer.generation, self.effective_window)
        # aiomqtt only ever calls set() on what this map holds: an InFlight will do.
        pending = cast("dict[int, InFlight]", client._pending_publishes)
        note_refusals(client._client, pending)
        # Seconds without a single PUBACK while messages are in flight: the
        # broker is hung (keepalive catches it too) or drops our messages.
        limit = max(30.0, 3.0 * self.cfg.keepalive)
        try:
            group = SEND_GROUP
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_ahead, window)
                nursery.start_soon(self._wake_on_sync, window)
                while True:
                    if window.wake.is_set():
                        window.wake = trio.Event()
                    if buffer.generation != window.generation:
                        # The store renumbered its records (it adopted a file it
                        # could not open before): acks by the old keys would hit
                        # other records. Start over from the head.
                        window.forget(pending)
                        window.generation = buffer.generation
                        buffer.rewind()
                    await self._settle(window)
                    stopping = self._stop.is_set()
                    if stopping and not window.slots:
                        nursery.cancel_scope.cancel()
                        return
                    room = self._room(window)
                    if not stopping and room > 0 and window.ahead:
                        with written_at_once(client._client):
                            self._send(client, window.take(min(room, group)), window, pending)
                        await trio.lowlevel.checkpoint()
                        group = SEND_GROUP_BUSY if window.wake.is_set() else SEND_GROUP
                        continue
                    await self._wait(window, limit, stopping=stopping)
        finally:
            window.forget(pending)

    def _room(self, window: Window) -> int:
        """How many more messages may be sent now.

        At most the connection's window in flight; and at most
        ``mqtt.max_inflight`` that a crash now would deliver again: those in
        flight plus those acknowledged whose deletion is not on disk yet (the
        store writes them at once during a drain). That keeps a kill -9 or a
        power cut to at most one window of duplicates.
        """
        inflight = len(window.slots)
        return min(window.size - inflight, self.window - inflight - self.buffer.unsynced_acks)

    async def _wake_on_sync(self, window: Window) -> None:
        """Wake the window when the store wrote acknowledgements: room may have come free."""
        unsynced = self.buffer.unsynced
        while True:
            await unsynced.wait_transition(lambda new, old: new < old)
            window.wake.set()

    async def _read_ahead(self, window: Window) -> None:
        """Keep up to a window of records read and waiting to be sent.

        Reading the buffer can take milliseconds (SQLite on a worker thread,
        waiting for the store's write of the acknowledgements): done here, it
        overlaps with sending instead of leaving the link idle meanwhile.
        """
        buffer = self.buffer
        while True:
            while len(window.ahead) >= self.window:
                window.hungry = trio.Event()
                await window.hungry.wait()
            await buffer.unread.wait_value(_positive)
            records = await buffer.read(self.window)
            if records:
                window.ahead.extend(records)
                window.wake.set()

    async def _wait(self, window: Window, limit: float, *, stopping: bool) -> None:
        """Sleep until a PUBACK or records to send arrive (or stop, or a hung broker)."""
        if not window.slots:
            if not stopping:
                with trio.CancelScope() as self._idle:
                    await window.wake.wait()
            return
        with trio.move_on_at(window.progress_at + limit) as timer:
            if stopping:
                await window.wake.wait()  # from now on only PUBACKs count
            else:
                with trio.CancelScope() as self._idle:
                    await window.wake.wait()
        if timer.cancelled_caught:
            raise trio.TooSlowError(f"no PUBACK within {limit:g} s")

    def _send(
        self,
        client: aiomqtt.Client,
        batch: Sequence[Record],
        window: Window,
        pending: dict[int, InFlight],
    ) -> None:
        """Queue ``batch`` on paho into ``window`` (written when the caller's written_at_once ends).

        aiomqtt's publish() costs an asyncio task, an Event and a timer per
        message, plus a trio→asyncio crossing: at field rate that was most of
        the gateway's CPU and a millisecond of latency. paho's publish() is
        synchronous and aiomqtt's callbacks run in this thread, so messages are
        queued right here, and aiomqtt's own on_publish dispatch calls each
        one's :meth:`InFlight.set`. aiomqtt has no public API for this: it uses
        its paho client and pending-publish map (checked at import: wire.WINDOW_API).
        """
        qos, retain, properties = self.cfg.qos, self.retain, self.message_properties
        if not window.slots:
            window.progress_at = trio.current_time()
        for record in batch:
            slot = InFlight(record, window)
            window.slots.append(slot)
            try:
                stamp, topic, payload = split_record(record.value)
            except ValueError:
                slot.dead = record.value  # not a message at all
                slot.acked = True
                continue
            if self._json:
                payload = json_payload(topic, payload, stamp)
            retained = retain(topic)
            try:
                info = client._client.publish(
                    topic, payload, qos, retained, properties(stamp, retained)
                )
            except ValueError as exc:  # paho's verdict on the message itself
                slot.dead = f"{topic} {payload} ({exc})"
                slot.acked = True
                continue
            if info.rc != 0:
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            if info.is_published():
                slot.acked = True
            else:
                # PUBACKs are read in this thread, so none can arrive before this.
                slot.mid = info.mid
                pending[info.mid] = slot

    async def _settle(self, window: Window) -> None:
        """Acknowledge the oldest run of landed messages: one buffer call, not one each."""
        slots = window.slots
        if not slots or not slots[0].acked:
            return
        newest = slots[0]
        landed: list[InFlight] = []
        dead: list[str] = []
        while slots and slots[0].acked:
            newest = slots.popleft()
            landed.append(newest)
            if newest.refused is not None:
                newest.dead = refused_letter(newest.record.value, newest.refused)
                self.figures.refused.inc(f"0x{newest.refused.value:02x}")
            if newest.dead is not None:
                dead.append(newest.dead)
        window.progress_at = trio.current_time()
        if self.buffer.generation != window.generation:
            return  # renumbered meanwhile: _deliver starts over, nothing is acked
        # Records the bound dropped while in flight (below the head now) count
        # as dropped, not as published.
        head = self.buffer.head
        published = sum(1 for slot in landed if slot.dead is None and slot.record.key >= head)
        # Dead letters leave with the ack, into the store's dead-letter queue:
        # one transaction, so a crash can repeat them but never lose them.
        # Records read ahead and not sent yet make it a drain: its acks are
        # written at once, or _room would wait for ack_delay.
        await self.buffer.ack([newest.record], dead=dead, more=bool(window.ahead))
        if dead:
            self._dead_lettered(dead)
        self.figures.note_delivery(published, self.buffer.count.value)
        self.last_delivery = trio.current_time()

    async def _deliver_each(self, client: aiomqtt.Client) -> None:
        """Without aiomqtt's internals: windows of aiomqtt publish() calls, stop-and-wait."""
        buffer = self.buffer
        buffer.rewind()
        limit = max(30.0, 3.0 * self.cfg.keepalive)  # seconds for the whole window
        while True:
            if buffer.unread.value == 0 and not self._stop.is_set():
                with trio.CancelScope() as self._idle:
                    await buffer.unread.wait_value(_positive)
            if self._stop.is_set():
                return
            batch = await buffer.read(self.effective_window)
            if not batch:
                continue
            messages, bad = self._decode(batch)
            qos = self.cfg.qos
            await trio_asyncio.aio_as_trio(_publish_each)(client, messages, qos, limit)
            acked = await buffer.ack(batch, dead=bad)
            if bad:
                self._dead_lettered(bad)
            # Records dropped while in flight count as dropped, not as published.
            self.figures.note_delivery(max(0, acked - len(bad)), buffer.count.value)
            self.last_delivery = trio.current_time()

    def _decode(self, batch: Sequence[Record]) -> tuple[list[_Message], list[str]]:
        """(topic, payload, retain, properties) of each record, and those that are not messages."""
        messages: list[_Message] = []
        bad: list[str] = []
        for record in batch:
            try:
                stamp, topic, payload = split_record(record.value)
            except ValueError:
                bad.append(record.value)
                continue
            if self._json:
                payload = json_payload(topic, payload, stamp)
            retained = self.retain(topic)
            messages.append((topic, payload, retained, self.message_properties(stamp, retained)))
        return messages, bad

    def _dead_lettered(self, records: list[str]) -> None:
        """Messages no broker can take left the queue for its dead letters (count, log)."""
        self.figures.note_rejected(len(records))
        self._errlog.log(
            logging.ERROR,
            "dead",
            "mqtt: %d message(s) can never be published (e.g. %r); moved to %s",
            len(records),
            records[0][:200],
            self.dead_letters.path,
        )


_Message = tuple[str, str, bool, Properties | None]  # topic, payload, retain, properties


async def _publish_each(
    client: aiomqtt.Client, messages: Sequence[_Message], qos: int, limit: float
) -> None:
    # Inside asyncio, with aiomqtt's public API only: one publish() per message.
    # (PUBACK reason codes cannot be seen this way: refusals count as delivered.)
    await asyncio.gather(
        *(
            client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=limit
            )
            for topic, payload, retain, properties in messages
        )
    )


def _positive(n: int) -> bool:
    return n > 0
