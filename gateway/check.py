"""``gateway check``: can this configuration reach its broker and database?"""

from __future__ import annotations

import sys

import aiomqtt
import trio
import trio_asyncio

from gateway.config import Config
from gateway.errors import leaf
from gateway.sinks.influx import InfluxWriter
from gateway.sinks.mqtt import describe_error, tls_context

CHECK_TIMEOUT = 10.0


async def _check_mqtt(cfg: Config) -> str | None:
    m = cfg.mqtt

    async def connect() -> None:
        async with aiomqtt.Client(
            m.host,
            m.port,
            username=m.username or None,
            password=m.password or None,
            identifier=f"{m.client_id}-check",
            timeout=CHECK_TIMEOUT,
            tls_context=tls_context(m),
        ):
            pass

    failure: BaseException | None = None
    try:
        async with trio_asyncio.open_loop():
            with trio.fail_after(CHECK_TIMEOUT + 1):
                await trio_asyncio.aio_as_trio(connect)()
    except* (aiomqtt.MqttError, OSError, trio.TooSlowError) as group:
        failure = leaf(group)
    if failure is None:
        return None
    return describe_error(failure)


def _check_influx(cfg: Config) -> str | None:
    writer = InfluxWriter(cfg.influxdb)
    try:
        if not writer.client.ping():
            return "no answer to /ping"
    except Exception as exc:
        return str(exc)
    finally:
        writer.close()
    return None


async def check(cfg: Config) -> int:
    """Print one line per server; exit 0 if all answer, 1 otherwise."""
    failures = 0
    mqtt_err = await _check_mqtt(cfg)
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    print(f"mqtt      {where:30} {'ok' if mqtt_err is None else 'FAILED: ' + mqtt_err}")
    failures += mqtt_err is not None
    influx_err = await trio.to_thread.run_sync(_check_influx, cfg)
    print(
        f"influxdb  {cfg.influxdb.url:30} {'ok' if influx_err is None else 'FAILED: ' + influx_err}"
    )
    failures += influx_err is not None
    sys.stdout.flush()
    return 1 if failures else 0
