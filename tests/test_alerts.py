"""gateway.alerts: freshness and threshold rules under Trio's MockClock, the event
formats, alert records the buffers protect, the state that survives a restart."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from prometheus_client import generate_latest
from rich.console import Console

from gateway import alerts
from gateway.alerts import (
    ACTIVE_KEY,
    GROUP_KEY,
    INFLUX_MARKER,
    MAX_GROUPS,
    MQTT_MARKER,
    Active,
    AlertEvent,
    Alerts,
    rfc3339,
)
from gateway.buffer import BufferStore, Record
from gateway.cli.status import _status_tables
from gateway.clock import ClockTracker
from gateway.config import parse_config
from gateway.config.sections import AlertRule, AlertsSection
from gateway.metrics import Metrics
from gateway.pipeline import STATS_MEASUREMENTS, Pipeline
from gateway.records import packet_points, packet_records, split_point, split_record
from gateway.status.app import alerts_document, page_html
from gateway.telemetry import Packet
from tests.support import HttpRoute, StubHttp, json_response

HOT = AlertRule("greenhouse-hot", "node1/temperature", above=35.0, for_s=60.0, clear=33.0)
COLD = AlertRule("frost", "node2/temperature", below=5.0, clear=7.0)
WALL_BASE_NS = 1_795_773_900_000_000_000  # what trio time 0 is on the fake wall clock


def on_disk(store: BufferStore, name: str) -> list[Record]:
    """Every record waiting in buffer ``name``, read from the file (all of them are written)."""
    buf = store.buffers[name]
    return store.read_sync(buf, buf.head, buf.tail)


def wall(t: float) -> int:
    """The fake wall time (ns) of Trio time ``t``: since/at come out exact."""
    return WALL_BASE_NS + round(t * 1e9)


class Harness:
    """An engine whose timers run in the test's nursery; every event with its Trio time."""

    def __init__(self, engine: Alerts) -> None:
        self.engine = engine
        self.events: list[tuple[float, AlertEvent]] = []
        self.state: dict[str, str] = {}  # what the store would hold

    def _keep(self, events: list[AlertEvent]) -> None:
        now = trio.current_time()
        self.events += [(now, e) for e in events]
        for key, value in self.engine.take_state().items():
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value

    async def on_due(self) -> None:
        self._keep(self.engine.tick(wall(trio.current_time())))

    def feed(self, **groups: dict[str, float]) -> None:
        packet = Packet(wall(trio.current_time()), {}, groups)
        self._keep(self.engine.observe(packet))

    def seen(self) -> list[tuple[float, str, str, float]]:
        """(time, name, state, value) of every event so far."""
        return [(t, e.name, e.state, e.value) for t, e in self.events]


async def feed_every(h: Harness, step: float, until: float, **groups: dict[str, float]) -> None:
    """Feed the same packet every ``step`` seconds while the time is before ``until``."""
    while trio.current_time() < until:
        h.feed(**groups)
        await trio.sleep(step)


def engine(
    *rules: AlertRule, stale_after: float = 0.0, stale_groups: tuple[str, ...] = ()
) -> Alerts:
    return Alerts(AlertsSection(stale_after, stale_groups, rules), Metrics())


# -- threshold rules, exact times ----------------------------------------------------------


async def test_a_rule_fires_when_its_condition_held_for_for(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(HOT))
    await nursery.start(h.engine.run, h.on_due)
    # Hot from t=0, a packet every 7 s: the timer fires at exactly 60 s,
    # between two packets, with the last value seen.
    await feed_every(h, 7.0, 100.0, node1={"temperature": 36.2})
    assert h.seen() == [(60.0, "greenhouse-hot", "firing", 36.2)]
    event = h.events[0][1]
    assert (event.metric, event.since_ns, event.at_ns) == ("node1/temperature", wall(0), wall(60))
    assert [a.name for a in h.engine.active()] == ["greenhouse-hot"]
    assert h.engine.metrics is not None
    assert h.engine.metrics.alerts_firing == {"greenhouse-hot": True}


async def test_a_break_in_the_condition_starts_for_again(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(HOT))
    await nursery.start(h.engine.run, h.on_due)
    h.feed(node1={"temperature": 36.0})
    await trio.sleep(50)
    h.feed(node1={"temperature": 35.0})  # not above 35: the condition breaks
    await trio.sleep(5)
    await feed_every(h, 10.0, 200.0, node1={"temperature": 36.0})  # hot again from t=55
    assert h.seen() == [(115.0, "greenhouse-hot", "firing", 36.0)]
    assert h.events[0][1].since_ns == wall(55)


async def test_hysteresis_resolves_only_past_clear(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(HOT))
    await nursery.start(h.engine.run, h.on_due)
    await feed_every(h, 10.0, 70.0, node1={"temperature": 36.0})  # fires at 60
    # Between clear and the threshold: still firing.
    await feed_every(h, 10.0, 200.0, node1={"temperature": 34.0})
    h.feed(node1={"temperature": 33.0})  # at clear: resolved, at once
    await trio.sleep(10)
    h.feed(node1={"temperature": 34.5})
    assert h.seen() == [
        (60.0, "greenhouse-hot", "firing", 36.0),
        (200.0, "greenhouse-hot", "resolved", 33.0),
    ]
    resolved = h.events[1][1]
    # The episode: since when the condition began, at when it ended.
    assert (resolved.since_ns, resolved.at_ns) == (wall(0), wall(200))
    assert h.engine.active() == []
    assert h.state == {}


async def test_flapping_values_neither_fire_nor_flap_the_alert(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(HOT))
    await nursery.start(h.engine.run, h.on_due)
    # Around the threshold, faster than `for`: never fires.
    for _ in range(60):
        h.feed(node1={"temperature": 36.0})
        await trio.sleep(5)
        h.feed(node1={"temperature": 34.0})
        await trio.sleep(5)
    assert h.seen() == []
    # Firing, then flapping between clear and beyond the threshold: one alert, no flaps.
    start = trio.current_time()
    await feed_every(h, 10.0, start + 61.0, node1={"temperature": 36.0})
    for _ in range(30):
        h.feed(node1={"temperature": 34.0})
        await trio.sleep(5)
        h.feed(node1={"temperature": 37.0})
        await trio.sleep(5)
    assert h.seen() == [(start + 60.0, "greenhouse-hot", "firing", 36.0)]


async def test_below_with_for_zero_fires_on_the_first_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(engine(COLD))
    h.feed(node2={"temperature": 4.5})  # fires with this packet, no timer
    h.feed(node2={"temperature": 6.9})  # below clear: still firing
    await trio.sleep(1)
    h.feed(node2={"temperature": 7.0}, node1={"temperature": 2.0})
    assert h.seen() == [(0.0, "frost", "firing", 4.5), (1.0, "frost", "resolved", 7.0)]


async def test_other_groups_and_metrics_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    h = Harness(engine(AlertRule("hot", "node1/temperature", above=35.0)))
    h.feed(node2={"temperature": 50.0}, node1={"humidity": 99.0})
    assert h.seen() == []


# -- freshness ---------------------------------------------------------------------------------


async def test_a_silent_group_goes_stale_while_heartbeats_arrive(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(stale_after=300.0))
    await nursery.start(h.engine.run, h.on_due)
    h.feed(node1={"temperature": 24.0}, node2={"pressure": 1013.0}, stats={"crc_errors": 0})
    await trio.sleep(30)
    # Node 1 falls silent; Node 2's heartbeats (node2 and stats only) go on.
    await feed_every(h, 30.0, 400.0, node2={"pressure": 1013.0}, stats={"crc_errors": 0})
    h.feed(node1={"temperature": 24.5}, node2={"pressure": 1013.0}, stats={"crc_errors": 0})
    assert h.seen() == [
        (300.0, "stale-node1", "firing", 300.0),
        (420.0, "stale-node1", "resolved", 420.0),
    ]
    firing, resolved = (e for _, e in h.events)
    assert (firing.metric, firing.since_ns, firing.at_ns) == ("node1", wall(0), wall(300))
    assert (resolved.since_ns, resolved.at_ns) == (wall(0), wall(420))
    assert h.engine.metrics is not None
    assert h.engine.metrics.alerts_firing == {
        "stale-node1": False,
        "stale-node2": False,
        "stale-stats": False,
    }


async def test_stale_groups_limits_freshness_to_the_listed_groups(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(stale_after=10.0, stale_groups=("node1",)))
    await nursery.start(h.engine.run, h.on_due)
    h.feed(node1={"temperature": 24.0}, node2={"pressure": 1013.0})
    await trio.sleep(5)
    await feed_every(h, 1.0, 30.0, node1={"temperature": 24.0})
    assert h.seen() == []  # node2 is silent, but not watched
    await trio.sleep(20)
    assert h.seen() == [(39.0, "stale-node1", "firing", 10.0)]


async def test_stale_after_zero_turns_freshness_off(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    h = Harness(engine(stale_after=0.0))
    await nursery.start(h.engine.run, h.on_due)
    h.feed(node1={"temperature": 24.0})
    await trio.sleep(80_000)
    assert h.seen() == []
    assert h.engine.groups == {}


async def test_groups_from_the_data_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    h = Harness(engine(stale_after=10.0))
    for i in range(MAX_GROUPS + 50):
        h.feed(**{f"g{i}": {"x": 1.0}})
    assert len(h.engine.groups) == MAX_GROUPS
    assert h.engine.metrics is not None
    assert len(h.engine.metrics.alerts_firing) == MAX_GROUPS
    assert len(h.state) == MAX_GROUPS


# -- restarts ----------------------------------------------------------------------------------


async def test_a_restart_neither_repeats_a_firing_nor_loses_a_resolved(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        first = Harness(engine(HOT, stale_after=300.0))
        await nursery.start(first.engine.run, first.on_due)
        first.feed(node1={"temperature": 36.0}, node2={"pressure": 1000.0})
        await feed_every(first, 30.0, 400.0, node2={"pressure": 1000.0})
        assert [(n, s) for _, n, s, _ in first.seen()] == [
            ("greenhouse-hot", "firing"),
            ("stale-node1", "firing"),
        ]
        nursery.cancel_scope.cancel()
    kept = dict(first.state)
    assert set(kept) == {
        ACTIVE_KEY + "greenhouse-hot",
        ACTIVE_KEY + "stale-node1",
        GROUP_KEY + "node1",
        GROUP_KEY + "node2",
    }

    # The daemon restarts with the same configuration and store.
    async with trio.open_nursery() as nursery:
        second = Harness(engine(HOT, stale_after=300.0))
        start = trio.current_time()
        second.engine.restore(kept, wall(start))
        await nursery.start(second.engine.run, second.on_due)
        assert [a.name for a in second.engine.active()] == ["greenhouse-hot", "stale-node1"]
        # Still hot: no second "firing"; node1 back: its staleness resolves.
        await feed_every(second, 30.0, start + 100.0, node1={"temperature": 36.0})
        second.feed(node1={"temperature": 32.0})
        nursery.cancel_scope.cancel()
    assert second.seen() == [
        (start, "stale-node1", "resolved", round((wall(start) - wall(0)) / 1e9, 3)),
        (start + 120.0, "greenhouse-hot", "resolved", 32.0),
    ]
    assert second.events[1][1].since_ns == wall(0)  # the episode began before the restart
    assert second.state == {}


async def test_restored_alerts_resolve_on_the_next_value(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    since, at = wall(-500), wall(-440)
    kept = {
        ACTIVE_KEY + "greenhouse-hot": Active(
            "greenhouse-hot", "node1/temperature", 36.0, since, at
        ).to_state(),
        ACTIVE_KEY + "stale-node1": Active(
            "stale-node1", "node1", 300.0, wall(-400), wall(-100)
        ).to_state(),
        GROUP_KEY + "node1": "1",
    }
    h = Harness(engine(HOT, stale_after=300.0))
    h.state = dict(kept)
    h.engine.restore(kept, wall(0))
    await nursery.start(h.engine.run, h.on_due)
    assert h.engine.metrics is not None
    assert h.engine.metrics.alerts_firing["greenhouse-hot"] is True
    await trio.sleep(10)
    h.feed(node1={"temperature": 36.0})  # still hot: no second "firing"; node1 is back
    await trio.sleep(10)
    h.feed(node1={"temperature": 32.0})  # past clear: resolved, not lost
    assert h.seen() == [
        (10.0, "stale-node1", "resolved", 410.0),
        (20.0, "greenhouse-hot", "resolved", 32.0),
    ]
    assert h.events[1][1].since_ns == since  # the episode that began before the restart
    assert h.state == {GROUP_KEY + "node1": "1"}  # nothing active any more


async def test_a_restart_resolves_alerts_no_longer_configured(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    kept = {
        ACTIVE_KEY + "old-rule": Active(
            "old-rule", "node1/humidity", 95.0, wall(-9), wall(-5)
        ).to_state(),
        ACTIVE_KEY + "stale-node3": Active(
            "stale-node3", "node3", 300.0, wall(-9), wall(-5)
        ).to_state(),
        ACTIVE_KEY + "broken": "not json",
        GROUP_KEY + "node3": "1",
    }
    h = Harness(engine(stale_after=0.0))
    h.state = dict(kept)
    h.engine.restore(kept, wall(0))
    await nursery.start(h.engine.run, h.on_due)
    await trio.sleep(1)
    assert sorted((t, n, s) for t, n, s, _ in h.seen()) == [
        (0.0, "old-rule", "resolved"),
        (0.0, "stale-node3", "resolved"),
    ]
    assert h.state == {}  # the unreadable row and the unwatched group are forgotten too
    assert h.engine.metrics is not None
    assert h.engine.metrics.alerts_firing == {}


async def test_groups_seen_before_a_restart_go_stale_from_start_up(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    await trio.sleep(1000)
    h = Harness(engine(stale_after=300.0))
    h.engine.restore({GROUP_KEY + "node1": "1"}, wall(trio.current_time()))
    await nursery.start(h.engine.run, h.on_due)
    await trio.sleep(400)
    assert h.seen() == [(1300.0, "stale-node1", "firing", 300.0)]
    assert h.events[0][1].since_ns == wall(1000)  # counted from start-up


# -- what the sinks receive ------------------------------------------------------------------


def test_event_formats() -> None:
    event = AlertEvent(
        "greenhouse-hot",
        "firing",
        "node1/temperature",
        36.2,
        1_795_773_902_125_000_000,
        1_795_773_962_125_999_999,
    )
    assert event.payload() == (
        '{"state":"firing","metric":"node1/temperature","value":36.2,'
        '"since":"2026-11-27T10:05:02.125Z","at":"2026-11-27T10:06:02.125Z"}'
    )
    stamp, topic, payload = split_record(event.mqtt_record("iiot", "1795773962125999999"))
    assert (stamp.wall_ns, topic) == (1_795_773_962_125_999_999, "iiot/alerts/greenhouse-hot")
    assert json.loads(payload)["value"] == 36.2
    point = event.point(alerts.alert_tags({"site": "north", "name": "clash"}), "1795773962125")
    assert split_point(point)[1] == "alerts,name=greenhouse-hot,state=firing,site=north value=36.2"
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"


def test_only_alert_records_carry_the_markers() -> None:
    event = AlertEvent("stale-node1", "resolved", "node1", 12.5, 0, 0)
    assert MQTT_MARKER in event.mqtt_record("iiot", "1")
    assert INFLUX_MARKER in event.point("", "1")
    packet = Packet(1, {}, {"alerts": {"temperature": 1.0}, "node1": {"state": -3}})
    for record in packet_records(packet, "iiot", "1") + packet_points(packet, ",site=a", "1"):
        assert MQTT_MARKER not in record
        assert INFLUX_MARKER not in record


# -- the pipeline evaluates accepted packets only -----------------------------------------


async def test_values_the_plausibility_filter_drops_never_trigger_a_rule(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "gateway": {"buffer_dir": str(tmp_path), "clock_sync": "none"},
            "mqtt": {"topic_prefix": "gw"},
            "influxdb": {"tags": {"site": "north"}},
            "alerts": {
                "stale_after": 0,
                "rule": [{"name": "hot", "metric": "node1/temperature", "above": 35}],
            },
        },
        environ={},
    )
    store = await BufferStore.open(
        tmp_path,
        {"mqtt": 100, "influx": 100},
        ack_delay=0,
        protect={"mqtt": MQTT_MARKER, "influx": INFLUX_MARKER},
    )
    engine = Alerts(cfg.alerts)
    pipeline = Pipeline(cfg, store, Metrics(), ClockTracker("none", ""), alerts=engine)
    # 200 °C is outside the plausibility range: dropped, so no alert.
    await pipeline.ingest([b'{"v":1,"node1":{"temperature":200.0,"humidity":50}}'])
    assert [r.value.split(" ", 1)[1] for r in on_disk(store, "mqtt")] == ["gw/node1/humidity 50"]
    assert engine.active() == []
    await pipeline.ingest([b'{"v":1,"node1":{"temperature":36.5}}'])
    mqtt = [r.value.split(" ", 1)[1] for r in on_disk(store, "mqtt")]
    assert mqtt[1] == "gw/node1/temperature 36.5"
    topic, payload = mqtt[2].split(" ", 1)
    assert topic == "gw/alerts/hot"
    assert json.loads(payload)["state"] == "firing"
    influx = [split_point(r.value)[1] for r in on_disk(store, "influx")]
    assert influx[-1] == "alerts,name=hot,state=firing,site=north value=36.5"
    # The state went to disk in that same commit.
    store.close()
    store = await BufferStore.open(tmp_path, {"mqtt": 100, "influx": 100})
    assert set(store.alert_state()) == {"active:hot"}
    store.close()


# -- the gateway's self-stats ------------------------------------------------------------


async def test_self_stats_carry_each_sinks_age_coverage_dead_letters_clock_and_alerts(
    tmp_path: Path,
) -> None:
    """What the fleet dashboard draws: one point per figure, tagged with the gateway's id."""
    cfg = parse_config(
        {
            "gateway": {
                "id": "site-07",
                "buffer_dir": str(tmp_path),
                "clock_sync": "none",
                "stats_interval": 0.1,
            },
            "influxdb": {"tags": {"site": "north"}},
            "alerts": {
                "stale_after": 0,
                "rule": [{"name": "hot", "metric": "node1/temperature", "above": 35}],
            },
        },
        environ={},
    )
    store = await BufferStore.open(tmp_path, {"mqtt": 100, "influx": 100}, ack_delay=0)
    metrics = Metrics()
    clock = ClockTracker("none", "")
    pipeline = Pipeline(cfg, store, metrics, clock, alerts=Alerts(cfg.alerts))
    await pipeline.ingest([b'{"v":1,"node1":{"temperature":36.5}}'])  # fires "hot"
    metrics.mqtt.oldest_age = 12.5
    metrics.mqtt.coverage_hours = 30.0
    metrics.influx.coverage_hours = None  # no rate yet: the field is left out
    metrics.influx.dead_letters_waiting = 2
    clock.synchronised.value = True
    before = len(on_disk(store, "influx"))
    with trio.move_on_after(0.35):  # stats_interval 0.1: a few rounds
        await pipeline.report_stats()
    points = [split_point(r.value)[1] for r in on_disk(store, "influx")[before:]]
    values = {}
    for point in points:
        series, value = point.split(" ")
        name, tags = series.split(",", 1)
        # The contract: node=gateway, then gateway=<gateway.id> and the static tags.
        assert tags == "node=gateway,gateway=site-07,site=north", point
        values.setdefault(name, float(value.removeprefix("value=")))  # the first round
    assert values == {
        "mqtt_backlog": 2.0,  # the reading and the alert's event
        "influx_backlog": float(before),
        "mqtt_dropped": 0.0,
        "influx_dropped": 0.0,
        "packets": 1.0,
        "mqtt_oldest_age": 12.5,
        "influx_oldest_age": 0.0,
        "mqtt_coverage_hours": 30.0,
        "mqtt_dead_letters_waiting": 0.0,
        "influx_dead_letters_waiting": 2.0,
        "clock_synchronized": 1.0,
        "alerts_active": 1.0,
    }
    assert {*values, "influx_coverage_hours"} == set(STATS_MEASUREMENTS)
    store.close()


# -- what people see ---------------------------------------------------------------------


async def test_metrics_say_which_alerts_fire(autojump_clock: trio.testing.MockClock) -> None:
    metrics = Metrics()
    engine = Alerts(AlertsSection(0.0, (), (HOT, COLD)), metrics)
    engine.observe(Packet(wall(0), {}, {"node2": {"temperature": 3.5}}))
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_alerts_firing{name="frost"} 1.0' in text
    assert 'gateway_alerts_firing{name="greenhouse-hot"} 0.0' in text


async def test_status_document_and_cli_show_active_alerts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Alerts(AlertsSection(0.0, (), (COLD,)))
    engine.observe(Packet(wall(0), {}, {"node2": {"temperature": 3.5}}))
    doc = alerts_document(engine, wall(90))
    assert doc == [
        {
            "name": "frost",
            "metric": "node2/temperature",
            "value": 3.5,
            "since": rfc3339(wall(0)),
            "at": rfc3339(wall(0)),
            "firing_for_s": 90.0,
        }
    ]
    status: dict[str, Any] = {
        "gateway": {"id": "gw"},
        "healthy": True,
        "reasons": [],
        "source": {
            "kind": "command",
            "state": "running",
            "packets": 1,
            "last_packet_age_s": 1,
            "restarts": {},
        },
        "sinks": {},
        "values": {},
        "alerts": doc,
    }
    console = Console(record=True, width=120)
    for part in _status_tables(status):
        console.print(part)
    out = console.export_text()
    assert "frost" in out
    assert out.index("frost") < out.index("group")  # right after the first lines, before values


@pytest.fixture
def fake_status_server() -> Iterator[int]:
    """The status page and an /api/status document with one alert, on a free port."""
    doc = {
        "gateway": {"id": "gw-page"},
        "healthy": True,
        "reasons": [],
        "source": {
            "kind": "command",
            "state": "running",
            "pid": 1,
            "restarts": {},
            "packets": 3,
            "last_packet_age_s": 0.5,
        },
        "sinks": {
            name: {
                "target": "x",
                "connected": True,
                "healthy": True,
                "backlog": 0,
                "max_records": 10,
                "oldest_age_s": None,
                "last_delivery_age_s": 1.0,
                "delivered": 1,
                "dropped": 0,
                "dead_letters": 0,
                "last_error": "",
            }
            for name in ("mqtt", "influx")
        },
        "values": {},
        "alerts": [
            {
                "name": "stale-node1",
                "metric": "node1",
                "value": 300.0,
                "since": "2026-11-27T08:00:00.000Z",
                "at": "2026-11-27T08:05:00.000Z",
                "firing_for_s": 42.0,
            }
        ],
    }
    page = page_html().encode()
    routes: dict[str, HttpRoute] = {
        "/api/status": lambda request: json_response(200, doc),
        "*": lambda request: (200, {"Content-Type": "text/html"}, page),
    }
    with StubHttp(routes) as server:
        yield server.port


def test_the_status_page_shows_active_alerts_first(tmp_path: Path, fake_status_server: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: run ops/install-deps.sh")
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"http://127.0.0.1:{fake_status_server}/",
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    html = out.stdout.decode()
    assert 'data-alert="stale-node1"' in html
    assert "ALERT stale-node1" in html
    assert html.index('data-alert="stale-node1"') < html.index('id="cards"')
