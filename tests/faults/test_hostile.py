"""Hostile input: what a broken or malicious firmware can print must not grow the daemon."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

from tests.services import free_port
from tests.support import base_config, wait_until

LINES = 100_000

# 1,000 good packets to warm up, then a new bad metric name on every line.
CHILD = """
import json, sys, time
out = sys.stdout
for i in range(1000):
    out.write(json.dumps({"v": 1, "seq": i, "a": {"n": i}}) + "\\n")
out.flush()
time.sleep(2)  # the test notes the warm RSS here
for i in range(int(sys.argv[1])):
    out.write('{"v":1,"a":{"x%d":"s"}}\\n' % i)
out.write(json.dumps({"v": 1, "seq": 9999, "a": {"n": -1}}) + "\\n")
out.flush()
time.sleep(3600)
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return str(r.read().decode())
    except OSError:  # not listening yet
        return ""


def sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_distinct_bad_metric_names_do_not_grow_memory_or_metrics(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    port = free_port()
    cfg = base_config(
        tmp_path, test_id, broker.port, tsdb.url, [sys.executable, str(child), str(LINES)]
    )
    cfg["status"] = {"listen": f"127.0.0.1:{port}"}
    gw = gateway_factory(cfg)
    try:
        assert wait_until(lambda: sample(scrape(port), "gateway_packets_total") >= 1000, 60), (
            gw.log_text()[-2000:]
        )
        warm = rss_kib(gw.proc.pid)
        assert wait_until(lambda: sample(scrape(port), "gateway_packets_total") >= 1001, 120)
        text = scrape(port)
        grown = rss_kib(gw.proc.pid) - warm
        print(
            f"\nhostile figures: {LINES} distinct bad names: RSS +{grown / 1024:.1f} MiB, "
            f"/metrics {len(text) / 1024:.1f} KiB"
        )
        assert sample(text, "gateway_metrics_rejected_total") == LINES
        assert grown < 10 * 1024, f"RSS grew by {grown} KiB"
        assert len(text) < 100 * 1024
        warnings = gw.log_text().count("skipped a/x")
        assert warnings < 10, f"{warnings} warnings for one kind of rejection"
    finally:
        assert gw.terminate() == 0
