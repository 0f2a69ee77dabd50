"""End to end: `gateway run` as a process, a noisy probe-rs-like child, real servers."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from gateway.simulate import NodeSimulator
from gateway.telemetry import UNITS, format_value
from tests.conftest import Subscriber, base_config, buffer_stats, retained, wait_until

ESC = "\x1b"

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
        time.sleep(1.0)  # anything extra (a duplicate) would arrive now
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
                (buffer_dir / "buffer.db").exists()
                and buffer_stats(buffer_dir)["mqtt"]["records"] == 90
            ),
            30,
        ), gw.log_text()
        time.sleep(2)  # several failed reconnects later ...
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
        time.sleep(0.5)
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


def test_json_payload_carries_value_unit_and_the_readings_time(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """`mqtt.payload = "json"`: a 3.1.1 subscriber can tell an old reading from a live one."""
    from tests.conftest import DESIGN_EXAMPLE

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
