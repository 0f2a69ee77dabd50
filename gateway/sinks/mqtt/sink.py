"""The MQTT sink: connect, deliver the buffer through a sliding window, reconnect.

The sink keeps connecting, reconnecting, the fallback to 3.1.1 and the
sessions; see the package's docstring for what it promises. :mod:`.window`
sends, settles, reads ahead and waits; :mod:`.wire` is the only user of
aiomqtt's and paho's internals; :mod:`.properties` builds MQTT 5 properties.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Literal

import aiomqtt
import trio
import trio_asyncio
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from trio_util import AsyncValue, wait_any

from gateway.backoff import Backoff
from gateway.buffer import DiskBuffer
from gateway.clock import Stamp
from gateway.config.sections import DEFAULT_MAX_INFLIGHT, MqttSection, server_name
from gateway.deadletter import DeadLetterFile
from gateway.errors import leaf, scrub
from gateway.homeassistant import Discovery
from gateway.metrics import Metrics, RateLimitedLog
from gateway.records import (
    alerts_topic,
    json_payload,
    split_record,
    state_topic,
    status_topic,
)
from gateway.sinks.mqtt.client import (
    describe_error,
    disconnect_reason,
    new_client,
    reason_value,
    tls_context,
    window_note,
)
from gateway.sinks.mqtt.properties import MessageProperties, new_properties
from gateway.sinks.mqtt.takeover import Takeover, TakeoverWatch
from gateway.sinks.mqtt.window import Message, Window
from gateway.sinks.mqtt.wire import Wire, require_internals
from gateway.sinks.servers import Rotation
from gateway.telemetry import Packet

log = logging.getLogger("gateway.sinks.mqtt")  # one name for the whole sink

WINDOW = DEFAULT_MAX_INFLIGHT  # messages in flight unless mqtt.max_inflight says otherwise
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
        # One owner each: the protocol and the connection's window live in the
        # figures (the properties read them), connected in connected_value.
        self.figures.protocol = cfg.protocol
        self.figures.window = self.window
        self.connected_value: AsyncValue[bool] = AsyncValue(False)  # _set_connected writes it
        self._receive_maximum = DEFAULT_RECEIVE_MAXIMUM  # from the last CONNACK
        self._properties = MessageProperties(gateway_id, cfg.message_expiry)
        self._discovery_wake = trio.Event()
        # mqtt.servers (or host/port), sticky, a backoff each: gateway.sinks.servers.
        self.servers = Rotation(
            cfg.endpoints,
            lambda: Backoff(
                cfg.backoff_initial,
                cfg.backoff_max,
                stable_after=max(cfg.backoff_max, STABLE_CONNECTION_S),
            ),
        )
        # The retained gateway/state document, built when it is sent; None: not sent.
        self.state_document: Callable[[], str] | None = None
        self._state_wake = trio.Event()
        self.figures.servers = tuple(server_name(*s) for s in cfg.endpoints)
        self.figures.server = self.server
        self.takeovers = TakeoverWatch()
        self.last_error = ""
        self._stop = trio.Event()
        self._window = Window(
            buffer,
            self.figures,
            bound=self.window,
            qos=cfg.qos,
            # Seconds without a single PUBACK while messages are in flight: the
            # broker is hung (keepalive catches it too) or drops our messages.
            patience=max(30.0, 3.0 * cfg.keepalive),
            encode=self._encode,
            dead_lettered=self._dead_lettered,
            stop=self._stop,
        )
        # The shielded disconnect; abort() cancels it.
        self._cleanup = trio.CancelScope()
        self._aborted = False
        self._errlog = RateLimitedLog(log, interval=30.0)
        self._tls = tls_context(cfg)
        self._secrets = (cfg.password,)
        self._alerts_level = alerts_topic(cfg.topic_prefix)

    @property
    def server(self) -> str:
        """The broker in use or being tried, as ``host:port``."""
        return server_name(*self.servers.active)

    def retain(self, topic: str) -> bool:
        """Whether a message to ``topic`` is retained: ``mqtt.retain``, and alerts always."""
        return self.cfg.retain or topic.startswith(self._alerts_level)

    @property
    def connected(self) -> bool:
        """Connected to the broker (the status page's verdict on this sink: ``healthy``)."""
        return bool(self.connected_value.value)

    healthy = connected

    @property
    def protocol(self) -> str:
        """The protocol spoken (or tried) now: ``mqtt.protocol``, or 3.1.1 once refused 5."""
        return self.figures.protocol

    @property
    def effective_window(self) -> int:
        """The window of the current connection (the status page shows it)."""
        return self.figures.window

    @property
    def last_delivery(self) -> float | None:
        """Trio time of the last acknowledgement (None before the first)."""
        return self._window.last_delivery

    def stop(self) -> None:
        """Ask the sink to let its window land, publish "offline" and disconnect."""
        self._stop.set()
        self._window.interrupt()

    def abort(self) -> None:
        """Stop without a goodbye: the disconnect is no longer waited for."""
        self._aborted = True
        self.stop()
        self._cleanup.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, deliver, reconnect with backoff, until :meth:`stop`.

        Needs a running trio-asyncio loop (``trio_asyncio.open_loop()``); reports
        ready once the loop is there and aiomqtt/paho have what :mod:`.wire`
        uses (else :class:`~.wire.WireError`), before the first connection attempt.
        """
        trio_asyncio.current_loop.get()  # LookupError without one: a bug, not a retry
        require_internals()  # WireError if aiomqtt/paho changed: a bug, not a retry
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
                failed = self.server
                delay = self.servers.failed(
                    floor=TAKEOVER_DELAY_FLOOR if self.takeovers.suspected else 0.0
                )
                self.figures.server = self.server
                self.figures.connect_failures += 1
                log.debug("mqtt: attempt failed: %s; next in %.2f s", self.last_error, delay)
                self._errlog.log(
                    logging.WARNING,
                    "connect",
                    "mqtt: %s: %s; %d message(s) buffered; %s in %.1f s",
                    failed,
                    self.last_error,
                    self.buffer.count.value,
                    "retrying" if self.server == failed else f"trying {self.server}",
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
        self.connected_value.value = value
        self.figures.connected = value
        # Write-behind: records wait in memory only while they can be acked soon.
        self.buffer.set_delivering(value)

    async def _new_client(self) -> tuple[aiomqtt.Client, Wire]:
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
            will_props = self._properties.will()
        else:
            session = {"clean_session": True}
        client = new_client(
            cfg,
            cfg.client_id,
            server=self.servers.active,
            tls=self._tls,
            keepalive=cfg.keepalive,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(
                status_topic(cfg.topic_prefix), OFFLINE, qos=1, retain=True, properties=will_props
            ),
            # No limit in paho: the window is the limit. paho must never hold
            # back what the window sends, and with a limit it rescans every
            # message in flight on each PUBACK (CPU per message that grows with
            # the window; bench/results.md has the drain rates).
            max_inflight_messages=0,
            # paho writes each message with its own send(): without this, Nagle
            # holds a window's later messages until the first one is ACKed.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            **session,
        )
        # A full window is pending on purpose: aiomqtt would warn about it.
        client.pending_calls_threshold = self.window + 10
        self._receive_maximum = DEFAULT_RECEIVE_MAXIMUM
        wire = Wire(client)
        if v5:
            wire.note_connack(self._note_receive_maximum)
        return client, wire

    def _note_receive_maximum(self, value: int) -> None:
        """The CONNACK's Receive Maximum (aiomqtt drops it; the wire reads it)."""
        self._receive_maximum = value

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
        self.figures.protocol = V311
        log.warning(
            "mqtt: %s refused MQTT 5 (%s); using 3.1.1 until restart: messages carry no "
            'ts/gw properties and PUBACK refusals cannot be seen (payload = "json" carries ts)',
            self.server,
            exc.rc,
        )

    async def _session(self) -> None:
        client, wire = await trio_asyncio.aio_as_trio(self._new_client)()
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
        wire.cork()
        self.figures.window = self._connection_window()
        try:
            await trio_asyncio.aio_as_trio(client.publish)(
                status_topic(self.cfg.topic_prefix),
                ONLINE,
                qos=1,
                retain=True,
                properties=self._live_properties(),
            )
            self._set_connected(True)
            self.servers.up()
            self.figures.connects += 1
            self.last_error = ""
            log.info(
                "mqtt: connected to %s (MQTT %s); window %d%s; %d message(s) to replay",
                self.server,
                self.protocol,
                self.effective_window,
                window_note(self.window, self.effective_window, self._receive_maximum),
                self.buffer.count.value,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, client)
                if self.discovery is not None:
                    nursery.start_soon(self._publish_discovery, client)
                if self.state_document is not None:
                    # Built now, before the window sends anything: the first
                    # state after an outage shows the backlog it left.
                    nursery.start_soon(self._publish_state, client, self.state_document())
                await self._window.run(wire, self.effective_window)
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

    def _live_properties(self) -> Properties | None:
        """MQTT 5 properties of a message about now (presence, discovery); None under 3.1.1."""
        return self._properties.live() if self.protocol == V5 else None

    def message_properties(self, stamp: Stamp, retained: bool) -> Properties | None:
        """The MQTT 5 properties of a buffered message (None under 3.1.1)."""
        return self._properties.of(stamp, retained) if self.protocol == V5 else None

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

    def publish_state(self) -> None:
        """Send a fresh ``gateway/state`` document now if connected (else at the next connect)."""
        self._state_wake.set()

    async def _publish_state(self, client: aiomqtt.Client, payload: str) -> None:
        """The state document at connect, then whenever :meth:`publish_state` asks.

        Straight on the live connection, not through the buffer: it is state,
        retained, and only the newest counts; a backlog of old states would
        only delay the current one.
        """
        assert self.state_document is not None
        topic = state_topic(self.cfg.topic_prefix)
        while True:
            self._state_wake = trio.Event()
            await trio_asyncio.aio_as_trio(client.publish)(
                topic, payload, qos=1, retain=True, properties=self._live_properties()
            )
            await self._state_wake.wait()
            payload = self.state_document()

    async def _watch_disconnect(self, client: aiomqtt.Client) -> None:
        # Iterating client.messages raises as soon as paho sees the socket die,
        # while a publish awaiting PUBACK would only time out.
        async def watch() -> None:
            async for _ in client.messages:
                pass

        await trio_asyncio.aio_as_trio(watch)()
        raise aiomqtt.MqttError("connection closed by the broker")

    def _encode(self, value: str) -> Message | None:
        """A buffered record → (topic, payload, retain, properties); None if it is no message."""
        try:
            stamp, topic, payload = split_record(value)
        except ValueError:
            return None
        if self._json:
            payload = json_payload(topic, payload, stamp)
        retained = self.retain(topic)
        return topic, payload, retained, self.message_properties(stamp, retained)

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
