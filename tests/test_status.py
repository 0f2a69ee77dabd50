"""The status endpoint: health decisions, value history, and the live HTTP server."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.status.health import SinkProgress, Snapshot, health, making_progress, wedged
from gateway.status.latest import LatestValues
from gateway.telemetry import Packet
from tests.services import Broker, Tsdb

TOKEN = "s3cret-influx-token"
MQTT_PASSWORD = "s3cret-mqtt-password"


# -- health() with made-up numbers ---------------------------------------------------


def sinks(
    mqtt: tuple[int, float | None, float | None] = (0, None, None),
    influx: tuple[int, float | None, float | None] = (0, None, None),
) -> tuple[SinkProgress, ...]:
    return (SinkProgress("mqtt", *mqtt), SinkProgress("influx", *influx))


def test_healthy_when_packets_flow_and_sinks_deliver() -> None:
    snap = Snapshot(started_at=0.0, last_packet_at=995.0, sinks=sinks((9, 999.0, 998.0)))
    assert health(snap, 1000.0, 60.0) == (True, [])


def test_start_up_grace_before_the_first_packet() -> None:
    snap = Snapshot(started_at=1000.0, last_packet_at=None, sinks=sinks())
    assert health(snap, 1059.0, 60.0) == (True, [])
    ok, reasons = health(snap, 1061.0, 60.0)
    assert not ok
    assert reasons == ["source: no packet yet for 61 s (limit 60 s)"]


def test_no_packet_past_unhealthy_after() -> None:
    snap = Snapshot(started_at=0.0, last_packet_at=900.0, sinks=sinks())
    ok, reasons = health(snap, 1000.0, 60.0)
    assert not ok
    assert len(reasons) == 1
    assert reasons[0].startswith("source: no packet for 100 s")


def test_sink_with_backlog_and_no_delivery() -> None:
    # Packets keep coming, but MQTT has had 50 records waiting since t=900 and
    # last delivered at t=880.
    snap = Snapshot(0.0, 999.0, sinks((50, 900.0, 880.0), (3, 999.5, 999.0)))
    ok, reasons = health(snap, 1000.0, 60.0)
    assert not ok
    assert reasons == ["mqtt: 50 record(s) waiting, nothing delivered for 100 s (limit 60 s)"]


def test_old_last_delivery_alone_is_not_stuck() -> None:
    # Nothing to deliver for an hour, then a backlog appears: give it time.
    snap = Snapshot(0.0, 999.0, sinks((9, 999.0, 10.0)))
    assert health(snap, 1000.0, 60.0) == (True, [])
    # A never-delivering sink is measured from start-up.
    snap = Snapshot(990.0, 999.0, sinks((9, None, None)))
    assert health(snap, 1000.0, 60.0) == (True, [])


def test_recovers_once_the_sink_delivers_again() -> None:
    stuck = Snapshot(0.0, 1000.0, sinks(influx=(500, 800.0, 790.0)))
    assert health(stuck, 1000.0, 60.0)[0] is False
    recovered = Snapshot(0.0, 1001.0, sinks(influx=(120, 800.0, 1000.5)))
    assert health(recovered, 1001.0, 60.0) == (True, [])
    drained = Snapshot(0.0, 1002.0, sinks(influx=(0, None, 1001.5)))
    assert health(drained, 1002.0, 60.0) == (True, [])


def test_both_reasons_at_once() -> None:
    snap = Snapshot(0.0, 100.0, sinks((10, 100.0, 90.0), (10, 100.0, 90.0)))
    ok, reasons = health(snap, 1000.0, 60.0)
    assert not ok
    assert [r.split(":")[0] for r in reasons] == ["source", "mqtt", "influx"]


def progress(
    backlog: int,
    waiting_since: float | None,
    last_delivery: float | None,
    *,
    connected: bool = True,
    holding: bool = False,
    name: str = "mqtt",
) -> SinkProgress:
    return SinkProgress(name, backlog, waiting_since, last_delivery, None, connected, holding)


def test_the_watchdog_starves_only_for_a_wedged_sink() -> None:
    # Connected, records waiting, nothing delivered past unhealthy_after: the
    # one stuck state a restart can fix.
    stuck = Snapshot(0.0, 999.0, (progress(50, 900.0, 880.0),))
    assert wedged(stuck, 1000.0, 60.0) == [
        "mqtt: connected with 50 record(s) waiting, nothing delivered for 100 s (limit 60 s)"
    ]
    assert not making_progress(stuck, 1000.0, 60.0)
    # Not yet past the limit; or delivering again.
    assert making_progress(stuck, 950.0, 60.0)
    assert making_progress(Snapshot(0.0, 999.0, (progress(50, 900.0, 990.0),)), 1000.0, 60.0)


def test_the_world_being_down_never_starves_the_watchdog() -> None:
    cases = {
        # A silent source (Node 2 or the probe gone), nothing waiting.
        "silent source": Snapshot(0.0, 100.0, (progress(0, None, 500.0),)),
        # Not even one packet since start-up.
        "no packet yet": Snapshot(0.0, None, (progress(0, None, None),)),
        # A broker that is down while packets fill the buffer.
        "broker down": Snapshot(0.0, 999.0, (progress(1000, 500.0, 500.0, connected=False),)),
        # A database that refuses every write.
        "database refuses": Snapshot(
            0.0, 999.0, (progress(900, 100.0, None, connected=False, name="influx"),)
        ),
        # InfluxDB holding its points until the clock is right.
        "holding": Snapshot(0.0, 999.0, (progress(900, 100.0, None, holding=True, name="influx"),)),
        # Silent source and broker down together.
        "both": Snapshot(0.0, 100.0, (progress(1000, 500.0, 500.0, connected=False),)),
    }
    for what, snap in cases.items():
        assert wedged(snap, 1000.0, 60.0) == [], what
        assert making_progress(snap, 1000.0, 60.0), what
    # /healthz still says what is wrong with each (it means "delivering what arrives").
    for what in ("silent source", "no packet yet", "broker down", "database refuses", "both"):
        assert not health(cases[what], 1000.0, 60.0)[0], what


# -- LatestValues -----------------------------------------------------------------------


def packet(t_s: float, **groups: dict[str, float]) -> Packet:
    return Packet(received_ns=int(t_s * 1e9), meta={"seq": int(t_s)}, groups=groups)


def test_latest_values_keep_the_newest_value() -> None:
    lv = LatestValues()
    lv.on_packet(packet(1.0, node1={"temperature": 20.0}, signal={"rssi": -40}))
    lv.on_packet(packet(2.0, node1={"temperature": 21.5}))
    doc = lv.to_json(now_ns=int(3e9))
    assert doc["node1"]["temperature"]["value"] == 21.5
    assert doc["node1"]["temperature"]["unit"] == "celsius"
    assert doc["node1"]["temperature"]["age_s"] == 1.0
    assert doc["signal"]["rssi"]["value"] == -40.0
    assert doc["node1"]["temperature"]["history"] == [[1000, 20.0], [2000, 21.5]]


def test_history_is_bounded_in_points_and_time() -> None:
    lv = LatestValues(window=600.0, max_points=600)
    # 5 packets a second for 20 minutes.
    for i in range(5 * 1200):
        lv.on_packet(packet(i / 5, node1={"temperature": float(i)}))
    h = lv.series[("node1", "temperature")].history
    assert len(h) <= 600
    span_s = (h[-1][0] - h[0][0]) / 1e9
    assert 590 <= span_s <= 600  # the whole window, thinned to ~1 point/s
    assert h[-1][1] == float(5 * 1200 - 1)  # the newest value is always in it
    assert all((b[0] - a[0]) >= 1e9 for a, b in zip(list(h)[:-2], list(h)[1:-1], strict=True))


def test_number_of_series_is_bounded() -> None:
    lv = LatestValues(max_series=3)
    lv.on_packet(packet(1.0, a={"x": 1, "y": 2}, b={"x": 3, "y": 4}))
    assert len(lv.series) == 3


# -- the live server -------------------------------------------------------------------------


async def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    """GET from the status server (urllib in a thread); never raises on 4xx/5xx."""

    def fetch() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.headers.get("content-type", ""), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("content-type", ""), exc.read()

    return await trio.to_thread.run_sync(fetch)


async def get_json(port: int, path: str) -> tuple[int, Any]:
    status, ctype, body = await http_get(port, path)
    assert ctype.startswith("application/json")
    return status, json.loads(body)


async def eventually(check: Callable[[], Awaitable[bool]], limit: float, what: str) -> None:
    """Poll ``check`` (an HTTP probe: nothing to wait on) until it holds, for ``limit`` s."""
    deadline = trio.current_time() + limit
    while not await check():
        if trio.current_time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        await trio.sleep(0.2)


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, broker: Broker, tsdb: Tsdb, *, unhealthy_after: float = 60.0
) -> AsyncIterator[tuple[Gateway, int]]:
    """A real Gateway (simulated source) and its status server on a free port."""
    cfg = parse_config(
        {
            "gateway": {
                "id": "gw-status",
                "buffer_dir": str(tmp_path / "buffer"),
                "clock_sync": "none",  # not a clock test
            },
            "source": {
                "kind": "command",
                "command": [sys.executable, "-m", "gateway", "simulate", "--interval", "0.2"],
                "stall_timeout": 0.0,
                "restart_initial": 0.2,
                "restart_max": 2.0,
            },
            "mqtt": {
                "host": "127.0.0.1",
                "port": broker.port,
                "client_id": f"gw-status-{broker.port}",
                "topic_prefix": f"status{broker.port}",
                "username": "technician",
                "backoff_initial": 0.2,
                "backoff_max": 0.5,
                "keepalive": 5,
            },
            "influxdb": {
                "url": tsdb.url,
                "org": "test",
                "bucket": "test",
                "backoff_initial": 0.2,
                "backoff_max": 1.0,
                "tags": {"testid": f"status{broker.port}"},
            },
            "status": {"listen": "127.0.0.1:0", "unhealthy_after": unhealthy_after},
        },
        environ={"GATEWAY_INFLUXDB_TOKEN": TOKEN, "GATEWAY_MQTT_PASSWORD": MQTT_PASSWORD},
    )
    assert cfg.influxdb.token == TOKEN
    gateway = Gateway(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        assert gateway.status_port is not None
        try:
            yield gateway, gateway.status_port
        finally:
            gateway.request_stop()


async def test_live_status_endpoints(tmp_path: Path, broker: Broker, tsdb: Tsdb) -> None:
    with trio.fail_after(90):
        async with running_gateway(tmp_path, broker, tsdb, unhealthy_after=1.5) as (gw, port):

            async def healthy() -> bool:
                return (await http_get(port, "/healthz"))[0] == 200

            async def delivered() -> bool:
                s = (await get_json(port, "/api/status"))[1]["sinks"]
                return bool(s["mqtt"]["delivered"] > 0 and s["influx"]["delivered"] > 0)

            await eventually(healthy, 20, "/healthz 200")
            await eventually(delivered, 20, "deliveries to both sinks")

            # /metrics: Prometheus text with live, sensible values.
            status, ctype, body = await http_get(port, "/metrics")
            assert status == 200
            assert ctype.startswith("text/plain")
            samples = {
                s.name: s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples
                if not s.labels
            }
            assert samples["gateway_packets_total"] > 0
            assert samples["gateway_mqtt_published_total"] > 0
            assert samples["gateway_influx_written_total"] > 0
            assert samples["gateway_mqtt_connected"] == 1
            assert samples["gateway_source_up"] == 1
            assert samples["gateway_clock_synchronized"] == 1
            assert samples["gateway_points_held"] == 0
            assert 0 <= samples["gateway_last_packet_age_seconds"] < 2
            assert 0 <= samples["gateway_mqtt_buffered_messages"] <= 1000
            assert 0 <= samples["gateway_influx_buffered_points"] <= 100_000

            # /healthz
            status, doc = await get_json(port, "/healthz")
            assert (status, doc) == (200, {"status": "ok", "reasons": []})

            # /api/status: the shape the page relies on, and no secrets.
            status, ctype, raw = await http_get(port, "/api/status")
            assert status == 200
            for secret in (TOKEN, MQTT_PASSWORD):
                assert secret.encode() not in raw
            doc = json.loads(raw)
            assert doc["healthy"] is True
            assert doc["clock"]["synchronized"] is True  # clock_sync = "none": trusted
            assert doc["clock"]["policy"] == "none"
            assert doc["clock"]["points_held"] == 0
            assert doc["clock"]["since"].endswith("Z")
            assert doc["gateway"]["id"] == "gw-status"
            assert doc["alerts"] == []  # nothing silent, no rules
            src = doc["source"]
            assert src["state"] == "running"
            assert isinstance(src["pid"], int)
            assert src["packets"] > 0
            assert src["last_packet_age_s"] < 2
            mqtt, influx = doc["sinks"]["mqtt"], doc["sinks"]["influx"]
            assert mqtt["connected"] is True
            assert mqtt["target"] == f"127.0.0.1:{broker.port}"
            assert (mqtt["takeovers"], mqtt["takeover"]) == (0, "")
            assert influx["healthy"] is True
            for sink in (mqtt, influx):
                assert set(sink) >= {
                    "backlog",
                    "oldest_age_s",
                    "dropped",
                    "dead_letters",
                    "salvaged",
                    "salvage_lost",
                    "last_error",
                    "last_delivery_age_s",
                }
                assert sink["dropped"] == 0
                assert sink["dead_letters"] == 0
                assert sink["salvaged"] == sink["salvage_lost"] == 0
            values = doc["values"]
            assert set(values) >= {"node1", "node2", "signal"}
            t = values["node1"]["temperature"]
            assert t["unit"] == "celsius"
            assert isinstance(t["value"], float)
            assert t["history"]
            assert t["history"][-1][1] == t["value"]

            # The page itself.
            status, ctype, html = await http_get(port, "/")
            assert status == 200
            assert ctype.startswith("text/html")
            assert b"api/status" in html

            # Broker down: MQTT backlog grows with no delivery ⇒ 503 naming mqtt.
            await trio.to_thread.run_sync(broker.stop)

            async def unhealthy_mqtt() -> bool:
                status, doc = await get_json(port, "/healthz")
                return status == 503 and any(r.startswith("mqtt:") for r in doc["reasons"])

            await eventually(unhealthy_mqtt, 20, "/healthz 503 naming mqtt")
            status, doc = await get_json(port, "/api/status")
            assert doc["healthy"] is False
            assert doc["sinks"]["mqtt"]["connected"] is False
            assert doc["sinks"]["mqtt"]["backlog"] > 0
            assert doc["sinks"]["mqtt"]["last_error"]

            # Broker back: the backlog drains and health returns.
            await trio.to_thread.run_sync(broker.start)
            await eventually(healthy, 30, "/healthz 200 after the broker returned")
            status, doc = await get_json(port, "/api/status")
            assert doc["sinks"]["mqtt"]["connected"] is True
            assert gw.stages is not None
            assert gw.stages.mqtt.connected
