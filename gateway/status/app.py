"""The HTTP status endpoint: /metrics, /healthz, /api/status and a status page.

Hypercorn serves a small Starlette app from the gateway's own Trio nursery, so
the endpoint lives and dies with the daemon and reads its state directly:

- ``/metrics``: :class:`gateway.metrics.Metrics` in the Prometheus text format.
- ``/healthz``: 200 while the pipeline makes progress, 503 with the reasons when
  it does not (:mod:`gateway.status.health`).
- ``/api/status``: the active alerts, source, sinks and the latest value of
  every metric with a short history. Its field names are an interface (the page, ``gateway status``
  and users' scripts read them). Secrets never reach it: error texts are
  scrubbed where they enter the sinks' state.
- ``/``: ``page.html``, a self-contained page for a technician, served with
  the state already in it (:mod:`gateway.status.page`); its script then polls
  ``/api/status`` to keep it live.

The app sees the stages only through the small protocols below, so this
module depends on nothing above it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from importlib import metadata, resources
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.records import rfc3339_ms
from gateway.status.health import health, snapshot
from gateway.status.page import render_page
from gateway.status.state import (
    ERROR_SAMPLE,
    BufferView,
    ErrorSince,
    SinkView,
    SourceView,
    StatusContext,
    alerts_document,
    sink_figures,
)

# Fields of sink_figures that /api/status takes as they are.
SHARED = ("coverage_h", "rate_per_hour")

log = logging.getLogger(__name__)

__all__ = [
    "BufferView",
    "ErrorSince",
    "SinkView",
    "SourceView",
    "StatusContext",
    "alerts_document",
    "build_app",
    "page_html",
    "serve_status",
    "status_document",
]


def page_html() -> str:
    """The status page as packaged next to this module (no state filled in)."""
    return resources.files("gateway.status").joinpath("page.html").read_text(encoding="utf-8")


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def status_document(ctx: StatusContext) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready data (no secrets)."""
    cfg, m = ctx.cfg, ctx.metrics
    snap = snapshot(m)
    now = time.monotonic()
    ok, reasons = health(snap, now, cfg.status.unhealthy_after)
    progress = {s.name: s for s in snap.sinks}
    wall_ns = time.time_ns()
    source = {
        "kind": cfg.source.kind,
        "state": ctx.source.state,
        "pid": ctx.source.pid,
        "restarts": dict(ctx.source.restarts),
        "packets": m.packets,
        "last_packet_age_s": _age(now, snap.last_packet_at),
        "last_error": ctx.source.last_error,
        "last_error_since": _rfc3339(ctx.source.last_error_since),
    }

    def sink(name: str, extra: dict[str, Any]) -> dict[str, Any]:
        p, figures = progress[name], m.sink(name)
        return {
            **extra,
            "delivered": figures.delivered,
            "dropped": figures.dropped,
            "dead_letters": figures.dead_letters,
            "dead_letters_waiting": figures.dead_letters_waiting,
            "salvaged": figures.salvaged,
            "salvage_lost": figures.salvage_lost,
            "last_error": ctx.sinks[name].last_error,
            "last_error_since": _rfc3339(
                ctx.errors.since(name, ctx.sinks[name].last_error, wall_ns)
            ),
            "backlog": p.backlog,
            "max_records": ctx.buffers[name].max_records,
            # Held points included: the buffer's oldest record, whatever waits on it.
            "oldest_age_s": (
                round(figures.oldest_age, 3) if p.backlog or figures.oldest_age else None
            ),
            "waiting_for_s": _age(now, p.waiting_since),
            "last_delivery_age_s": _age(now, p.last_delivery),
            # The figures the gateway/state message carries too, from one builder.
            **{k: v for k, v in sink_figures(ctx, name, p.backlog).items() if k in SHARED},
        }

    sinks = {
        "mqtt": sink(
            "mqtt",
            {
                # The broker in use (or being tried); "target" is its older name.
                "target": m.mqtt.server or f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                "server": m.mqtt.server or f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                "servers": list(m.mqtt.servers),
                "connected": m.mqtt.connected,
                "protocol": m.mqtt.protocol,
                "window": m.mqtt.window,
                "refused": int(m.mqtt.refused.total()),
                "takeovers": m.mqtt.takeovers,
                "takeover": m.mqtt.takeover,
            },
        ),
        "influx": sink(
            "influx",
            {
                "target": f"{m.influx.server or cfg.influxdb.url}"
                f" ({cfg.influxdb.org}/{cfg.influxdb.bucket})",
                "server": m.influx.server or cfg.influxdb.url,
                "servers": list(m.influx.servers),
                "healthy": ctx.sinks["influx"].healthy,
                # Points wait up to this long for their batch: a "waiting" that
                # stays under it is batching, not a stall.
                "batch_interval_s": cfg.influxdb.flush_interval,
            },
        ),
    }
    clock = ctx.clock
    alerts = alerts_document(ctx.alerts, wall_ns)
    uptime = _age(now, snap.started_at)
    return {
        "gateway": {
            "id": cfg.gateway.id,
            "uptime_s": uptime,
            "version": VERSION,
            "started_at": _rfc3339(wall_ns - int((uptime or 0) * 1e9)),
        },
        "summary": summary(ok, len(alerts)),
        "alerts": alerts,
        "clock": {
            "synchronized": bool(clock.synchronised.value),
            "policy": cfg.gateway.clock_sync,
            "since": _rfc3339(clock.since_ns),
            "how": clock.verdict.how if clock.verdict else "not checked yet",
            "points_held": m.influx.backlog if m.influx.holding else 0,
        },
        "healthy": ok,
        "reasons": reasons,
        "unhealthy_after": cfg.status.unhealthy_after,
        "source": source,
        "sinks": sinks,
        "values": ctx.latest.to_json(wall_ns),
    }


def _version() -> str:
    try:
        return metadata.version("iiot-gateway")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from an uninstalled tree
        return "unknown"


VERSION = _version()


def summary(healthy: bool, firing: int) -> str:
    """The health badge's text, with the firing alerts: they are read together."""
    text = "healthy" if healthy else "UNHEALTHY"
    if firing:
        text += f" · {firing} alert{'s' if firing > 1 else ''} firing"
    return text


def _rfc3339(ns: int | None) -> str | None:
    return None if ns is None else rfc3339_ms(ns)


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, allow_nan=False, default=_finite_or_none)
    return Response(body, status, media_type="application/json")


def _finite_or_none(value: Any) -> Any:  # pragma: no cover - json fallback
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def build_app(ctx: StatusContext) -> Starlette:
    """The ASGI app behind :func:`serve_status`."""
    page = page_html()

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        ok, reasons = health(
            snapshot(ctx.metrics), time.monotonic(), ctx.cfg.status.unhealthy_after
        )
        body = {"status": "ok" if ok else "unhealthy", "reasons": reasons}
        return _json(body, 200 if ok else 503)

    async def api_status(request: Request) -> Response:
        return _json(status_document(ctx))

    async def index(request: Request) -> Response:
        # The state as it is now, so that the page reads without its script.
        return HTMLResponse(render_page(page, status_document(ctx)))

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/api/status", api_status),
            Route("/", index),
        ]
    )


async def _sample_errors(ctx: StatusContext) -> None:
    """Note the sinks' errors as they appear, so "since" does not wait for a reader."""
    while True:
        ctx.errors.sample(ctx.sinks, time.time_ns())
        await trio.sleep(ERROR_SAMPLE)


async def serve_status(
    ctx: StatusContext,
    listen: str,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status endpoint on ``listen`` ("host:port") until cancelled.

    ``task_status.started(port)`` reports the bound port once listening;
    port 0 picks a free one.

    Raises:
        OSError: the address cannot be bound.
    """
    config = HypercornConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_errors, ctx)
        binds: list[str] = await nursery.start(serve, build_app(ctx), config)
        port = int(binds[0].rsplit(":", 1)[1])
        log.info("status on %s (/metrics, /healthz, /api/status, /)", ", ".join(binds))
        task_status.started(port)
