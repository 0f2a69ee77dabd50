"""Firmware in the loop: the emulated Node 2 (QEMU) as `source.command` of a real
`gateway run`, against real Mosquitto and the TSDB."""

from __future__ import annotations

import subprocess
from collections import defaultdict
from pathlib import Path

from tests.support import REPO, Subscriber, base_config, wait_until
from tests.test_firmware import QEMU_COMMAND, QEMU_ELF

NINE = {
    "node1/temperature",
    "node1/humidity",
    "node1/gas_resistance",
    "node2/temperature",
    "node2/pressure",
    "signal/rssi",
    "signal/snr",
    "stats/packets_received",
    "stats/crc_errors",
}


def test_qemu_node2_through_the_gateway(tmp_path: Path, broker, tsdb, test_id, gateway_factory):
    subprocess.run(["make", "-s", "-C", str(REPO / "firmware"), "all"], check=True, timeout=300)
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, QEMU_COMMAND)
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    prefix = f"{test_id}/"

    def series(msgs: list[tuple[str, str]]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for topic, payload in msgs:
            if topic.startswith(prefix) and "/gateway/" not in topic:
                out[topic.removeprefix(prefix)].append(float(payload))
        return out

    try:
        # Every seventh simulated frame is damaged: wait until one was counted.
        assert sub.wait_for(
            lambda msgs: any(v > 0 for v in series(msgs).get("stats/crc_errors", [])), 60
        ), gw.log_text()
    finally:
        code = gw.terminate()
        sub.close()
    assert code == 0
    got = series(sub.snapshot())
    assert set(got) >= NINE, sorted(got)
    received = got["stats/packets_received"]
    assert received == sorted(received)
    assert received[-1] > received[0]
    assert all(-40 <= t <= 85 for t in got["node1/temperature"] + got["node2/temperature"])
    assert all(0 <= h <= 100 for h in got["node1/humidity"])
    assert all(300 <= p <= 1100 for p in got["node2/pressure"])
    assert all(-150 <= r <= 0 for r in got["signal/rssi"])
    # The same packets are points in the database, tagged by node.
    assert wait_until(
        lambda: (
            {(n, node) for n, node, *_ in tsdb.points(testid=test_id)}
            >= {("pressure", "node2"), ("gas_resistance", "node1"), ("crc_errors", "stats")}
        ),
        30,
    )
    # No QEMU left behind.
    ps = subprocess.run(["pgrep", "-f", str(QEMU_ELF)], capture_output=True, text=True)
    assert ps.stdout.strip() == ""
