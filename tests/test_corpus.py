"""A corpus of every kind of bad line, through `gateway run`: the counters on
/metrics match what the corpus is known to contain, and the good data arrives."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

from tests.services import free_port
from tests.support import Subscriber, base_config, wait_until

GOOD = {"v": 1, "seq": 1, "node2": {"temperature": 21.5, "pressure": 1001.5}}

# (line, what it must count) — None for lines that are parsed or ignored.
CORPUS: list[tuple[bytes, str | None]] = [
    (json.dumps(GOOD).encode(), None),
    (b"0.512 INFO  " + json.dumps({**GOOD, "seq": 2}).encode() + b" (node2 src/main.c:42)", None),
    (b"\xef\xbb\xbf" + json.dumps({**GOOD, "seq": 3}).encode(), None),  # BOM
    (b"\x1b[32m" + json.dumps({**GOOD, "seq": 4}).encode() + b"\x1b[0m\r", None),  # colours, CR
    (b"      Erasing [#####] 128.00 KiB/128.00 KiB", None),  # flashing progress: ignored
    (b'0.9 INFO  {"v":1,"seq":99,"node1":{"temperature":2', "invalid_json"),  # truncated
    (b'{"v":1,"a":{"b":1}} {"v":1,"a":{"b":2}}', "invalid_json"),  # two objects
    (b'{"v":1,"a":{"b":' + b"9" * 5000 + b"}}", "invalid_json"),  # past int's digit limit
    (b'{"v":1,"node1":{"temperature":\xff21.0}}', "invalid_utf8"),
    (b'{"v":1,"a":' + b"[" * 30000 + b"]" * 30000 + b"}", "too_deep"),
    (b'{"v":2,"node1":{"temperature":21.0}}', "unsupported_version"),
    (b'{"v":1,"seq":7}', "no_metrics"),
    (b'{"v":1,"pad":"' + b"x" * 70_000 + b'"}', "too_long"),
    (b"[1, 2, 3]", None),  # no object: ignored
]
# Metrics skipped inside otherwise good packets: (line, metric, reason).
BAD_METRICS: list[tuple[bytes, str, str]] = [
    (b'{"v":1,"node2":{"temperature":20.0,"pressure":NaN}}', "pressure", "not_finite"),
    (b'{"v":1,"node2":{"temperature":20.1,"pressure":"high"}}', "pressure", "not_a_number"),
    (b'{"v":1,"node2":{"temperature":20.2,"a b":1}}', "_invalid", "bad_name"),
    (b'{"v":1,"node2":{"temperature":20.3,"pressure":5242.88}}', "pressure", "implausible"),
]


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_corpus_counters_match(tmp_path: Path, broker, tsdb, test_id, gateway_factory) -> None:
    capture = tmp_path / "corpus.txt"
    capture.write_bytes(
        b"".join(line + b"\n" for line, _ in CORPUS + [(m[0], None) for m in BAD_METRICS])
    )
    port = free_port()
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["unused"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    cfg["status"] = {"listen": f"127.0.0.1:{port}"}
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    try:
        # 4 good packets × 2 metrics + 4 packets with one good temperature each.
        assert sub.wait_for(lambda m: len([t for t, _ in m if "/gateway/" not in t]) >= 12, 30)
        assert wait_until(lambda: scrape(port).get("gateway_packets_total") == 8.0, 30)
        time.sleep(0.5)
        metrics = scrape(port)
    finally:
        assert gw.terminate() == 0
        sub.close()
    expected: dict[str, int] = {}
    for _, reason in CORPUS:
        if reason:
            expected[reason] = expected.get(reason, 0) + 1
    got = {
        name.split('reason="')[1].rstrip('"}'): int(v)
        for name, v in metrics.items()
        if name.startswith("gateway_lines_rejected_total{")
    }
    assert got == expected
    for _, metric, reason in BAD_METRICS:
        key = f'gateway_metrics_rejected_total{{metric="{metric}",reason="{reason}"}}'
        assert metrics.get(key) == 1.0, key
    data = [m for m in sub.snapshot() if "/gateway/" not in m[0]]
    assert len(data) == 12
