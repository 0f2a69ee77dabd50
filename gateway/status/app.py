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
- ``/``: ``page.html``, a self-contained page for a technician that polls
  ``/api/status``.

The app sees the stages only through the small protocols of
:mod:`gateway.status.state` (which also builds the figures ``/api/status``
shares with the ``gateway/state`` MQTT message), so this module depends on
nothing above it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from importlib import resources
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.status.health import health, snapshot
from gateway.status.state import (
    BufferView,
    SinkView,
    SourceView,
    StatusContext,
    age,
    alerts_document,
    clock_document,
    sink_figures,
    source_figures,
)

log = logging.getLogger(__name__)

__all__ = [
    "BufferView",
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
    """The status page, packaged next to this module."""
    return resources.files("gateway.status").joinpath("page.html").read_text(encoding="utf-8")


def status_document(ctx: StatusContext) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready data (no secrets)."""
    cfg, m = ctx.cfg, ctx.metrics
    snap = snapshot(m)
    now = time.monotonic()
    ok, reasons = health(snap, now, cfg.status.unhealthy_after)
    progress = {s.name: s for s in snap.sinks}
    source = {
        **source_figures(ctx, now),
        "pid": ctx.source.pid,
        "restarts": dict(ctx.source.restarts),
    }

    def sink(name: str, extra: dict[str, Any]) -> dict[str, Any]:
        p, figures = progress[name], m.sink(name)
        return {
            **extra,
            **sink_figures(ctx, name, p.backlog),
            "delivered": figures.delivered,
            "dead_letters_waiting": figures.dead_letters_waiting,
            "salvaged": figures.salvaged,
            "salvage_lost": figures.salvage_lost,
            "last_error": ctx.sinks[name].last_error,
            "waiting_for_s": age(now, p.waiting_since),
            "last_delivery_age_s": age(now, p.last_delivery),
        }

    sinks = {
        "mqtt": sink(
            "mqtt",
            {
                "target": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
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
                "target": f"{cfg.influxdb.url} ({cfg.influxdb.org}/{cfg.influxdb.bucket})",
                "healthy": ctx.sinks["influx"].healthy,
            },
        ),
    }
    return {
        "gateway": {"id": cfg.gateway.id, "uptime_s": age(now, snap.started_at)},
        "alerts": alerts_document(ctx.alerts, time.time_ns()),
        "clock": {
            **clock_document(ctx),
            "points_held": m.influx.backlog if m.influx.holding else 0,
        },
        "healthy": ok,
        "reasons": reasons,
        "unhealthy_after": cfg.status.unhealthy_after,
        "source": source,
        "sinks": sinks,
        "values": ctx.latest.to_json(time.time_ns()),
    }


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
        return HTMLResponse(page)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/api/status", api_status),
            Route("/", index),
        ]
    )


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
        binds: list[str] = await nursery.start(serve, build_app(ctx), config)
        port = int(binds[0].rsplit(":", 1)[1])
        log.info("status on %s (/metrics, /healthz, /api/status, /)", ", ".join(binds))
        task_status.started(port)
