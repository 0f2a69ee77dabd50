"""The health policy: is the pipeline delivering? Is the daemon wedged?

Two questions, two answers:

- :func:`health` (``/healthz``, the status page): is what arrives being
  delivered? A source that produces nothing, a sink that holds records and
  delivers none, or a server that rejects everything is unhealthy: someone
  should look. A silent *group* (Node 1 gone while Node 2's heartbeats still
  arrive) is not a health matter: it is an alert (:mod:`gateway.alerts`).
- :func:`wedged` (the systemd watchdog): is this daemon stuck in a way a
  restart can fix? Only a sink that is connected, has records waiting and has
  delivered none of them for longer than ``unhealthy_after`` is. A silent
  sensor, a broker that is down or a database that refuses are the world's
  state, not the daemon's: restarting would not help, so they never starve
  the watchdog. Neither do InfluxDB points held for a right clock.

It needs no polling of its own: the stages record what happens as it happens in
:class:`gateway.metrics.Metrics` (a packet arrived, a backlog became non-empty,
a sink delivered, a record was rejected for good) and :func:`snapshot` reads
those marks. All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.metrics import Metrics


@dataclass(frozen=True, slots=True)
class SinkProgress:
    """What :func:`health` needs to know about one sink."""

    name: str
    backlog: int
    waiting_since: float | None  # when the backlog last became non-empty
    last_delivery: float | None  # the last acknowledged delivery
    last_rejected: float | None = None  # the last record rejected for good
    connected: bool = False  # the server answers (MQTT: connected; InfluxDB: writes succeed)
    holding: bool = False  # the backlog waits on purpose (InfluxDB: for a right clock)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The pipeline's progress at one instant."""

    started_at: float
    last_packet_at: float | None
    sinks: tuple[SinkProgress, ...] = ()


def snapshot(metrics: Metrics) -> Snapshot:
    """The progress marks the stages left in ``metrics``."""
    return Snapshot(
        metrics.started_at,
        metrics.last_packet_at,
        tuple(
            SinkProgress(
                s.name,
                s.backlog,
                s.waiting_since,
                s.last_delivery_at,
                s.last_rejected_at,
                s.connected,
                s.holding,
            )
            for s in metrics.sinks
        ),
    )


def health(snapshot: Snapshot, now: float, unhealthy_after: float) -> tuple[bool, list[str]]:
    """Decide whether the pipeline makes progress.

    Unhealthy when (a) no packet arrived for longer than ``unhealthy_after``
    (counted from start-up until the first packet), (b) a sink has records
    waiting and delivered nothing for longer than ``unhealthy_after`` while it
    had them, or (c) a sink's server rejected records for good within
    ``unhealthy_after`` and accepted none since (everything is going to the
    dead letters).

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
        rejected = sink.last_rejected
        if (
            rejected is not None
            and now - rejected <= unhealthy_after
            and (sink.last_delivery is None or sink.last_delivery < rejected)
        ):
            reasons.append(
                f"{sink.name}: the server rejects records for good (see the dead letters)"
            )
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


def wedged(snapshot: Snapshot, now: float, unhealthy_after: float) -> list[str]:
    """Why the daemon is wedged (empty: it is not, feed the watchdog).

    A sink is wedged when it is connected, has records waiting (not held on
    purpose) and delivered none of them for longer than ``unhealthy_after``
    (counted from start-up, from when the backlog appeared, or from its last
    delivery, whichever is latest). Nothing about the source counts: a quiet
    sensor is the world's state, and the source's own stall watchdog restarts
    a probe that is gone.
    """
    reasons: list[str] = []
    for sink in snapshot.sinks:
        if not sink.connected or sink.holding or sink.backlog <= 0:
            continue
        marks = [snapshot.started_at, sink.waiting_since, sink.last_delivery]
        stuck = now - max(m for m in marks if m is not None)
        if stuck > unhealthy_after:
            reasons.append(
                f"{sink.name}: connected with {sink.backlog} record(s) waiting, nothing "
                f"delivered for {stuck:.0f} s (limit {unhealthy_after:g} s)"
            )
    return reasons


def making_progress(snapshot: Snapshot, now: float, unhealthy_after: float) -> bool:
    """Whether the systemd watchdog should be fed: the daemon is not :func:`wedged`."""
    return not wedged(snapshot, now, unhealthy_after)
