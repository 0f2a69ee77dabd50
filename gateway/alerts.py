"""Edge alerts: groups that fall silent, and metrics past a threshold.

Two kinds of alert, both evaluated on the packets the pipeline *accepted*
(after the plausibility filter: a value it dropped never triggers anything):

- **Freshness** (``[alerts] stale_after``): a group that had values and then
  sends none for ``stale_after`` seconds raises ``stale-<group>``; its next
  value resolves it. Node 2's heartbeat line keeps the source alive (the stall
  watchdog sees a line) but carries only ``node2`` and ``stats``, so a silent
  Node 1 shows here, as ``stale-node1`` (and ``stale-signal``), not as a
  restarted probe-rs.
- **Thresholds** (``[[alerts.rule]]``): a metric above ``above`` (or below
  ``below``) for ``for`` seconds without a break fires; it resolves once the
  value is back at or past ``clear`` (hysteresis: flapping around the
  threshold does not flap the alert).

Every firing and every resolution is an :class:`AlertEvent`. The pipeline
encodes it for both sinks (:meth:`AlertEvent.mqtt_record`,
:meth:`AlertEvent.point`) and commits it to the same disk buffers as the
readings, so an alert raised while the uplink is down is delivered, in order,
when it returns. Alert records carry a marker (:data:`MQTT_MARKER`,
:data:`INFLUX_MARKER`) that the buffers protect: a full buffer drops readings,
not alerts (:mod:`gateway.buffer.queue`).

What is active survives a restart: the engine's changes (:meth:`Alerts.take_state`)
are written under the store's ``alert_state`` key in the same transaction as the
events, and :meth:`Alerts.restore` reads them back, so a restart neither
repeats a "firing" nor loses a "resolved". A rule that is still pending (its
``for`` not yet over) starts again after a restart.

Every timer (``stale_after``, ``for``) runs on Trio's clock, which is
monotonic (and a ``MockClock`` in tests); wall time is only what the events
report.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import trio

from gateway.config.sections import STALE_PREFIX, AlertRule, AlertsSection
from gateway.metrics import Metrics
from gateway.records import alerts_topic, rfc3339_ms, tag_suffix
from gateway.telemetry import Packet

log = logging.getLogger(__name__)

FIRING, RESOLVED = "firing", "resolved"
MEASUREMENT = "alerts"
# Text only alert records contain: a reading's payload is a number, and a
# reading's point starts its tags with node=.
MQTT_MARKER = ' {"state":'
INFLUX_MARKER = f" {MEASUREMENT},name="
# Groups come from the data: a firmware printing a new group per line must not
# grow memory, the store or /metrics without bound.
MAX_GROUPS = 64
# Keys within the store's alert_state document.
ACTIVE_KEY = "active:"  # active:<alert name> → Active.to_state()
GROUP_KEY = "group:"  # group:<group> → "1": the group had values (it can go stale)
# Every alert point has these tags of its own; a static tag of that name is left out.
_OWN_TAGS = frozenset({"name", "state"})


# One way to write a time for people and consumers (RFC 3339 UTC, milliseconds).
rfc3339 = rfc3339_ms


def alert_tags(tags: Mapping[str, str]) -> str:
    """The static tags of alert points: ``[influxdb.tags]`` without ``name`` and ``state``."""
    return tag_suffix({k: v for k, v in tags.items() if k not in _OWN_TAGS})


@dataclass(frozen=True, slots=True)
class Active:
    """An alert that is firing.

    Attributes:
        name: the rule's name, or ``stale-<group>``.
        metric: ``group/metric`` for a rule, the group for a freshness alert.
        value: the value that fired it (seconds since last seen, for staleness).
        since_ns: wall time when its condition began (the first value past the
            threshold; the last value of the silent group).
        at_ns: wall time when it fired.
    """

    name: str
    metric: str
    value: float
    since_ns: int
    at_ns: int

    def to_state(self) -> str:
        """The ``alert_state`` row's text."""
        doc = {"metric": self.metric, "value": self.value, "since": self.since_ns, "at": self.at_ns}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_state(cls, name: str, text: str) -> Active | None:
        """Inverse of :meth:`to_state`; None (logged) for a row that does not parse."""
        try:
            doc = json.loads(text)
            value = float(doc["value"])
            if not math.isfinite(value):
                raise ValueError(value)
            return cls(name, str(doc["metric"]), value, int(doc["since"]), int(doc["at"]))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("alerts: stored state of %s is unreadable (%r); forgetting it", name, exc)
            return None


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One firing or one resolution, as every sink receives it."""

    name: str
    state: str  # FIRING or RESOLVED
    metric: str
    value: float
    since_ns: int
    at_ns: int

    def payload(self) -> str:
        """The retained MQTT message: compact JSON, times in RFC 3339 UTC."""
        doc = {
            "state": self.state,
            "metric": self.metric,
            "value": self.value,
            "since": rfc3339(self.since_ns),
            "at": rfc3339(self.at_ns),
        }
        return json.dumps(doc, separators=(",", ":"), allow_nan=False)

    def mqtt_record(self, prefix: str, stamp: str) -> str:
        """The MQTT buffer's record: ``<stamp> {prefix}/alerts/{name} <payload>``."""
        return f"{stamp} {alerts_topic(prefix, self.name)} {self.payload()}"

    def point(self, static_tags: str, stamp: str) -> str:
        """The InfluxDB buffer's record: ``<stamp> alerts,name=…,state=…<tags> value=…``.

        Names are ``[A-Za-z0-9_-]`` (config and telemetry check them): no escaping.
        """
        tags = f"name={self.name},state={self.state}{static_tags}"
        return f"{stamp} {MEASUREMENT},{tags} value={float(self.value)!r}"


@dataclass(slots=True)
class _Rule:
    """A threshold rule and where it stands."""

    rule: AlertRule
    pending_since: float | None = None  # Trio time its condition began to hold
    pending_ns: int = 0  # the wall time of that value
    value: float = 0.0  # the last value seen
    active: Active | None = None

    def past(self, value: float) -> bool:
        """Is ``value`` past the threshold (the condition that fires it)?"""
        r = self.rule
        return value > r.above if r.above is not None else value < r.threshold

    def cleared(self, value: float) -> bool:
        """Is ``value`` back at or past ``clear`` (the condition that resolves it)?"""
        r = self.rule
        return value <= r.clear_at if r.above is not None else value >= r.clear_at


@dataclass(slots=True)
class _Group:
    """A group's freshness."""

    last_seen: float | None  # Trio time of its last value; None: not seen since a restart
    last_ns: int  # wall time of that value (of the start-up, for a restored group)
    active: Active | None = None


class Alerts:
    """The alert engine: feed it accepted packets, let it run its timers.

    Args:
        cfg: the ``[alerts]`` section.
        metrics: where ``gateway_alerts_firing{name}`` is kept (optional).

    The pipeline calls :meth:`observe` with every accepted packet and commits
    the events it returns; :meth:`run` calls back when a timer is due, and the
    callback commits :meth:`tick`'s events. Both commit :meth:`take_state`
    with them. Nothing here blocks or does I/O.
    """

    def __init__(self, cfg: AlertsSection, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.rules = {rule.name: _Rule(rule) for rule in cfg.rules}
        self._by_group: dict[str, list[_Rule]] = {}
        for state in self.rules.values():
            self._by_group.setdefault(state.rule.group, []).append(state)
        self.groups: dict[str, _Group] = {}
        # Restored alerts the configuration no longer has: resolved at the first tick.
        self._orphans: list[Active] = []
        self._state: dict[str, str | None] = {}
        self._changed = trio.Event()
        self._groups_full_logged = False
        for name in self.rules:
            self._gauge(name, False)

    # -- inputs ---------------------------------------------------------------------

    def restore(self, state: Mapping[str, str], wall_ns: int) -> None:
        """Take back what the store kept (``alert_state`` rows) at start-up.

        Alerts still configured stay active without a new "firing"; the others
        are resolved at the first :meth:`tick`. Groups that had values before
        go stale after ``stale_after`` seconds from now if they send nothing.
        """
        now = trio.current_time()
        for key, text in sorted(state.items()):
            if key.startswith(GROUP_KEY):
                group = key.removeprefix(GROUP_KEY)
                if self._watches(group) and self._room_for(group):
                    self.groups.setdefault(group, _Group(now, wall_ns))
                    self._gauge(STALE_PREFIX + group, False)
                else:
                    self._state[key] = None  # no longer watched: forget it
                continue
            if not key.startswith(ACTIVE_KEY):
                continue
            name = key.removeprefix(ACTIVE_KEY)
            active = Active.from_state(name, text)
            if active is None:
                self._state[key] = None
                continue
            group = name.removeprefix(STALE_PREFIX)
            if name in self.rules:
                self.rules[name].active = active
            elif name.startswith(STALE_PREFIX) and self._watches(group) and self._room_for(group):
                g = self.groups.setdefault(group, _Group(None, wall_ns))
                g.active, g.last_seen = active, None
            else:
                self._orphans.append(active)
                continue
            self._gauge(name, True)
            log.warning("alert %s still firing (since %s)", name, rfc3339(active.since_ns))
        self._changed.set()

    def observe(self, packet: Packet) -> list[AlertEvent]:
        """Evaluate an accepted packet; return the events it caused (to commit with it)."""
        now, at = trio.current_time(), packet.received_ns
        events: list[AlertEvent] = []
        for group, values in packet.groups.items():
            if self._watches(group):
                self._seen(group, now, at, events)
            for state in self._by_group.get(group, ()):
                value = values.get(state.rule.field)
                if value is not None:
                    self._evaluate(state, float(value), now, at, events)
        return events

    def tick(self, wall_ns: int) -> list[AlertEvent]:
        """Fire what is due now (``for`` held, a group silent); ``wall_ns`` is now's wall time."""
        now = trio.current_time()
        events: list[AlertEvent] = []
        for active in self._orphans:
            log.info("alert %s resolved: no longer configured", active.name)
            events.append(self._resolved(active, active.value, wall_ns, quiet=True))
            if self.metrics is not None:
                self.metrics.alerts_firing.pop(active.name, None)
        self._orphans.clear()
        for state in self.rules.values():
            due = self._rule_due(state)
            if due is not None and now >= due:
                events.append(self._fire(state, state.value, wall_ns))
        for group, g in self.groups.items():
            due = self._group_due(g)
            if due is not None and now >= due:
                assert g.last_seen is not None
                silent = round(now - g.last_seen, 3)
                g.active = Active(STALE_PREFIX + group, group, silent, g.last_ns, wall_ns)
                events.append(self._fired(g.active))
                log.warning(
                    "alert %s firing: no value from %s for %g s", g.active.name, group, silent
                )
        return events

    def take_state(self) -> dict[str, str | None]:
        """The ``alert_state`` changes since the last call (None: delete the row)."""
        changes, self._state = self._state, {}
        return changes

    # -- timers ---------------------------------------------------------------------

    def next_due(self) -> float:
        """The Trio time of the next :meth:`tick` with something to do (inf: none)."""
        if self._orphans:
            return -math.inf
        dues = [self._rule_due(s) for s in self.rules.values()]
        dues += [self._group_due(g) for g in self.groups.values()]
        return min((d for d in dues if d is not None), default=math.inf)

    async def run(
        self,
        on_due: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_due`` (which must call :meth:`tick`) when a timer is due, until cancelled."""
        task_status.started()
        while True:
            due = self.next_due()
            if trio.current_time() >= due:
                await on_due()
                continue
            # observe() sets it when a new timer may end before `due`.
            self._changed = trio.Event()
            with trio.move_on_at(due):
                await self._changed.wait()

    # -- views ----------------------------------------------------------------------

    def active(self) -> list[Active]:
        """Every alert firing now, oldest first."""
        found = [s.active for s in self.rules.values() if s.active is not None]
        found += [g.active for g in self.groups.values() if g.active is not None]
        return sorted(found, key=lambda a: (a.at_ns, a.name))

    # -- the state machine ----------------------------------------------------------

    def _watches(self, group: str) -> bool:
        """Is ``group``'s freshness watched (``stale_after`` on, ``stale_groups`` lists it)?"""
        return self.cfg.stale_after > 0 and (
            not self.cfg.stale_groups or group in self.cfg.stale_groups
        )

    def _room_for(self, group: str) -> bool:
        if group in self.groups or len(self.groups) < MAX_GROUPS:
            return True
        if not self._groups_full_logged:
            self._groups_full_logged = True
            log.warning(
                "alerts: more than %d groups; %s and later ones are not watched for freshness "
                "(list the ones that matter in alerts.stale_groups)",
                MAX_GROUPS,
                group,
            )
        return False

    def _rule_due(self, state: _Rule) -> float | None:
        if state.active is not None or state.pending_since is None:
            return None
        return state.pending_since + state.rule.for_s

    def _group_due(self, g: _Group) -> float | None:
        if g.active is not None or g.last_seen is None or self.cfg.stale_after <= 0:
            return None
        return g.last_seen + self.cfg.stale_after

    def _seen(self, group: str, now: float, at: int, events: list[AlertEvent]) -> None:
        g = self.groups.get(group)
        if g is None:
            if not self._room_for(group):
                return
            self.groups[group] = _Group(now, at)
            self._state[GROUP_KEY + group] = "1"
            self._gauge(STALE_PREFIX + group, False)
            self._changed.set()
            return
        if g.active is not None:
            since = g.last_seen
            gap = now - since if since is not None else (at - g.active.since_ns) / 1e9
            log.info("alert %s resolved: %s back after %g s", g.active.name, group, round(gap, 3))
            events.append(self._resolved(g.active, round(gap, 3), at, quiet=True))
            g.active = None
            self._changed.set()
        g.last_seen, g.last_ns = now, at

    def _evaluate(
        self, state: _Rule, value: float, now: float, at: int, events: list[AlertEvent]
    ) -> None:
        state.value = value
        if state.active is not None:
            if state.cleared(value):
                events.append(self._resolved(state.active, value, at))
                state.active = None
            return
        if not state.past(value):
            state.pending_since = None  # a break in the condition restarts `for`
            return
        if state.pending_since is None:
            state.pending_since, state.pending_ns = now, at
            self._changed.set()
        if now - state.pending_since >= state.rule.for_s:
            events.append(self._fire(state, value, at))

    def _fire(self, state: _Rule, value: float, at: int) -> AlertEvent:
        rule = state.rule
        state.active = Active(rule.name, rule.metric, value, state.pending_ns, at)
        state.pending_since = None
        side = "above" if rule.above is not None else "below"
        log.warning(
            "alert %s firing: %s = %s (%s %g for %g s)",
            rule.name,
            rule.metric,
            value,
            side,
            rule.threshold,
            rule.for_s,
        )
        return self._fired(state.active)

    def _fired(self, active: Active) -> AlertEvent:
        self._state[ACTIVE_KEY + active.name] = active.to_state()
        self._gauge(active.name, True)
        return AlertEvent(
            active.name, FIRING, active.metric, active.value, active.since_ns, active.at_ns
        )

    def _resolved(
        self, active: Active, value: float, at: int, *, quiet: bool = False
    ) -> AlertEvent:
        if not quiet:
            log.info("alert %s resolved: %s = %s", active.name, active.metric, value)
        self._state[ACTIVE_KEY + active.name] = None
        self._gauge(active.name, False)
        return AlertEvent(active.name, RESOLVED, active.metric, value, active.since_ns, at)

    def _gauge(self, name: str, firing: bool) -> None:
        if self.metrics is not None:
            self.metrics.alerts_firing[name] = firing
