"""The HTTP status endpoint: /metrics, /healthz, /api/status and a status page.

Hypercorn serves a small Starlette app from the gateway's own Trio nursery, so
the endpoint lives and dies with the daemon and reads its state directly:

- ``/metrics``: the Prometheus registry, with the age and backlog gauges
  refreshed just before each scrape.
- ``/healthz``: 200 while the pipeline makes progress, 503 with the reasons when
  it does not (see :func:`health`).
- ``/api/status``: source, sinks and the latest value of every metric with a
  short history (see :class:`LatestValues`). Secrets never appear in it.
- ``/``: a self-contained page for a technician that polls ``/api/status``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.influx_sink import UNITS
from gateway.telemetry import Packet

if TYPE_CHECKING:
    from gateway.buffer import DiskBuffer
    from gateway.supervisor import Gateway

log = logging.getLogger(__name__)

HISTORY_WINDOW = 600.0  # seconds of history kept per metric
HISTORY_POINTS = 600  # at most this many points per metric (≈ one per second)
MAX_SERIES = 1000  # a runaway firmware must not grow memory without bound
TRACK_INTERVAL = 0.5  # how often the backlog tracker looks at the buffers


# -- latest values ------------------------------------------------------------


@dataclass(slots=True)
class Series:
    """One metric of one group: its newest value and a bounded history."""

    value: float
    received_ns: int
    history: deque[tuple[int, float]]  # (received_ns, value), oldest first


class LatestValues:
    """The latest value and a short history of every metric, in memory.

    Pass :meth:`on_packet` as the Gateway's ``on_packet`` hook. History is kept
    for ``window`` seconds with at most ``max_points`` points per metric: a point
    closer than ``window / max_points`` to the previous one replaces it, so the
    history always spans the whole window whatever the packet rate.

    Args:
        window: seconds of history to keep.
        max_points: the bound on points per metric.
        max_series: the bound on (group, metric) pairs; later ones are ignored.
    """

    def __init__(
        self,
        window: float = HISTORY_WINDOW,
        max_points: int = HISTORY_POINTS,
        max_series: int = MAX_SERIES,
    ) -> None:
        self.window_ns = int(window * 1e9)
        self.max_points = max_points
        self.max_series = max_series
        self.spacing_ns = self.window_ns // max_points
        self.series: dict[tuple[str, str], Series] = {}
        self.packets = 0
        self.last_received_ns: int | None = None
        self.last_meta: dict[str, Any] = {}

    def on_packet(self, packet: Packet) -> None:
        """Record every metric of ``packet`` (called by the supervisor)."""
        t = packet.received_ns
        self.packets += 1
        self.last_received_ns = t
        self.last_meta = dict(packet.meta)
        for group, metric, raw in packet.metrics():
            value = float(raw)
            key = (group, metric)
            s = self.series.get(key)
            if s is None:
                if len(self.series) >= self.max_series:
                    continue
                s = self.series[key] = Series(value, t, deque(maxlen=self.max_points))
            s.value, s.received_ns = value, t
            h = s.history
            if len(h) >= 2 and h[-1][0] - h[-2][0] < self.spacing_ns:
                # The last point is only provisional (too close to the one
                # before it): the newer value supersedes it.
                h[-1] = (t, value)
            else:
                h.append((t, value))
            while h and t - h[0][0] > self.window_ns:
                h.popleft()

    def to_json(self, now_ns: int) -> dict[str, dict[str, Any]]:
        """group → metric → value, unit, age and history ``[[unix_ms, value], …]``."""
        out: dict[str, dict[str, Any]] = {}
        for (group, metric), s in sorted(self.series.items()):
            out.setdefault(group, {})[metric] = {
                "value": s.value,
                "unit": UNITS.get(metric, ""),
                "age_s": round(max(0.0, (now_ns - s.received_ns) / 1e9), 3),
                "history": [[t // 1_000_000, v] for t, v in s.history],
            }
        return out


# -- health ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SinkProgress:
    """What :func:`health` needs to know about one sink (times: monotonic s)."""

    name: str
    backlog: int
    waiting_since: float | None  # when the backlog last became non-empty
    last_delivery: float | None  # the last acknowledged delivery


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The pipeline's progress at one instant (times: monotonic seconds)."""

    started_at: float
    last_packet_at: float | None
    sinks: tuple[SinkProgress, ...] = ()


def health(snapshot: Snapshot, now: float, unhealthy_after: float) -> tuple[bool, list[str]]:
    """Decide whether the pipeline makes progress.

    Unhealthy when (a) no packet arrived for longer than ``unhealthy_after``
    (counted from start-up until the first packet), or (b) a sink has records
    waiting and delivered nothing for longer than ``unhealthy_after`` while it
    had them.

    Returns:
        ``(ok, reasons)``; ``reasons`` is empty when ``ok``.
    """
    reasons: list[str] = []
    since = snapshot.last_packet_at if snapshot.last_packet_at is not None else snapshot.started_at
    quiet = now - since
    if quiet > unhealthy_after:
        what = "no packet yet" if snapshot.last_packet_at is None else "no packet"
        reasons.append(f"source: {what} for {quiet:.0f} s (limit {unhealthy_after:g} s)")
    for sink in snapshot.sinks:
        if sink.backlog <= 0:
            continue
        marks = [snapshot.started_at, sink.waiting_since, sink.last_delivery]
        stuck = now - max(m for m in marks if m is not None)
        if stuck > unhealthy_after:
            reasons.append(
                f"{sink.name}: {sink.backlog} record(s) waiting, nothing delivered "
                f"for {stuck:.0f} s (limit {unhealthy_after:g} s)"
            )
    return not reasons, reasons


def making_progress(snapshot: Snapshot, now: float, unhealthy_after: float) -> bool:
    """Whether the systemd watchdog should be fed.

    True when :func:`health` is ok, or when at least one sink delivered within
    ``unhealthy_after`` (a silent source with a sink still replaying its
    backlog, or a dead sink while packets keep arriving, is progress: the
    daemon is alive and restarting it would not help).
    """
    ok, _ = health(snapshot, now, unhealthy_after)
    if ok:
        return True
    if snapshot.last_packet_at is not None and now - snapshot.last_packet_at <= unhealthy_after:
        return True
    return any(
        s.last_delivery is not None and now - s.last_delivery <= unhealthy_after
        for s in snapshot.sinks
    )


class ProgressTracker:
    """Builds :class:`Snapshot` s of a running gateway.

    The buffers only say how many records wait, not since when: :meth:`run`
    notes when each backlog becomes non-empty (polled every ``interval`` s; a
    delivery in between counts through ``last_delivery`` anyway).

    Args:
        gateway: the running gateway.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, gateway: Gateway, clock: Callable[[], float] = time.monotonic) -> None:
        self.gateway = gateway
        self.clock = clock
        self.started_at = clock()
        self._waiting_since: dict[str, float | None] = {"mqtt": None, "influx": None}

    def _buffers(self) -> Iterable[tuple[str, DiskBuffer | None, float | None]]:
        g = self.gateway
        yield "mqtt", g.mqtt_buffer, g.mqtt.last_delivery if g.mqtt else None
        yield "influx", g.influx_buffer, g.influx.last_delivery if g.influx else None

    def _note_backlogs(self, now: float) -> None:
        for name, buf, _ in self._buffers():
            count = buf.count.value if buf is not None else 0
            if count == 0:
                self._waiting_since[name] = None
            elif self._waiting_since[name] is None:
                self._waiting_since[name] = now

    def snapshot(self) -> Snapshot:
        """The gateway's progress now, all times on ``clock``."""
        now = self.clock()
        self._note_backlogs(now)
        trio_now = trio.current_time()
        sinks = []
        for name, buf, delivered in self._buffers():
            # Sinks stamp deliveries with Trio's clock; convert to ours.
            last = None if delivered is None else now - (trio_now - delivered)
            count = buf.count.value if buf is not None else 0
            sinks.append(SinkProgress(name, count, self._waiting_since[name], last))
        return Snapshot(self.started_at, self.gateway.metrics.last_packet_at, tuple(sinks))

    async def run(self) -> None:
        """Keep the backlog marks up to date, forever."""
        while True:
            self._note_backlogs(self.clock())
            await trio.sleep(TRACK_INTERVAL)


# -- documents --------------------------------------------------------------------


def refresh_gauges(gateway: Gateway, started_at: float) -> None:
    """Bring the age and backlog gauges up to now (before a scrape)."""
    m = gateway.metrics
    since = m.last_packet_at if m.last_packet_at is not None else started_at
    m.last_packet_age.set(max(0.0, time.monotonic() - since))
    if gateway.mqtt_buffer is not None:
        m.mqtt_buffered.set(gateway.mqtt_buffer.count.value)
    if gateway.influx_buffer is not None:
        m.influx_buffered.set(gateway.influx_buffer.count.value)


def _age(now: float, then: float | None) -> float | None:
    return None if then is None else round(max(0.0, now - then), 3)


def status_document(
    gateway: Gateway, tracker: ProgressTracker, latest: LatestValues | None
) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready data (no secrets)."""
    cfg, m = gateway.cfg, gateway.metrics
    snap = tracker.snapshot()
    now = tracker.clock()
    ok, reasons = health(snap, now, cfg.status.unhealthy_after)
    progress = {s.name: s for s in snap.sinks}
    src = gateway.source
    source = {
        "kind": cfg.source.kind,
        "state": src.state if src is not None else "not started",
        "pid": src.pid if src is not None else None,
        "restarts": dict(src.restarts) if src is not None else {},
        "packets": int(m.value("gateway_packets_total")),
        "last_packet_age_s": _age(now, snap.last_packet_at),
    }

    def sink(name: str, buf: DiskBuffer | None, extra: dict[str, Any]) -> dict[str, Any]:
        p = progress[name]
        oldest = m.registry.get_sample_value("gateway_buffer_oldest_age_seconds", {"sink": name})
        return {
            **extra,
            "backlog": p.backlog,
            "max_records": buf.max_records if buf is not None else None,
            "oldest_age_s": oldest if p.backlog and oldest is not None else None,
            "waiting_for_s": _age(now, p.waiting_since),
            "last_delivery_age_s": _age(now, p.last_delivery),
        }

    mq, ix = gateway.mqtt, gateway.influx
    sinks = {
        "mqtt": sink(
            "mqtt",
            gateway.mqtt_buffer,
            {
                "target": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                "connected": mq.connected if mq is not None else False,
                "delivered": int(m.value("gateway_mqtt_published_total")),
                "dropped": int(m.value("gateway_mqtt_dropped_total")),
                "dead_letters": int(m.value("gateway_mqtt_dead_letter_total")),
                "last_error": mq.last_error if mq is not None else "",
            },
        ),
        "influx": sink(
            "influx",
            gateway.influx_buffer,
            {
                "target": f"{cfg.influxdb.url} ({cfg.influxdb.org}/{cfg.influxdb.bucket})",
                "healthy": ix.healthy if ix is not None else None,
                "delivered": int(m.value("gateway_influx_written_total")),
                "dropped": int(m.value("gateway_influx_dropped_total")),
                "dead_letters": int(m.value("gateway_influx_dead_letter_total")),
                "last_error": ix.last_error if ix is not None else "",
            },
        ),
    }
    return {
        "gateway": {"id": cfg.gateway.id, "uptime_s": _age(now, snap.started_at)},
        "healthy": ok,
        "reasons": reasons,
        "unhealthy_after": cfg.status.unhealthy_after,
        "source": source,
        "sinks": sinks,
        "values": latest.to_json(time.time_ns()) if latest is not None else {},
    }


def _redact(text: str, secrets: Iterable[str]) -> str:
    # Errors come from libraries we do not control: never let a secret through.
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _json(gateway: Gateway, data: Any, status: int = 200) -> Response:
    body = json.dumps(data, allow_nan=False, default=_finite_or_none)
    secrets = (gateway.cfg.mqtt.password, gateway.cfg.influxdb.token)
    return Response(_redact(body, secrets), status, media_type="application/json")


def _finite_or_none(value: Any) -> Any:  # pragma: no cover - json fallback
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def build_app(
    gateway: Gateway, tracker: ProgressTracker, latest: LatestValues | None = None
) -> Starlette:
    """The ASGI app behind :func:`serve_status`."""

    async def metrics(request: Request) -> Response:
        refresh_gauges(gateway, tracker.started_at)
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        ok, reasons = health(
            tracker.snapshot(), tracker.clock(), gateway.cfg.status.unhealthy_after
        )
        body = {"status": "ok" if ok else "unhealthy", "reasons": reasons}
        return _json(gateway, body, 200 if ok else 503)

    async def api_status(request: Request) -> Response:
        return _json(gateway, status_document(gateway, tracker, latest))

    async def page(request: Request) -> Response:
        return HTMLResponse(STATUS_PAGE)

    return Starlette(
        routes=[
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/api/status", api_status),
            Route("/", page),
        ]
    )


async def serve_status(
    gateway: Gateway,
    listen: str,
    *,
    latest: LatestValues | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the status endpoint on ``listen`` ("host:port") until cancelled.

    Args:
        gateway: the gateway to report on (its stages may still be starting).
        listen: "host:port"; port 0 picks a free port.
        latest: the values for /api/status; by default the LatestValues whose
            ``on_packet`` is the gateway's hook, if it is one.

    ``task_status.started(port)`` reports the bound port once listening.

    Raises:
        OSError: the address cannot be bound.
    """
    if latest is None:
        hook_owner = getattr(gateway.on_packet, "__self__", None)
        latest = hook_owner if isinstance(hook_owner, LatestValues) else None
    tracker = ProgressTracker(gateway)
    config = HypercornConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tracker.run)
        binds: list[str] = await nursery.start(serve, build_app(gateway, tracker, latest), config)
        port = int(binds[0].rsplit(":", 1)[1])
        log.info("status on %s (/metrics, /healthz, /api/status, /)", ", ".join(binds))
        task_status.started(port)


# -- the page -------------------------------------------------------------------------

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>iiot-gateway status</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: 12px 24px; display: flex;
           align-items: center; gap: 16px; }
  header h1 { font-size: 19px; margin: 0; font-weight: 600; }
  main { padding: 16px 24px; }
  .badge { padding: 3px 10px; border-radius: 12px; font-weight: 600; font-size: 13px; }
  .ok { background: #1f9d55; color: #fff; } .bad { background: #d63b3b; color: #fff; }
  .warn { background: #e7a321; color: #1d2330; } .muted { color: #6b7280; }
  .cards { display: flex; gap: 16px; flex-wrap: wrap; margin-bottom: 16px; }
  .card { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 250px;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); }
  .card h2 { font-size: 15px; margin: 0 0 8px; display: flex; justify-content: space-between;
             gap: 12px; }
  .card dl { display: grid; grid-template-columns: auto auto; gap: 2px 16px; margin: 0; }
  .card dt { color: #6b7280; } .card dd { margin: 0; text-align: right;
             font-variant-numeric: tabular-nums; }
  #reasons { color: #b42318; margin: 0 0 12px; padding-left: 20px; }
  table { border-collapse: collapse; background: #fff; border-radius: 8px; overflow: hidden;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); min-width: 640px; }
  th, td { padding: 6px 12px; text-align: left; border-bottom: 1px solid #e5e7eb; }
  th { background: #e9ecf1; font-size: 13px; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
  tr.node td { background: #f0f3f8; font-weight: 700; }
  .err { color: #b42318; font-size: 13px; max-width: 320px; overflow-wrap: anywhere; }
  svg polyline { fill: none; stroke: #2563eb; stroke-width: 1.5; }
</style>
</head>
<body>
<header><h1>iiot-gateway <span id="gwid" class="muted"></span></h1>
  <span id="health" class="badge warn">loading…</span>
  <span id="updated" class="muted"></span></header>
<main>
<ul id="reasons"></ul>
<div class="cards" id="cards"></div>
<h2 style="font-size:16px">Latest values</h2>
<table id="values"><thead><tr><th>node / metric</th><th>value</th><th>unit</th>
  <th>age</th><th>last 10 min</th></tr></thead><tbody></tbody></table>
</main>
<script>
"use strict";
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
function age(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function card(title, badge, cls, rows, error) {
  const dl = el("dl");
  for (const [k, v] of rows) { dl.append(el("dt", {}, k), el("dd", {}, String(v))); }
  const c = el("div", {class: "card"},
    el("h2", {}, title, el("span", {class: "badge " + cls}, badge)), dl);
  if (error) c.append(el("div", {class: "err"}, "last error: " + error));
  return c;
}
function sparkline(points) {
  const w = 160, h = 28, svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  if (points.length < 2) return svg;
  const ts = points.map(p => p[0]), vs = points.map(p => p[1]);
  const t0 = Math.min(...ts), t1 = Math.max(...ts), v0 = Math.min(...vs), v1 = Math.max(...vs);
  const x = t => (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (w - 2) + 1;
  const y = v => h - 2 - (v1 > v0 ? (v - v0) / (v1 - v0) : 0.5) * (h - 4);
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute("points", points.map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1))
    .join(" "));
  svg.append(line);
  return svg;
}
function render(s) {
  document.getElementById("gwid").textContent = s.gateway.id;
  const hb = document.getElementById("health");
  hb.textContent = s.healthy ? "healthy" : "UNHEALTHY";
  hb.className = "badge " + (s.healthy ? "ok" : "bad");
  const reasons = document.getElementById("reasons");
  reasons.replaceChildren(...s.reasons.map(r => el("li", {}, r)));
  const src = s.source, mq = s.sinks.mqtt, ix = s.sinks.influx;
  const restarts = Object.values(src.restarts).reduce((a, b) => a + b, 0);
  const cards = [
    card("Source (" + src.kind + ")", src.state, src.state === "running" ? "ok" : "bad", [
      ["last packet", age(src.last_packet_age_s)], ["packets", src.packets],
      ["pid", src.pid ?? "–"], ["restarts", restarts]]),
  ];
  for (const [name, k, up] of [["MQTT", mq, mq.connected], ["InfluxDB", ix, ix.healthy]]) {
    const state = up ? (name === "MQTT" ? "connected" : "writing") :
      (up === null ? "idle" : (name === "MQTT" ? "disconnected" : "failing"));
    cards.push(card(name + " · " + k.target, state, up ? "ok" : (up === null ? "warn" : "bad"), [
      ["backlog", k.backlog + (k.max_records ? " / " + k.max_records : "")],
      ["oldest waiting", age(k.oldest_age_s)], ["last delivery", age(k.last_delivery_age_s)],
      ["delivered", k.delivered], ["dropped", k.dropped], ["dead letters", k.dead_letters]],
      k.last_error));
  }
  document.getElementById("cards").replaceChildren(...cards);
  const rows = [];
  for (const [node, metrics] of Object.entries(s.values)) {
    rows.push(el("tr", {class: "node"}, el("td", {colspan: "5"}, node)));
    for (const [metric, m] of Object.entries(metrics)) {
      rows.push(el("tr", {"data-node": node, "data-metric": metric},
        el("td", {}, metric), el("td", {class: "num"}, String(m.value)), el("td", {}, m.unit),
        el("td", {}, age(m.age_s)), el("td", {}, sparkline(m.history))));
    }
  }
  document.querySelector("#values tbody").replaceChildren(...rows);
  document.getElementById("updated").textContent =
    "updated " + new Date().toLocaleTimeString();
}
async function refresh() {
  try {
    const r = await fetch("api/status", {cache: "no-store"});
    render(await r.json());
  } catch (e) {
    const hb = document.getElementById("health");
    hb.textContent = "gateway unreachable"; hb.className = "badge bad";
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
