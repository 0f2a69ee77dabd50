"""Source behaviour through the real daemon: plausibility, a missing program, file replay."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.support import CHUNKY_CHILD, Subscriber, base_config, wait_until

BAD_BMP280 = {
    "v": 1,
    "seq": 1,
    "uptime_ms": 1000,
    "node1": {"temperature": 26.7, "humidity": 140.0, "gas_resistance": 101169},
    "node2": {"temperature": 24.3, "pressure": 5242.88},
    "signal": {"rssi": -33, "snr": 13},
    "stats": {"packets_received": 1, "crc_errors": 0},
}


def test_implausible_values_are_held_back_and_the_rest_delivered(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_text(json.dumps(BAD_BMP280) + "\n")
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["unused"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    data = lambda msgs: [m for m in msgs if "/gateway/" not in m[0]]  # noqa: E731
    try:
        assert sub.wait_for(lambda msgs: len(data(msgs)) >= 7, 30), gw.log_text()
        assert wait_until(lambda: len(tsdb.points(testid=test_id)) >= 7, 30)
    finally:
        assert gw.terminate() == 0
    # The gateway is gone: a probe behind its messages proves none is still coming.
    assert sub.flush()
    got = dict(data(sub.snapshot()))
    points = {(name, node) for name, node, *_ in tsdb.points(testid=test_id)}
    sub.close()
    assert f"{test_id}/node2/pressure" not in got
    assert f"{test_id}/node1/humidity" not in got
    assert len(got) == 7
    assert got[f"{test_id}/node1/temperature"] == "26.7"
    assert ("pressure", "node2") not in points
    assert ("humidity", "node1") not in points
    assert len(points) == 7
    log = gw.log_text()
    assert "skipped node1/humidity, node2/pressure: implausible" in log


def test_missing_program_keeps_the_daemon_alive(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["/nonexistent/probe-rs", "attach"])
    cfg["source"]["restart_max"] = 1.0
    gw = gateway_factory(cfg)
    # Three failed starts (each retried with backoff) while the daemon stays up.
    assert wait_until(lambda: gw.log_text().count("cannot start /nonexistent/probe-rs") >= 3, 30)
    assert gw.alive(), gw.log_text()
    assert gw.terminate() == 0


def test_child_exiting_every_three_packets_delivers_each_once(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    script = tmp_path / "chunky.py"
    script.write_text(CHUNKY_CHILD)
    cfg = base_config(
        tmp_path, test_id, broker.port, tsdb.url, [sys.executable, str(script), str(tmp_path / "n")]
    )
    cfg["source"].update(restart_initial=0.05, restart_max=0.2)
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: sum(t.endswith("/a/n") for t, _ in m) >= 30, 60)
    finally:
        assert gw.terminate() == 0
        sub.close()
    seq = [int(p) for t, p in sub.snapshot() if t.endswith("/a/n")]
    assert seq == list(range(1, len(seq) + 1))  # every packet once, in order
    restarts = gw.log_text().count("(exit_code_3); restarting")
    assert restarts >= len(seq) // 3 - 1
