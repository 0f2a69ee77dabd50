"""Checks against the servers: the broker (and its ACL) and the database (and its token)."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import ssl
from collections.abc import Sequence
from typing import Any

import aiomqtt
import trio
import trio_asyncio
import urllib3
from aiomqtt.exceptions import MqttConnectError
from influxdb_client.rest import ApiException
from influxdb_client.service.buckets_service import BucketsService
from influxdb_client.service.write_service import WriteService

from gateway.check.common import (
    _TOKEN_KEYS,
    CHECK_TIMEOUT,
    ECHO_TIMEOUT,
    Line,
    _failed,
)
from gateway.config.sections import InfluxSection, MqttSection, server_name
from gateway.errors import leaf
from gateway.sinks.influx import InfluxWriter
from gateway.sinks.mqtt import describe_error, new_client

# -- MQTT -------------------------------------------------------------------------


def _connect_hint(exc: BaseException, where: str = "mqtt.host and mqtt.port") -> str:
    """describe_error's account, with the config keys (``where`` names the server's) to look at."""
    text = describe_error(exc)
    if "(check " in text:  # describe_error named the credentials already
        return text
    lowered = text.lower()
    if isinstance(exc, trio.TooSlowError) or "timed out" in lowered:
        return (
            f"no answer from the broker within {CHECK_TIMEOUT:.0f} s (check {where},"
            " and whether that port wants TLS: mqtt.ca_file)"
        )
    if isinstance(exc, MqttConnectError):
        if "identifier" in text.lower():
            return f"{text} (check mqtt.client_id)"
        return f"{text} (see the broker's log)"
    if "certificate" in lowered:
        return (
            f"{text} (check mqtt.ca_file: the CA that signed the broker's certificate;"
            f" the host in {where} must be a name in the certificate)"
        )
    if isinstance(exc, ssl.SSLError) or "ssl" in lowered or "tls" in lowered:
        return (
            f"{text} (check mqtt.ca_file, mqtt.cert_file, mqtt.key_file, and that mqtt.port"
            " is the broker's TLS listener)"
        )
    return f"{text} (is the broker running? check {where})"


def _refused(granted: Sequence[Any]) -> bool:
    """A SUBACK that refuses: 0x80 (MQTT 3.1.1) or any reason code >= 0x80 (MQTT 5)."""
    for code in granted:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 0x80:
            return True
    return not granted


async def check_mqtt(m: MqttSection) -> Line:
    """Connect, then prove that a publish under the prefix reaches the broker.

    Mosquitto (MQTT 3.1.1) acknowledges a publish its ACL denies and drops it,
    so a PUBACK proves nothing: the probe goes to a topic of its own under the
    prefix, not retained, and counts only when it comes back through a
    subscription of the same client.
    """
    where = server_name(m.host, m.port)
    who = f"user {m.username}" if m.username else "anonymous clients"
    topic = f"{m.topic_prefix}/gateway/check-{secrets.token_hex(4)}"
    payload = secrets.token_hex(8).encode()
    not_permitted = (
        f"publish not permitted under {m.topic_prefix}/ (check the broker's ACL for {who}:"
        f" the gateway needs write on {m.topic_prefix}/#, and this check read on"
        f" {m.topic_prefix}/gateway/# to see its probe)"
    )
    stage = "connect"

    async def probe() -> str | None:
        nonlocal stage
        # Not the daemon's id: the broker would disconnect a running gateway.
        async with new_client(m, f"{m.client_id}-check", timeout=CHECK_TIMEOUT) as client:
            stage = "subscribe"
            granted = await client.subscribe(topic, qos=1, timeout=CHECK_TIMEOUT)
            if _refused(granted):
                return (
                    "cannot verify publish permission: subscribe refused by ACL (let"
                    f" {who} read {m.topic_prefix}/gateway/# so that this check can see its"
                    " probe)"
                )
            stage = "publish"
            await client.publish(topic, payload, qos=1, retain=False, timeout=CHECK_TIMEOUT)
            try:
                async with asyncio.timeout(ECHO_TIMEOUT):
                    async for message in client.messages:
                        if message.topic.matches(topic) and message.payload == payload:
                            return None
            except TimeoutError:
                return not_permitted
            raise aiomqtt.MqttError("connection closed by the broker")

    failure: BaseException | None = None
    problem: str | None = None
    try:
        async with trio_asyncio.open_loop():
            with trio.fail_after(2 * CHECK_TIMEOUT + ECHO_TIMEOUT + 2):
                problem = await trio_asyncio.aio_as_trio(probe)()
    except* (aiomqtt.MqttError, OSError, trio.TooSlowError) as group:
        failure = leaf(group)
    if failure is not None:
        if stage == "connect":
            problem = _connect_hint(
                failure, "mqtt.servers" if m.servers else "mqtt.host and mqtt.port"
            )
        elif stage == "subscribe":
            # Some brokers close the connection on a subscription they refuse.
            problem = (
                f"cannot verify publish permission: subscribe failed: {failure} (check the"
                f" broker's ACL: let {who} read {m.topic_prefix}/gateway/#)"
            )
        else:
            # Some brokers close the connection on a publish they refuse.
            problem = f"{not_permitted}; the probe failed: {failure}"
    if problem is None:
        return Line("mqtt", where)
    return _failed("mqtt", where, problem)


# -- InfluxDB ---------------------------------------------------------------------


def _url_key(cfg: InfluxSection) -> str:
    """The key that holds the URL being checked."""
    return "influxdb.urls" if cfg.urls else "influxdb.url"


def _influx_error(exc: ApiException) -> tuple[str, str] | None:
    """(code, message) of an InfluxDB 2 error answer; None if it is not one."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        doc = json.loads(body or "")
    except (TypeError, ValueError):
        return None
    if isinstance(doc, dict) and "code" in doc and "message" in doc:
        return str(doc["code"]), str(doc["message"])[:200]
    return None


def _network_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and reason is not None:
        exc = reason
    # urllib3 puts the connection (its repr, or its host and port: in the
    # URL on the same line already) before the reason.
    return re.sub(r"^(<[^>]*>|\w+\(host=[^)]*\)): ", "", str(exc) or type(exc).__name__)


def _write_refused(cfg: InfluxSection, status: int, message: str, org_found: bool) -> str:
    said = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 401:
        if not cfg.token:
            return f"the server wants a token ({said}): set {_TOKEN_KEYS}"
        return f"token refused ({said}): check {_TOKEN_KEYS}"
    if status == 403:
        return (
            f"the token may not write to bucket {cfg.bucket!r} ({said}): give it write"
            f" access to that bucket, or check {_TOKEN_KEYS}"
        )
    if status == 404:
        # InfluxDB 2 says 'organization name "x" not found' or 'bucket "x" not
        # found'; the bucket listing already proved the org when it answered.
        lowered = message.lower()
        if "organization" in lowered:
            return f"org {cfg.org!r} not found ({said}): check influxdb.org"
        if "bucket" in lowered or org_found:
            return (
                f"bucket {cfg.bucket!r} not found in org {cfg.org!r} ({said}):"
                " check influxdb.bucket"
            )
        return f"{said}: check influxdb.org and influxdb.bucket"
    return f"{said}: check {_url_key(cfg)} and the server's log"


def _probe_influx(writer: InfluxWriter, cfg: InfluxSection) -> tuple[bool, str]:
    """(failed, verdict) for the database, by at most two requests (blocking).

    InfluxDB 2 checks the token, the org, the bucket and the token's write
    permission on it, in that order, before it reads the body of a write;
    an empty body then fails as 400 "writing requires points", and nothing is
    stored. So a 400 of InfluxDB's kind "invalid" (or a 204) proves that the
    gateway may write; 401, 403 and 404 say which key is wrong. A server
    without InfluxDB 2's API (VictoriaMetrics takes writes at /api/v2/write
    and answers an empty one 204 whatever the token) is told apart by
    /api/v2/buckets, which only InfluxDB 2 answers with its own JSON.
    """
    api = writer.client.api_client
    # influxdb-client's generated services carry no annotations.
    buckets: Any = BucketsService(api)  # type: ignore[no-untyped-call]
    writes: Any = WriteService(api)  # type: ignore[no-untyped-call]
    # influxdb-client takes request timeouts in milliseconds.
    timeout = min(cfg.timeout, CHECK_TIMEOUT) * 1000
    org_found = False
    try:
        response = buckets.get_buckets(
            org=cfg.org, name=cfg.bucket, _preload_content=False, _request_timeout=timeout
        )
        try:
            org_found = isinstance(json.loads(response.data).get("buckets"), list)
        except (ValueError, AttributeError):
            org_found = False
        influx2 = org_found
    except ApiException as exc:
        influx2 = _influx_error(exc) is not None
    if not influx2:
        if writer.client.ping():
            return False, "reachable; write permission not verified (no InfluxDB 2 API)"
        return True, (
            "answers, but neither as InfluxDB 2 (/api/v2/buckets) nor to /ping: check"
            f" {_url_key(cfg)}"
        )
    try:
        writes.post_write(
            org=cfg.org, bucket=cfg.bucket, body="", precision="ns", _request_timeout=timeout
        )
    except ApiException as exc:
        code, message = _influx_error(exc) or ("", "")
        if exc.status == 400 and code == "invalid":
            return False, "ok"
        return True, _write_refused(cfg, int(exc.status or 0), message, org_found)
    return False, "ok"


async def check_influx(cfg: InfluxSection) -> Line:
    """May the token write to the bucket in the org? Bounded in time; stores nothing."""
    writer = InfluxWriter(cfg)
    # influxdb.timeout bounds each socket operation, not a request: the whole
    # check gets a deadline, and abort() frees the thread that missed it.
    limit = 2 * min(cfg.timeout, CHECK_TIMEOUT) + 2

    def run() -> tuple[bool, str]:
        try:
            return _probe_influx(writer, cfg)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            text = _network_error(exc)
            if "certificate" in text.lower():
                hint = f"check {_url_key(cfg)}; its CA must be in this host's trust store"
            else:
                hint = f"is InfluxDB running? check {_url_key(cfg)}"
            return True, f"cannot reach it: {text} ({hint})"
        finally:
            writer.close()

    result: tuple[bool, str] | None = None
    with trio.move_on_after(limit):
        result = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    if result is None:
        writer.abort()
        result = True, f"no answer within {limit:.0f} s: check {_url_key(cfg)}"
    failed, verdict = result
    return _failed("influxdb", cfg.url, verdict) if failed else Line("influxdb", cfg.url, verdict)
