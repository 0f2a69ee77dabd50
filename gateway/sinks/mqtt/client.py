"""Talking to a broker outside the window: TLS, error text, discovery removal, asyncio errors."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from typing import Any

import aiomqtt
import trio_asyncio
from aiomqtt.exceptions import MqttCodeError, MqttConnectError

from gateway.config.sections import MqttSection
from gateway.homeassistant import config_filter

log = logging.getLogger("gateway.sinks.mqtt")  # one name for the whole sink

# paho's reason code for a connection that ended without a DISCONNECT from the broker.
UNSPECIFIED_ERROR = 0x80


def tls_context(cfg: MqttSection) -> ssl.SSLContext | None:
    """The TLS context for ``[mqtt]`` (None without ``ca_file``: plain TCP)."""
    if not cfg.ca_file:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return ctx


def new_client(
    cfg: MqttSection,
    identifier: str,
    *,
    tls: ssl.SSLContext | None = None,
    timeout: float | None = None,
    server: tuple[str, int] | None = None,
    **options: Any,
) -> aiomqtt.Client:
    """An aiomqtt client for the ``[mqtt]`` broker: host, port, credentials and TLS.

    Every connection the gateway makes (the sink, replay, ``gateway check``,
    discovery removal) is built here, so they all reach the broker the same
    way. ``server`` is the ``(host, port)`` to reach, default ``mqtt.host``
    and ``mqtt.port`` (the first of ``mqtt.servers``): TLS and credentials
    are the same for every server. ``tls`` is a context already made (the
    sink keeps one), else one is made from ``cfg``; ``timeout`` defaults to
    ``mqtt.connect_timeout``; ``options`` go to ``aiomqtt.Client`` as they
    are. Must be called inside asyncio (the client binds to the running loop).
    """
    host, port = (cfg.host, cfg.port) if server is None else server
    return aiomqtt.Client(
        host,
        port,
        identifier=identifier,
        username=cfg.username or None,
        password=cfg.password or None,
        timeout=cfg.connect_timeout if timeout is None else timeout,
        tls_context=tls if tls is not None else tls_context(cfg),
        **options,
    )


def describe_error(exc: BaseException) -> str:
    """A one-line account of a connection failure, with a hint where one helps."""
    text = str(exc) or type(exc).__name__
    # Only a CONNACK refusal is about credentials: paho's rc 4 on a publish
    # means "not connected", not "bad username or password".
    if isinstance(exc, MqttConnectError) and reason_value(exc.rc) in (4, 5, 134, 135):
        text += " (check mqtt.username and mqtt.password_file / $GATEWAY_MQTT_PASSWORD)"
    return text


def reason_value(rc: object) -> int | None:
    """The number of a paho reason code (or an int as it is); None for anything else."""
    value = getattr(rc, "value", rc)
    return value if isinstance(value, int) else None


def disconnect_reason(exc: BaseException) -> int | None:
    """The reason code of the broker's DISCONNECT behind a dropped connection, if it sent one.

    paho hands ``on_disconnect`` the DISCONNECT's reason code; aiomqtt keeps it
    in a ``MqttCodeError`` and raises its own ``MqttError`` from that while
    messages are iterated (or a publish fails). So the code is found down the
    exception's ``__cause__`` / ``__context__`` chain. A socket that simply
    closed gives paho's 0x80 "Unspecified error", which says nothing.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MqttCodeError) and not isinstance(current, MqttConnectError):
            value = reason_value(current.rc)
            if value is not None and value != UNSPECIFIED_ERROR:
                return value
        current = current.__cause__ or current.__context__
    return None


async def remove_discovery(cfg: MqttSection, gateway_id: str, *, settle: float = 2.0) -> int:
    """Clear every retained Home Assistant discovery config of this gateway.

    Subscribes to the gateway's config topics, collects the retained configs
    the broker sends within ``settle`` seconds, and publishes an empty retained
    message to each (which is how Home Assistant is told to drop an entity).
    Needs a running trio-asyncio loop.

    Returns:
        How many configs were cleared.
    """
    topic_filter = config_filter(cfg.homeassistant.discovery_prefix, gateway_id)

    async def run() -> int:
        topics: set[str] = set()
        async with new_client(cfg, f"{cfg.client_id}-homeassistant") as client:
            await client.subscribe(topic_filter, qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settle):
                    async for message in client.messages:
                        if message.retain and message.payload:
                            topics.add(str(message.topic))
            for topic in sorted(topics):
                await client.publish(topic, b"", qos=1, retain=True)
        return len(topics)

    result: int = await trio_asyncio.aio_as_trio(run)()
    return result


def asyncio_exception(loop: Any, context: dict[str, Any]) -> None:
    """asyncio's exception handler inside trio-asyncio (``loop.set_exception_handler``).

    trio-asyncio raises what asyncio would only log. The known harmless case:
    a broker socket that died under aiomqtt's add_writer (``OSError`` EBADF)
    while the sink is already reconnecting. Everything else is reported at
    WARNING, never swallowed silently.
    """
    exc = context.get("exception")
    if isinstance(exc, asyncio.CancelledError):
        return
    if isinstance(exc, OSError) and exc.errno == errno.EBADF:
        log.debug("asyncio: %s (%r)", context.get("message"), exc)
        return
    log.warning("asyncio: %s (%r)", context.get("message"), exc)


def window_note(configured: int, effective: int, receive_maximum: int) -> str:
    """What the connect log adds when the broker's Receive Maximum caps the window."""
    if effective < configured:
        return (
            f" (mqtt.max_inflight {configured}, capped by the broker's "
            f"Receive Maximum {receive_maximum})"
        )
    return ""
