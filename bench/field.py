"""The field-rate footprint: 2 packets/s for a minute, measured from outside.

RSS, CPU and bytes written per packet of the gateway process (/proc), and two
latencies per packet: line → subscriber, and line → accepted by the database
(:class:`AcceptProxy`, a relay in front of the TSDB).
"""

from __future__ import annotations

import http.client
import statistics
import time
from typing import Any

from bench.harness import PROBE, Counter, Run, latencies, metric, proc_stats, sent_times
from bench.report import Row, percentile
from gateway.config.sections import DEFAULT_FLUSH_INTERVAL
from tests.services import wait_listening
from tests.support import HttpRequest, HttpResponse, StubHttp

FLUSH_INTERVAL_MS = DEFAULT_FLUSH_INTERVAL * 1000  # the benchmark configs keep the default
FOOTPRINT_RUNS = 2  # per durability; medians, and latency percentiles over all probes
FOOTPRINT_SECONDS = 60.0  # measured, after WARM_UP_S
WARM_UP_S = 10.0
LANDING_S = 1.0  # after the window: the last probes' deliveries land


class AcceptProxy:
    """An HTTP relay in front of the TSDB that times each point's acceptance.

    For every 2xx write it records now - ``sent_ms`` of the generator's
    ``sent_ms`` points in the body: line leaving the source → database accepted
    it, measured outside the gateway (the relay's own hop included).
    """

    def __init__(self, target_port: int) -> None:
        self.accepted_ms: dict[int, float] = {}
        self.target_port = target_port
        self.http = StubHttp({"*": self._relay}, keep_alive=True)
        self.url = self.http.url

    def _relay(self, request: HttpRequest) -> HttpResponse:
        conn = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=30)
        headers = {k: v for k, v in request.headers.items() if k != "host"}
        conn.request(request.method, request.target, body=request.body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        now_ms = time.time() * 1000.0
        if 200 <= resp.status < 300:
            for line in request.content.decode().splitlines():
                if line.startswith(PROBE.split("/")[1] + ","):
                    n = int(float(line.split(" value=")[1].split()[0]))
                    self.accepted_ms.setdefault(n, now_ms)
        conn.close()
        hop = ("transfer-encoding", "connection", "content-length")
        return resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in hop}, data

    def close(self) -> None:
        self.http.close()


def bench_footprint(
    durability: str, write_delay: float = 0.0, seconds: float = FOOTPRINT_SECONDS
) -> dict[str, Any]:
    """One field-rate run: the gateway's footprint over ``seconds`` after the warm-up."""
    run = Run(f"field{durability}{write_delay:g}")
    proxy: AcceptProxy | None = None
    sent_file = run.dir / "sent.txt"
    try:
        run.broker.start()
        run.tsdb.start()
        proxy = AcceptProxy(int(run.tsdb.url.rsplit(":", 1)[1]))
        counter = Counter(run.broker.port, run.prefix)
        gw = run.start_gateway(
            run.config(
                run.generator(2.0, sent=sent_file),
                gateway={"durability": durability, "write_delay": write_delay},
                influxdb={"url": proxy.url},
            )
        )
        wait_listening(run.status_port)
        time.sleep(WARM_UP_S)  # a measuring window, as are the two below
        before = proc_stats(gw.pid)
        packets_before = metric(run.status_port, "gateway_packets_total")
        first = max(sent_times(sent_file), default=0)
        time.sleep(seconds)
        after = proc_stats(gw.pid)
        packets = metric(run.status_port, "gateway_packets_total") - packets_before
        time.sleep(LANDING_S)
        sent = {n: ms for n, ms in sent_times(sent_file).items() if n > first}
        lat = latencies(sent, counter.arrived_ms)
        db = latencies(sent, proxy.accepted_ms)
        counter.close()
        return {
            "durability": durability,
            "rss_mb": after["rss"] / 1e6,
            "cpu_pct": 100 * (after["cpu_s"] - before["cpu_s"]) / seconds,
            "bytes_per_packet": (after["write_bytes"] - before["write_bytes"]) / max(packets, 1),
            "p50_ms": statistics.median(lat),
            "p99_ms": percentile(lat, 0.99),
            "db_p50_ms": statistics.median(db),
            "db_p99_ms": percentile(db, 0.99),
            "lat": lat,
            "db": db,
            "packets": packets,
        }
    finally:
        if proxy is not None:
            proxy.close()
        run.close()


def footprint(
    durability: str,
    write_delay: float = 0.0,
    runs: int = FOOTPRINT_RUNS,
    seconds: float = FOOTPRINT_SECONDS,
) -> dict[str, Any]:
    """Several field-rate runs: median RSS, CPU and bytes; percentiles of all probes."""
    results = [bench_footprint(durability, write_delay, seconds) for _ in range(runs)]
    lat = sorted(x for r in results for x in r["lat"])
    db = sorted(x for r in results for x in r["db"])
    out: dict[str, Any] = {
        key: statistics.median(r[key] for r in results)
        for key in ("rss_mb", "cpu_pct", "bytes_per_packet")
    }
    out["spread"] = {
        key: (min(r[key] for r in results), max(r[key] for r in results))
        for key in ("rss_mb", "cpu_pct", "bytes_per_packet")
    }
    out.update(
        p50_ms=statistics.median(lat),
        p99_ms=percentile(lat, 0.99),
        db_p50_ms=statistics.median(db),
        db_p99_ms=percentile(db, 0.99),
        probes=len(lat),
    )
    return out


def lo_hi(f: dict[str, Any], key: str, scale: float, digits: int) -> str:
    lo, hi = f["spread"][key]
    return f"{lo / scale:.{digits}f}–{hi / scale:.{digits}f}"


def footprint_rows(
    rows: list[Row],
    durability: str,
    write_delay: float = 0.0,
    runs: int = FOOTPRINT_RUNS,
    seconds: float = FOOTPRINT_SECONDS,
) -> None:
    """The field-rate rows (RSS, CPU, disk written, latencies) of one durability."""
    f = footprint(durability, write_delay, runs, seconds)
    # Write-behind, with both links up: records are acked before they are due.
    bytes_target = 1 if write_delay > 0 else 12 if durability == "full" else None
    if write_delay > 0:
        durability = f"{durability}, write_delay {write_delay:g}"
    rows.append(
        (
            f"field rate 2/s, {durability}: RSS",
            "≤ 60 MB",
            f"{f['rss_mb']:.1f} ({lo_hi(f, 'rss_mb', 1, 1)}) MB",
            f["rss_mb"] <= 60,
        )
    )
    rows.append(
        (
            f"field rate 2/s, {durability}: CPU",
            "≤ 1 %",
            f"{f['cpu_pct']:.2f} ({lo_hi(f, 'cpu_pct', 1, 2)}) %",
            f["cpu_pct"] <= 1.0,
        )
    )
    rows.append(
        (
            f"field rate 2/s, {durability}: disk written per packet",
            f"≤ {bytes_target} KiB" if bytes_target else "(reported)",
            f"{f['bytes_per_packet'] / 1024:.1f} ({lo_hi(f, 'bytes_per_packet', 1024, 1)}) KiB",
            f["bytes_per_packet"] <= bytes_target * 1024 if bytes_target else None,
        )
    )
    rows.append(
        (
            f"field rate 2/s, {durability}: line → subscriber p50 / p99 ({f['probes']} packets)",
            "≤ 5 / 10 ms",
            f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} ms",
            f["p50_ms"] <= 5 and f["p99_ms"] <= 10,
        )
    )
    rows.append(
        (
            f"field rate 2/s, {durability}: line → accepted by the database p50 / p99",
            f"p99 ≤ flush_interval + 50 ms = {FLUSH_INTERVAL_MS + 50:.0f} ms",
            f"{f['db_p50_ms']:.1f} / {f['db_p99_ms']:.1f} ms",
            f["db_p99_ms"] <= FLUSH_INTERVAL_MS + 50,
        )
    )


def field_rows(
    rows: list[Row], runs: int = FOOTPRINT_RUNS, seconds: float = FOOTPRINT_SECONDS
) -> None:
    """`python -m bench field`: durability full, with write_delay 0 and 2."""
    footprint_rows(rows, "full", runs=runs, seconds=seconds)
    footprint_rows(rows, "full", write_delay=2.0, runs=runs, seconds=seconds)
