"""End to end: `gateway run` as a process, a noisy probe-rs-like child, real servers."""

from __future__ import annotations

import json
import math
import re
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.buffer import STORE_FILE
from gateway.simulate import NodeSimulator
from gateway.telemetry import UNITS, format_value
from tests.faults.common import NUMBERED, numbers
from tests.faults.proxy import Proxy
from tests.services import free_port
from tests.support import Subscriber, base_config, buffer_stats, retained, wait_until

ESC = "\x1b"
# An observation window: nothing more may arrive in it (a duplicate would). The
# gateway keeps running after it, so no sentinel can say that nothing follows.
DUPLICATE_WINDOW_S = 1.0
# An observation window: the daemon must survive several failed reconnects in it.
SERVERS_DOWN_S = 2.0

# A child that prints a capture file in small pieces (as a UART would), then
# stays alive like probe-rs attached to a quiet board.
CHILD = """
import sys, time
data = open(sys.argv[1], 'rb').read()
out = sys.stdout.buffer
for i in range(0, len(data), 777):
    out.write(data[i:i + 777]); out.flush()
    time.sleep(0.001)
time.sleep(3600)
"""


def noisy_capture(n_packets: int = 24) -> tuple[bytes, list[dict[str, Any]]]:
    """A probe-rs-like stream and the packets whose metrics must arrive.

    Returns the bytes and, for each valid packet, its expected groups.
    """
    sim = NodeSimulator(seed=7)
    out: list[bytes] = [
        b"      Erasing \xe2\x9c\x94 [00:00:01] [########################] 128.00 KiB/128.00 KiB\n",
        b"  Programming \xe2\x9c\x94 [00:00:02] [########################] 42.00 KiB/42.00 KiB\n",
        b"     Finished in 3.1s\n",
    ]
    expected: list[dict[str, Any]] = []
    for i in range(n_packets):
        obj = sim.packet(uptime_ms=1000 * i)
        if i >= n_packets // 2:
            obj["node3"] = {"temperature": 19.5 + i / 10, "battery": 3.3}
        if i == 5:
            obj["node2"]["pressure"] = float("nan")
        text = json.dumps(obj, separators=(",", ":"), allow_nan=True)
        if i % 3 == 0:  # defmt prefix, colours and location suffix
            line = (
                f"{ESC}[32m0.{i:06d} [INFO ] {ESC}[0m{text} {ESC}[2m(node2 src/main.c:42){ESC}[0m"
            )
        elif i % 3 == 1:
            line = f"{i}.5 INFO  {text}"
        else:
            line = text
        out.append(line.encode() + (b"\r\n" if i % 2 else b"\n"))
        groups = {g: dict(v) for g, v in obj.items() if isinstance(v, dict)}
        groups = {
            g: {m: v for m, v in vals.items() if not (isinstance(v, float) and math.isnan(v))}
            for g, vals in groups.items()
        }
        expected.append(groups)
        # Garbage between packets: none of it may reach a server.
        if i == 2:
            out.append(b'0.9 INFO  {"v":1,"seq":99,"node1":{"temperature":2\n')  # truncated
        if i == 3:
            out.append(b'{"v":1,"node1":{"temperature":\xff\xfe21.0}}\n')  # invalid UTF-8
        if i == 4:
            out.append(b'{"v":1,"big":"' + b"x" * 200_000 + b'"}\n')  # 200 KB line
        if i == 6:
            out.append(b"WARN probe-rs: RTT control block not found yet\n")
    return b"".join(out), expected


def test_noisy_stream_delivers_every_valid_metric_once(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    data, expected = noisy_capture()
    capture = tmp_path / "capture.bin"
    capture.write_bytes(data)
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    cfg = base_config(
        tmp_path, test_id, broker.port, tsdb.url, [sys.executable, str(child), str(capture)]
    )
    cfg["plausibility"] = {"temperature": [-40, 85]}

    expected_msgs: dict[str, list[str]] = defaultdict(list)
    for groups in expected:
        for group, metrics in groups.items():
            for metric, value in metrics.items():
                expected_msgs[f"{test_id}/{group}/{metric}"].append(format_value(value))
    total = sum(len(v) for v in expected_msgs.values())

    sub = Subscriber(broker.port, f"{test_id}/#")
    started_ns = time.time_ns()
    gw = gateway_factory(cfg)
    try:
        data_topics = lambda msgs: [m for m in msgs if "/gateway/" not in m[0]]  # noqa: E731
        assert sub.wait_for(lambda msgs: len(data_topics(msgs)) >= total, 60), gw.log_text()
        time.sleep(DUPLICATE_WINDOW_S)
        got: dict[str, list[str]] = defaultdict(list)
        for topic, payload in data_topics(sub.snapshot()):
            got[topic].append(payload)
        # Exactly once, FIFO per topic, documented topics and payloads.
        assert dict(got) == dict(expected_msgs)
        assert (f"{test_id}/gateway/status", "online") in sub.snapshot()

        # Every point in the database, with node/unit tags and the receive time.
        def all_points() -> bool:
            return len(tsdb.points(testid=test_id)) >= total

        assert wait_until(all_points, 30), gw.log_text()
        points = tsdb.points(testid=test_id)
        ended_ns = time.time_ns()
        by_series: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        for name, node, unit, value, ts in points:
            assert unit == UNITS.get(name, ""), (name, unit)
            assert started_ns // 1_000_000 <= ts <= ended_ns // 1_000_000
            by_series[(name, node)].append((ts, value))
        for (name, node), samples in by_series.items():
            # Packets read in one chunk may share a millisecond (VictoriaMetrics
            # stores ms), so compare as multisets; MQTT above checks the order.
            want = [float(v) for v in expected_msgs[f"{test_id}/{node}/{name}"]]
            assert sorted(v for _, v in samples) == sorted(want), (name, node)
        assert len(points) == total
    finally:
        code = gw.terminate()
        sub.close()
    assert code == 0, gw.log_text()
    log = gw.log_text()
    assert "invalid_utf8" in log
    assert "invalid_json" in log
    assert "longer than source.max_line_bytes" in log

    # The newest value of each topic is the retained one; "offline" after shutdown.
    kept = retained(broker.port, f"{test_id}/#")
    for topic, values in expected_msgs.items():
        assert kept[topic] == values[-1], topic
    assert kept[f"{test_id}/gateway/status"] == "offline"


LINES_SCRIPT = """
import json, sys, time
from gateway.buffer import STORE_FILE
from gateway.simulate import NodeSimulator
sim = NodeSimulator(seed=3, crc_error_rate=0.0)
for _ in range(int(sys.argv[1])):
    print(json.dumps(sim.packet()), flush=True)
time.sleep(3600)
"""


def test_servers_down_at_start_then_buffered_and_delivered(
    tmp_path: Path, test_id, gateway_factory, tmp_path_factory
) -> None:
    from tests.services import Broker, Tsdb

    broker = Broker(tmp_path)  # not started: the broker is down
    db = Tsdb(tmp_path_factory.mktemp("db-down"))  # not started: the database is down
    script = tmp_path / "lines.py"
    script.write_text(LINES_SCRIPT)
    cfg = base_config(tmp_path, test_id, broker.port, db.url, [sys.executable, str(script), "10"])
    buffer_dir = tmp_path / "buffer"

    gw = gateway_factory(cfg)
    try:
        assert wait_until(
            lambda: (
                (buffer_dir / STORE_FILE).exists()
                and buffer_stats(buffer_dir)["mqtt"]["records"] == 90
            ),
            30,
        ), gw.log_text()
        time.sleep(SERVERS_DOWN_S)  # several failed reconnects later ...
        assert gw.alive(), gw.log_text()  # ... the daemon is still there
        stats = buffer_stats(buffer_dir)
        assert stats["mqtt"]["records"] == 90
        assert stats["influx"]["records"] == 90
        # SIGTERM while both servers are down: clean exit, buffers intact.
        assert gw.terminate() == 0
        stats = buffer_stats(buffer_dir)
        assert (stats["mqtt"]["records"], stats["influx"]["records"]) == (90, 90)

        # Restart with the same buffers, child sending nothing new, servers up.
        cfg["source"]["command"] = [sys.executable, str(script), "0"]
        broker.start()
        db.start()
        sub = Subscriber(broker.port, f"{test_id}/#")
        gw2 = gateway_factory(cfg)
        data = lambda msgs: [m for m in msgs if "/gateway/" not in m[0]]  # noqa: E731
        assert sub.wait_for(lambda msgs: len(data(msgs)) >= 90, 30), gw2.log_text()
        assert wait_until(lambda: len(db.points(testid=test_id)) >= 90, 30), gw2.log_text()
        assert gw2.terminate() == 0
        assert sub.flush()  # a probe behind the gateway's last message: none is still coming
        assert len(data(sub.snapshot())) == 90
        assert len(db.points(testid=test_id)) == 90
        sub.close()
        stats = buffer_stats(buffer_dir)
        assert (stats["mqtt"]["records"], stats["influx"]["records"]) == (0, 0)
    finally:
        broker.stop()
        db.stop()


def test_gateway_writes_its_own_backlog_points(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    capture = tmp_path / "one.jsonl"
    capture.write_text('{"v":1,"seq":1,"node2":{"pressure":1000.5}}\n')
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["unused"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    cfg["gateway"]["stats_interval"] = 0.3
    gw = gateway_factory(cfg)
    try:
        assert wait_until(
            lambda: (
                {"mqtt_backlog", "influx_backlog", "packets"}
                <= {name for name, node, *_ in tsdb.points(testid=test_id) if node == "gateway"}
            ),
            30,
        ), gw.log_text()
    finally:
        assert gw.terminate() == 0
    packets = [v for name, node, _, v, _ in tsdb.points(testid=test_id) if name == "packets"]
    assert max(packets) == 1.0
    # The fleet dashboard's figures, each series tagged with the gateway's id.
    series = tsdb.export(testid=test_id, node="gateway")
    names = {str(s["metric"]["__name__"]).removesuffix("_value") for s in series}  # type: ignore[index]
    assert {
        "mqtt_oldest_age",
        "influx_oldest_age",
        "mqtt_dead_letters_waiting",
        "influx_dead_letters_waiting",
        "clock_synchronized",
        "alerts_active",
    } <= names, names
    assert {s["metric"]["gateway"] for s in series} == {test_id}  # type: ignore[index]


def test_json_payload_carries_value_unit_and_the_readings_time(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """`mqtt.payload = "json"`: a 3.1.1 subscriber can tell an old reading from a live one."""
    from tests.support import DESIGN_EXAMPLE

    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(DESIGN_EXAMPLE + b"\n")
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["unused"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    cfg["mqtt"]["payload"] = "json"
    sub = Subscriber(broker.port, f"{test_id}/#")
    before = time.time()
    gw = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: len([t for t, _ in m if "/gateway/" not in t]) >= 9, 30)
    finally:
        assert gw.terminate() == 0
        sub.close()
    got = {t: json.loads(p) for t, p in sub.snapshot() if "/gateway/" not in t}
    temp = got[f"{test_id}/node1/temperature"]
    assert temp["value"] == 26.7
    assert temp["unit"] == "celsius"
    assert "unit" not in got[f"{test_id}/stats/packets_received"]
    from datetime import datetime

    ts = datetime.strptime(temp["ts"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert before - 1 <= ts <= time.time() + 1
    assert temp["ts"].endswith("Z")
    # Every message of the packet carries the same time, the packet's.
    assert len({doc["ts"] for doc in got.values()}) == 1


# -- alerts -----------------------------------------------------------------------------

# Node 2 as the firmware behaves: a packet line per frame while `mode` says
# "full"; with "heartbeat", Node 1 is silent and Node 2 prints only its own
# reading and its stats (packets_received unchanged), here every 0.5 s.
HEARTBEAT_CHILD = """
import json, os, sys, time
from gateway.buffer import STORE_FILE
from gateway.simulate import NodeSimulator
mode_file = sys.argv[1]
sim = NodeSimulator(seed=11, crc_error_rate=0.0)
while True:
    with open(mode_file) as f:
        mode = f.read().strip()
    if mode == "heartbeat":
        sim.seq += 1
        obj = {"v": 1, "seq": sim.seq, "uptime_ms": sim.seq * 500,
               "node2": {"temperature": 23.1, "pressure": 1013.2},
               "stats": {"packets_received": sim.packets_received, "crc_errors": 0}}
    else:
        obj = sim.packet()
    print(json.dumps(obj), flush=True)
    time.sleep(0.5 if mode == "heartbeat" else 0.2)
"""

# Packets whose node1 temperature is whatever `temperature` holds, every 0.1 s.
THRESHOLD_CHILD = """
import json, sys, time
path, n = sys.argv[1], 0
while True:
    n += 1
    with open(path) as f:
        t = float(f.read())
    print(json.dumps({"v": 1, "seq": n, "node1": {"temperature": t}, "node2": {"pressure": 990.0}}),
          flush=True)
    time.sleep(0.1)
"""


RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics of a running gateway: (sample name, labels) → value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def firing(port: int, name: str) -> float | None:
    return scrape(port).get(("gateway_alerts_firing", (("name", name),)))


def restarts(port: int) -> float:
    return sum(v for (n, _), v in scrape(port).items() if n == "gateway_source_restarts_total")


def alert_points(tsdb: Any, test_id: str, name: str) -> list[tuple[str, float]]:
    """(state, value) of every `alerts` point of alert ``name``, oldest first."""
    out: list[tuple[int, str, float]] = []
    for series in tsdb.export(testid=test_id, name=name):
        labels = series["metric"]
        if labels["__name__"] != "alerts_value":
            continue
        for value, ts in zip(series["values"], series["timestamps"], strict=True):
            out.append((ts, labels["state"], value))
    return [(state, value) for _, state, value in sorted(out)]


def alert_messages(sub: Subscriber, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for t, p in sub.snapshot() if t == topic]


def test_a_silent_node1_raises_stale_while_heartbeats_keep_the_source_up(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    mode = tmp_path / "mode"
    mode.write_text("full")
    child = tmp_path / "node2.py"
    child.write_text(HEARTBEAT_CHILD)
    cfg = base_config(
        tmp_path, test_id, broker.port, tsdb.url, [sys.executable, str(child), str(mode)]
    )
    # Heartbeats every 0.5 s are lines: a 2 s stall watchdog never fires on them.
    cfg["source"]["stall_timeout"] = 2.0
    cfg["alerts"] = {"stale_after": 3.0}
    # Alerts are retained whatever mqtt.retain says.
    cfg["mqtt"]["retain"] = False
    status_port = free_port()
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    topic = f"{test_id}/alerts/stale-node1"
    sub = Subscriber(broker.port, f"{test_id}/alerts/#")
    gw = gateway_factory(cfg)
    try:
        assert wait_until(lambda: _packets(status_port) >= 10, 30), gw.log_text()
        assert firing(status_port, "stale-node1") == 0.0

        # Node 1 falls silent; Node 2 goes on with heartbeats.
        mode.write_text("heartbeat")
        assert sub.wait_for(lambda _: len(alert_messages(sub, topic)) >= 1, 30), gw.log_text()
        fired = alert_messages(sub, topic)[0]
        assert (fired["state"], fired["metric"]) == ("firing", "node1")
        assert fired["value"] >= 3.0  # seconds since node1 was last seen
        assert RFC3339_MS.fullmatch(fired["since"]), fired
        assert RFC3339_MS.fullmatch(fired["at"]), fired
        assert firing(status_port, "stale-node1") == 1.0
        # Heartbeats keep Node 2's groups fresh and the source up.
        assert firing(status_port, "stale-node2") == 0.0
        assert firing(status_port, "stale-stats") == 0.0
        assert restarts(status_port) == 0
        # /healthz: what arrives is delivered; a silent group alone is an alert, not a 503.
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/healthz", timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/api/status", timeout=5) as r:
            active = [a["name"] for a in json.load(r)["alerts"]]
        assert "stale-node1" in active
        assert wait_until(
            lambda: ("firing", fired["value"]) in alert_points(tsdb, test_id, "stale-node1"), 30
        ), gw.log_text()
        kept = retained(broker.port, f"{test_id}/#")
        assert json.loads(kept[topic]) == fired
        assert f"{test_id}/node2/pressure" not in kept  # readings follow mqtt.retain

        # Node 1 is back.
        mode.write_text("full")
        assert sub.wait_for(lambda _: len(alert_messages(sub, topic)) >= 2, 30), gw.log_text()
        resolved = alert_messages(sub, topic)[1]
        assert (resolved["state"], resolved["since"]) == ("resolved", fired["since"])
        assert wait_until(
            lambda: (
                [s for s, _ in alert_points(tsdb, test_id, "stale-node1")] == ["firing", "resolved"]
            ),
            30,
        ), gw.log_text()
        assert firing(status_port, "stale-node1") == 0.0
        assert restarts(status_port) == 0
    finally:
        code = gw.terminate()
        sub.close()
    assert code == 0, gw.log_text()
    assert json.loads(retained(broker.port, topic)[topic])["state"] == "resolved"
    assert "alert stale-node1 firing" in gw.log_text()


def _packets(port: int) -> float:
    try:
        return scrape(port).get(("gateway_packets_total", ()), 0.0)
    except OSError:
        return 0.0  # not listening yet


def test_an_alert_raised_while_the_broker_is_down_arrives_in_order_after_it_heals(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    temperature = tmp_path / "temperature"
    temperature.write_text("25.0")
    child = tmp_path / "node.py"
    child.write_text(THRESHOLD_CHILD)
    proxy = Proxy(broker.port).start()  # lets the test hold the gateway off a healed broker
    cfg = base_config(
        tmp_path, test_id, proxy.port, tsdb.url, [sys.executable, str(child), str(temperature)]
    )
    cfg["alerts"] = {
        "stale_after": 0.0,
        "rule": [
            {
                "name": "greenhouse-hot",
                "metric": "node1/temperature",
                "above": 30.0,
                "for": 1.0,
                "clear": 28.0,
            }
        ],
    }
    bound = 30  # 20 messages a second: full within two seconds of the outage
    cfg["mqtt"]["buffer_max_messages"] = bound
    status_port = free_port()
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    topic = f"{test_id}/alerts/greenhouse-hot"
    gw = gateway_factory(cfg)
    sub = Subscriber(broker.port, f"{test_id}/#")
    try:
        assert sub.wait_for(lambda m: (f"{test_id}/node1/temperature", "25.0") in m, 30)
        sub.close()

        def dropped() -> float:
            return scrape(status_port).get(("gateway_mqtt_dropped_total", ()), 0.0)

        broker.stop()
        assert wait_until(lambda: scrape(status_port)[("gateway_mqtt_connected", ())] == 0.0, 30), (
            gw.log_text()
        )
        # It gets hot, then cools down again, all while the broker is away; the
        # buffer overflows after each, so readings are dropped around the events.
        temperature.write_text("35.0")
        assert wait_until(lambda: firing(status_port, "greenhouse-hot") == 1.0, 30)
        mark = dropped()
        assert wait_until(lambda: dropped() > mark + 2 * bound, 30)
        temperature.write_text("20.0")
        assert wait_until(lambda: firing(status_port, "greenhouse-hot") == 0.0, 30)
        mark = dropped()
        assert wait_until(lambda: dropped() > mark + 2 * bound, 30)

        # The broker returns; a subscriber is listening before the gateway reconnects.
        proxy.set_mode("refuse")
        broker.start()
        sub = Subscriber(broker.port, f"{test_id}/#")
        proxy.set_mode("heal")
        assert sub.wait_for(lambda _: len(alert_messages(sub, topic)) >= 2, 30), gw.log_text()
        fired, resolved = alert_messages(sub, topic)[:2]
        assert (fired["state"], fired["metric"], fired["value"]) == (
            "firing",
            "node1/temperature",
            35.0,
        )
        assert (resolved["state"], resolved["value"]) == ("resolved", 20.0)
        assert resolved["since"] == fired["since"] <= fired["at"] <= resolved["at"]
        assert wait_until(
            lambda: (
                alert_points(tsdb, test_id, "greenhouse-hot")
                == [("firing", 35.0), ("resolved", 20.0)]
            ),
            30,
        ), gw.log_text()
    finally:
        code = gw.terminate()
        sub.close()
        proxy.close()
    assert code == 0, gw.log_text()
    assert json.loads(retained(broker.port, topic)[topic])["state"] == "resolved"


def test_a_second_gateway_on_a_running_ones_buffer_dir_exits_and_nothing_is_lost(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """Issue 27's technician: `gateway run` by hand next to the service, same config.

    The second one exits 4 at once with one line naming the directory and the
    first one's pid; the first buffers on (its broker link is down meanwhile,
    as in the field report) and, once the link is back, delivers every packet.
    """
    total = 200
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    state = tmp_path / "state"
    proxy = Proxy(broker.port).start()
    cfg = base_config(
        tmp_path,
        test_id,
        proxy.port,
        tsdb.url,
        [sys.executable, str(script), str(state), str(total), "20"],
    )
    buffer_dir = tmp_path / "buffer"
    sub = Subscriber(broker.port, f"{test_id}/#")

    def delivered() -> set[int]:
        return set(numbers(p for t, p in sub.snapshot() if t.endswith("/a/n")))

    def printed() -> int:
        return int(state.read_text() or 0) if state.exists() else 0

    first = gateway_factory(cfg)
    try:
        assert wait_until(lambda: "running: source=" in first.log_text(), 30), first.log_text()
        assert wait_until(lambda: len(delivered()) >= 5, 30), first.log_text()[-3000:]
        proxy.set_mode("refuse")
        buffered_from = printed()
        assert wait_until(lambda: printed() >= buffered_from + 20, 30)

        second = gateway_factory(cfg)
        code = second.proc.wait(timeout=5)
        assert code == 4, second.log_text()[-3000:]
        assert (
            f"gateway: buffer directory {buffer_dir} is in use by another gateway "
            f"(pid {first.proc.pid}): stop that one first" in second.log_text()
        ), second.log_text()
        assert first.alive(), first.log_text()[-3000:]

        proxy.set_mode("heal")
        everything = set(range(1, total + 1))
        assert wait_until(lambda: delivered() >= everything, 60), (
            sorted(everything - delivered())[:20],
            first.log_text()[-3000:],
        )

        def points() -> set[int]:
            found = tsdb.points(testid=test_id)
            return set(numbers(str(v) for name, _, _, v, _ in found if name == "n"))

        assert wait_until(lambda: points() >= everything, 60), sorted(everything - points())[:20]
        assert first.terminate() == 0, first.log_text()[-3000:]
    finally:
        sub.close()
        proxy.close()
    assert "never reached the disk" not in first.log_text()
