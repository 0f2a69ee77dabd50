"""The MQTT sink: the MQTT buffer's ``{prefix}/{group}/{metric}`` messages → the broker.

Records wait in a :class:`~gateway.buffer.DiskBuffer` and leave it only after
the broker's PUBACK. Delivery runs in windows: the whole window is queued on
paho at once (it pipelines them) and one event fires when every message of it
is acknowledged; a sibling task notices a dropped connection within
milliseconds. Each connection attempt builds a fresh aiomqtt ``Client``
(a reused one can claim to be connected and replay stale QoS1 messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import time
from collections.abc import Sequence

import aiomqtt
import trio
import trio_asyncio
from aiomqtt.exceptions import MqttConnectError
from trio_util import wait_any

from gateway.backoff import Backoff
from gateway.buffer import DiskBuffer, Record
from gateway.config import DEFAULT_MAX_INFLIGHT, MqttSection
from gateway.deadletter import DeadLetterFile
from gateway.errors import leaf, scrub
from gateway.metrics import Metrics, RateLimitedLog
from gateway.records import split_record, status_topic

log = logging.getLogger(__name__)

WINDOW = DEFAULT_MAX_INFLIGHT  # messages per window unless mqtt.max_inflight says otherwise
STATUS_TIMEOUT = 2.0  # waiting for the "offline" PUBACK at shutdown
ONLINE, OFFLINE = "online", "offline"
# What a broker, a network or TLS can cause: never fatal, always retried. Anything
# else is a bug of ours and ends the daemon (systemd restarts it, the log says why).
RETRYABLE = (aiomqtt.MqttError, OSError, ssl.SSLError, trio.TooSlowError)
DEAD_LETTER_FILE = "mqtt.jsonl"


def tls_context(cfg: MqttSection) -> ssl.SSLContext | None:
    """The TLS context for ``[mqtt]`` (None without ``ca_file``: plain TCP)."""
    if not cfg.ca_file:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


class MqttSink:
    """Deliver the MQTT buffer to the broker, reconnecting forever.

    Args:
        cfg: the ``[mqtt]`` section.
        buffer: the sink's disk buffer.
        metrics: counters and gauges (this sink's are ``metrics.mqtt``).
        dead_letters: where messages that can never be published go.
        window: messages per delivery window (also paho's in-flight limit);
            default ``cfg.max_inflight``.
    """

    def __init__(
        self,
        cfg: MqttSection,
        buffer: DiskBuffer,
        metrics: Metrics,
        dead_letters: DeadLetterFile,
        *,
        window: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.buffer = buffer
        self.metrics = metrics
        self.figures = metrics.mqtt
        self.dead_letters = dead_letters
        self.window = cfg.max_inflight if window is None else window
        self.backoff = Backoff(cfg.backoff_initial, cfg.backoff_max)
        self.connected = False
        self.last_error = ""
        self.last_delivery: float | None = None  # trio time of the last PUBACKed window
        self._stop = trio.Event()
        # Cancelled by stop(): waiting for records costs no extra tasks this way.
        self._idle = trio.CancelScope()
        # The shielded disconnect; abort() cancels it.
        self._cleanup = trio.CancelScope()
        self._aborted = False
        self._errlog = RateLimitedLog(log, interval=30.0)
        self._tls = tls_context(cfg)
        self._secrets = (cfg.password,)

    @property
    def healthy(self) -> bool:
        """Connected to the broker (the status page's verdict on this sink)."""
        return self.connected

    def stop(self) -> None:
        """Ask the sink to finish its window, publish "offline" and disconnect."""
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
                delay = self.backoff.next_delay()
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

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        self.figures.connected = value

    async def _new_client(self) -> aiomqtt.Client:
        # Runs inside asyncio: aiomqtt.Client binds to the running loop.
        cfg = self.cfg
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username or None,
            password=cfg.password or None,
            keepalive=cfg.keepalive,
            timeout=cfg.connect_timeout,
            will=aiomqtt.Will(status_topic(cfg.topic_prefix), OFFLINE, qos=1, retain=True),
            max_inflight_messages=self.window,
            tls_context=self._tls,
            # paho writes each message with its own send(): without this, Nagle
            # holds a window's later messages until the first one is ACKed.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        client.pending_calls_threshold = self.window + 10
        return client

    async def _session(self) -> None:
        client: aiomqtt.Client = await trio_asyncio.aio_as_trio(self._new_client)()
        # aiomqtt ignores a connection reset before CONNACK; only this bound ends it.
        with trio.fail_after(self.cfg.connect_timeout + 1):
            await trio_asyncio.aio_as_trio(client.__aenter__)()
        try:
            await trio_asyncio.aio_as_trio(client.publish)(
                status_topic(self.cfg.topic_prefix), ONLINE, qos=1, retain=True
            )
            self._set_connected(True)
            self.backoff.up()
            self.figures.connects += 1
            self.last_error = ""
            log.info(
                "mqtt: connected to %s:%d; %d message(s) to replay",
                self.cfg.host,
                self.cfg.port,
                self.buffer.count.value,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_disconnect, client)
                await self._deliver(client)
                # Stopping: the in-flight window landed; say goodbye on purpose.
                with trio.move_on_after(STATUS_TIMEOUT):
                    await trio_asyncio.aio_as_trio(client.publish)(
                        status_topic(self.cfg.topic_prefix),
                        OFFLINE,
                        qos=1,
                        retain=True,
                        timeout=STATUS_TIMEOUT,
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

    async def _watch_disconnect(self, client: aiomqtt.Client) -> None:
        # Iterating client.messages raises as soon as paho sees the socket die,
        # while a publish awaiting PUBACK would only time out.
        async def watch() -> None:
            async for _ in client.messages:
                pass

        await trio_asyncio.aio_as_trio(watch)()
        raise aiomqtt.MqttError("connection closed by the broker")

    async def _deliver(self, client: aiomqtt.Client) -> None:
        buffer = self.buffer
        while True:
            if buffer.count.value == 0 and not self._stop.is_set():
                with trio.CancelScope() as self._idle:
                    await buffer.count.wait_value(_positive)
            if self._stop.is_set():
                return
            batch = await buffer.peek(self.window)
            if not batch:
                continue
            messages, bad = self._decode(batch)
            refused = await self._publish_window(client, messages)
            if bad or refused:
                await self._dead_letter(bad + refused)
            await buffer.ack(batch)
            self.figures.note_delivery(len(batch) - len(bad) - len(refused), buffer.count.value)
            self.last_delivery = trio.current_time()

    def _decode(self, batch: Sequence[Record]) -> tuple[list[tuple[str, str]], list[str]]:
        """(topic, payload) of each record, and the records that are not messages."""
        messages: list[tuple[str, str]] = []
        bad: list[str] = []
        oldest_ns: int | None = None
        for record in batch:
            try:
                stamp, topic, payload = split_record(record.value)
            except ValueError:
                bad.append(record.value)
                continue
            if oldest_ns is None:
                oldest_ns = stamp.wall_ns
            messages.append((topic, payload))
        if oldest_ns is not None:
            self.figures.oldest_age = max(0.0, (time.time_ns() - oldest_ns) / 1e9)
        return messages, bad

    async def _dead_letter(self, records: list[str]) -> None:
        """Move messages no broker can take out of the queue; delivery goes on."""
        await self.dead_letters.append(records)
        self.figures.note_rejected(len(records))
        self._errlog.log(
            logging.ERROR,
            "dead",
            "mqtt: %d message(s) can never be published (e.g. %r); moved to %s",
            len(records),
            records[0][:200],
            self.dead_letters.path,
        )

    async def _publish_window(
        self, client: aiomqtt.Client, messages: Sequence[tuple[str, str]]
    ) -> list[str]:
        """Publish a window (paho pipelines it); return when every PUBACK is in.

        Returns the messages paho refused to send at all (an invalid topic or
        payload: ``ValueError``), as records for the dead-letter file.

        aiomqtt's publish() costs an asyncio task, an Event and a timer per
        message, plus a trio→asyncio crossing: at field rate that was most of
        the gateway's CPU and a millisecond of latency. paho's publish() is
        synchronous and aiomqtt's callbacks run in this thread, so the window is
        queued right here and one trio Event, set by aiomqtt's own on_publish
        dispatch, waits for it. aiomqtt has no public batch API: this uses its
        paho client and pending-publish map (checked at import: _WINDOW_API).
        """
        qos, retain = self.cfg.qos, self.cfg.retain
        limit = max(30.0, 3.0 * self.cfg.keepalive)  # seconds for the whole window
        if not _WINDOW_API:
            await trio_asyncio.aio_as_trio(_publish_each)(client, messages, qos, retain, limit)
            return []
        done = trio.Event()
        ack = _WindowAck(len(messages), done)
        pending = client._pending_publishes
        mids: list[int] = []
        refused: list[str] = []
        try:
            for topic, payload in messages:
                try:
                    info = client._client.publish(topic, payload, qos, retain)
                except ValueError as exc:  # paho's verdict on the message itself
                    refused.append(f"{topic} {payload} ({exc})")
                    ack.set()
                    continue
                if info.rc != 0:
                    raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
                if info.is_published():
                    ack.set()
                else:
                    # PUBACKs are read in this thread, so none can arrive before this.
                    pending[info.mid] = ack  # type: ignore[assignment]
                    mids.append(info.mid)
            with trio.fail_after(limit):
                await done.wait()
        finally:
            for mid in mids:
                pending.pop(mid, None)
        return refused


async def _publish_each(
    client: aiomqtt.Client,
    messages: Sequence[tuple[str, str]],
    qos: int,
    retain: bool,
    limit: float,
) -> None:
    # Inside asyncio, with aiomqtt's public API only: one publish() per message.
    await asyncio.gather(
        *(
            client.publish(topic, payload, qos=qos, retain=retain, timeout=limit)
            for topic, payload in messages
        )
    )


def _positive(n: int) -> bool:
    return n > 0


class _WindowAck:
    """Stands in for aiomqtt's per-message Event: counts a window's PUBACKs."""

    __slots__ = ("done", "left")

    def __init__(self, n: int, done: trio.Event) -> None:
        self.left = n
        self.done = done
        if n == 0:
            done.set()

    def set(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


# The aiomqtt internals _publish_window relies on (aiomqtt 2.x); without them
# it falls back to one aiomqtt publish() per message.
_WINDOW_API = hasattr(aiomqtt.Client, "_on_publish") and {"_client", "_pending_publishes"} <= set(
    aiomqtt.Client.__init__.__code__.co_names
)


def describe_error(exc: BaseException) -> str:
    """A one-line account of a connection failure, with a hint where one helps."""
    text = str(exc) or type(exc).__name__
    # Only a CONNACK refusal is about credentials: paho's rc 4 on a publish
    # means "not connected", not "bad username or password".
    if isinstance(exc, MqttConnectError) and _code(exc.rc) in (4, 5, 134, 135):
        text += " (check mqtt.username and mqtt.password_file / $GATEWAY_MQTT_PASSWORD)"
    return text


def _code(rc: object) -> int | None:
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None
