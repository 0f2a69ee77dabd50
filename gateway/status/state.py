"""The gateway's state as one JSON document: ``/api/status``'s figures and ``gateway/state``.

Two readers want the same figures: the status page (``/api/status``, on the
box) and the office (a retained MQTT message on
``{topic_prefix}/gateway/state``, for a box behind cellular NAT). This module
builds the parts they share, each figure read from one place
(:class:`gateway.metrics.Metrics`, the health policy, the stages' views), so
the two can never disagree; :mod:`gateway.status.app` adds what only the page
shows (the latest values, MQTT window and protocol …).

:func:`state_document` is the MQTT document, versioned by its ``schema``
field (:data:`SCHEMA`; see docs/architecture.md "gateway/state"). A field is
only ever added within a version; renaming or removing one is a new version.

:class:`StateWatch` decides when it is published: at every connect (the MQTT
sink does that itself), on every change of health, clock, alerts, a sink's
connection or the source's error, and every ``gateway.state_interval``
seconds. It looks every :data:`POLL_S` seconds, because health changes with
time passing (a backlog stuck for ``unhealthy_after``), not only on events,
and the "within 1 s" promise needs a look well inside a second; a look costs
a few dictionary reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from gateway import __version__
from gateway.alerts import Alerts, rfc3339
from gateway.clock import ClockTracker
from gateway.config import Config
from gateway.metrics import Metrics
from gateway.records import rfc3339_ms
from gateway.status.health import health, snapshot
from gateway.status.latest import LatestValues

SCHEMA = 1
POLL_S = 0.25
SINKS = ("mqtt", "influx")
# A source in one of these states has an error (its last_error says which).
SOURCE_ERROR_STATES = frozenset({"failed", "restarting"})


class SourceView(Protocol):
    """What the page shows of the source stage."""

    @property
    def state(self) -> str: ...
    @property
    def pid(self) -> int | None: ...
    @property
    def restarts(self) -> Mapping[str, int]: ...
    @property
    def last_error(self) -> str: ...
    @property
    def last_error_since(self) -> int | None: ...  # wall ns


class SinkView(Protocol):
    """What the page shows of a sink beyond its metrics."""

    @property
    def last_error(self) -> str: ...
    @property
    def healthy(self) -> bool | None: ...
    @property
    def server(self) -> str: ...


class BufferView(Protocol):
    """What the page shows of a buffer beyond its metrics."""

    @property
    def max_records(self) -> int: ...


@dataclass(frozen=True)
class StatusContext:
    """Everything the endpoint reports on; built by the daemon once its stages exist."""

    cfg: Config
    metrics: Metrics
    latest: LatestValues
    source: SourceView
    sinks: Mapping[str, SinkView]
    buffers: Mapping[str, BufferView]
    clock: ClockTracker
    alerts: Alerts | None = None
    errors: ErrorSince = field(default_factory=lambda: ErrorSince())


class ErrorSince:
    """Since when each sink's current error text has been seen (wall ns).

    The sinks keep only their last error's text; this notes when it first
    appeared, so that the page can say "since". :func:`serve_status` samples
    the sinks every :data:`ERROR_SAMPLE` seconds (and every document does
    too), so "since" is right to within that, whether or not anyone is looking.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, int]] = {}

    def since(self, stage: str, text: str, now_ns: int) -> int | None:
        """When ``text`` became ``stage``'s error (None: there is none)."""
        if not text:
            self._seen.pop(stage, None)
            return None
        seen = self._seen.get(stage)
        if seen is None or seen[0] != text:
            self._seen[stage] = seen = (text, now_ns)
        return seen[1]

    def sample(self, sinks: Mapping[str, SinkView], now_ns: int) -> None:
        """Note every sink's current error."""
        for name, sink in sinks.items():
            self.since(name, sink.last_error, now_ns)


ERROR_SAMPLE = 1.0  # seconds between ErrorSince samples


def age(now: float, then: float | None) -> float | None:
    """Seconds from ``then`` to ``now`` (monotonic), rounded; None for never."""
    return None if then is None else round(max(0.0, now - then), 3)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def sink_figures(ctx: StatusContext, name: str, backlog: int) -> dict[str, Any]:
    """The figures of one sink that ``/api/status`` and the state both carry."""
    figures = ctx.metrics.sink(name)
    return {
        "backlog": backlog,
        "max_records": ctx.buffers[name].max_records,
        # Held points included: the buffer's oldest record, whatever waits on it.
        "oldest_age_s": (round(figures.oldest_age, 3) if backlog or figures.oldest_age else None),
        "dropped": figures.dropped,
        "dead_letters": figures.dead_letters,
        "connected": figures.connected,
        "server": ctx.sinks[name].server,
        "coverage_h": _round(figures.coverage_hours),
        "rate_per_hour": _round(figures.rate_per_hour, 1),
    }


def clock_document(ctx: StatusContext) -> dict[str, Any]:
    """The clock's state: is it known right, by which policy, since when, how."""
    clock = ctx.clock
    return {
        "synchronized": bool(clock.synchronised.value),
        "policy": ctx.cfg.gateway.clock_sync,
        "since": None if clock.since_ns is None else rfc3339_ms(clock.since_ns),
        "how": clock.verdict.how if clock.verdict else "not checked yet",
    }


def alerts_document(engine: Alerts | None, now_ns: int) -> list[dict[str, Any]]:
    """The active alerts, oldest first: what fired, on what value, since when."""
    if engine is None:
        return []
    return [
        {
            "name": a.name,
            "metric": a.metric,
            "value": a.value,
            "since": rfc3339(a.since_ns),
            "at": rfc3339(a.at_ns),
            "firing_for_s": round(max(0.0, (now_ns - a.at_ns) / 1e9), 3),
        }
        for a in engine.active()
    ]


def source_figures(ctx: StatusContext, now: float) -> dict[str, Any]:
    """The source's state, its last error ("" when none) and its packets."""
    m = ctx.metrics
    return {
        "kind": ctx.cfg.source.kind,
        "state": ctx.source.state,
        "last_error": ctx.source.last_error,
        "packets": m.packets,
        "last_packet_age_s": age(now, m.last_packet_at),
    }


def state_document(ctx: StatusContext) -> dict[str, Any]:
    """The retained ``gateway/state`` document (schema :data:`SCHEMA`)."""
    m = ctx.metrics
    snap = snapshot(m)
    now = time.monotonic()
    ok, reasons = health(snap, now, ctx.cfg.status.unhealthy_after)
    backlogs = {s.name: s.backlog for s in snap.sinks}
    return {
        "schema": SCHEMA,
        "id": ctx.cfg.gateway.id,
        "version": __version__,
        "time": rfc3339_ms(time.time_ns()),
        "uptime_s": age(now, snap.started_at),
        "healthy": ok,
        "reasons": reasons,
        "sinks": {name: sink_figures(ctx, name, backlogs[name]) for name in SINKS},
        "clock": clock_document(ctx),
        "alerts": alerts_document(ctx.alerts, time.time_ns()),
        "source": source_figures(ctx, now),
    }


def state_payload(ctx: StatusContext) -> str:
    """:func:`state_document` as the message's compact JSON text."""
    return json.dumps(state_document(ctx), separators=(",", ":"), allow_nan=False)


def change_key(ctx: StatusContext) -> Hashable:
    """What a change of deserves a new state message: health, clock, alerts, links, source.

    Health's reasons carry growing figures ("for 63 s"): only which part is
    unhealthy counts, or every look would be a change.
    """
    m = ctx.metrics
    ok, reasons = health(snapshot(m), time.monotonic(), ctx.cfg.status.unhealthy_after)
    alerts = () if ctx.alerts is None else tuple(a.name for a in ctx.alerts.active())
    source = ctx.source
    failing = source.state in SOURCE_ERROR_STATES
    return (
        ok,
        tuple(r.split(":", 1)[0] for r in reasons),
        bool(ctx.clock.synchronised.value),
        alerts,
        tuple(m.sink(name).connected for name in SINKS),
        failing,
        source.last_error if failing else "",
    )


class StateWatch:
    """Ask for a state message when something in it changed, and every ``interval``.

    Args:
        ctx: what the document is built from.
        interval: ``gateway.state_interval`` seconds; 0: no periodic message
            (connects and changes still publish).
        wake: asks the publisher (the MQTT sink) to publish a fresh document.
        poll: seconds between looks.
    """

    def __init__(
        self,
        ctx: StatusContext,
        interval: float,
        wake: Callable[[], None],
        poll: float = POLL_S,
    ) -> None:
        self.ctx = ctx
        self.interval = interval
        self.wake = wake
        self.poll = poll
        self.wakes = 0  # how many times it asked (tests read it)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every ``poll`` seconds until cancelled."""
        key = change_key(self.ctx)
        due = trio.current_time() + self.interval
        task_status.started()
        while True:
            await trio.sleep(self.poll)
            now = trio.current_time()
            new = change_key(self.ctx)
            periodic = self.interval > 0 and now >= due
            if new != key or periodic:
                key = new
                due = now + self.interval
                self.wakes += 1
                self.wake()
