"""`python -m bench fleet [N] [SECONDS]`: N gateways against one stock Mosquitto and one TSDB.

Each gateway is a real `gateway run` process with its own id, client id,
topic prefix (``fleet-<id>``), buffer directory and status port, reading
`gateway simulate`'s lines (the same NodeSimulator, without CRC errors, so
every packet carries the firmware's 9 metrics) at 1 packet/s. The generator
numbers what it printed in a file of its own, so "every reading delivered"
is checked against what the sources printed, not against what the gateways
counted.

In the middle of the run the broker restarts (stopped, 5 s down, started on
its port). The gateways reach it through a pass-through relay
(tests.faults.proxy) that refuses connections until the counting subscriber
has subscribed again: otherwise a gateway's replay could reach the broker
before the subscriber and be counted as lost when only the counter missed
it. The broker stays stock: a listener and anonymous access, no
``set_tcp_nodelay``, the default ``max_inflight_messages`` (20).

Reported: readings printed, counted at the subscriber (distinct by topic and
the MQTT 5 ``ts`` property: duplicates within a window are not deliveries)
and in the TSDB; per-gateway CPU % and RSS from /proc; the broker's
``$SYS/broker/clients/connected``; the TSDB's series count; after the
restart, how many gateways reconnected and how long until the last one's
buffer was empty again.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.harness import StockBroker
from tests.faults.proxy import Proxy
from tests.services import Tsdb, free_port, stop_process
from tests.support import base_config, wait_until, write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.md"
METRICS_PER_PACKET = 9
DOWN_S = 5.0  # how long the broker is away
SETTLE_S = 20.0  # after the sources stop: the last deliveries land

# The numbered source: `gateway simulate`'s packets, and the count printed so far.
GENERATOR = r"""
import json, sys, time
from gateway.simulate import NodeSimulator
seed, interval, counter = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
sim = NodeSimulator(seed=seed, crc_error_rate=0.0)
n, next_at = 0, time.monotonic()
while True:
    sys.stdout.write(json.dumps(sim.packet(), separators=(",", ":")) + "\n")
    sys.stdout.flush()
    n += 1
    with open(counter, "w") as f:
        f.write(str(n))
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


@dataclass
class Counter:
    """A subscriber to the broker's client count ($SYS)."""

    port: int
    connected_clients: list[tuple[float, int]] = field(default_factory=list)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Counter:
        """Connect; (re)subscribe on every connect."""
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="fleet-counter", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        return self

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([("$SYS/broker/clients/connected", 0)])

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("$SYS/"):
            self.connected_clients.append((time.monotonic(), int(msg.payload)))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Readings:
    """The counting subscriber: mosquitto_sub (C, so it keeps up with a fleet) into a file.

    It prints each message's topic and MQTT 5 user properties (``ts``, the
    reading's receive time, and ``gw``): distinct lines are distinct readings,
    whatever was sent twice within a window.
    """

    def __init__(self, port: int, path: Path, topics: list[str], name: str) -> None:
        self.port = port
        self.path = path
        self.name = name
        self.out = path.open("wb")
        subscriptions = [a for t in [*topics, f"fleet-probe/{name}/#"] for a in ("-t", t)]
        self.proc = subprocess.Popen(
            [
                *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "5", "-q", "1"),
                *("-i", f"fleet-readings-{name}", *subscriptions, "-F", "%t %P"),
            ],
            stdout=self.out,
            stderr=subprocess.DEVNULL,
        )
        self.probes = 0

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        """Publish a probe until it comes back: the subscription is live (again)."""
        self.probes += 1
        topic = f"fleet-probe/{self.name}/{self.probes}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port), "-t", topic, "-m", "x"]
            subprocess.run(pub, check=False, timeout=10, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            if topic.encode() in self.path.read_bytes():
                return
        raise TimeoutError("the counting subscriber never saw its probe")

    def distinct(self) -> tuple[dict[str, int], int]:
        """Distinct readings per topic prefix, and the messages counted."""
        seen: dict[str, set[bytes]] = defaultdict(set)
        messages = 0
        for line in self.path.read_bytes().splitlines():
            topic = line.split(b" ", 1)[0].decode(errors="replace")
            prefix, group, _ = (topic + "//").split("/", 2)
            if not prefix.startswith("fleet-gw") or group in ("gateway", "alerts"):
                continue
            messages += 1
            seen[prefix].add(line)
        return {p: len(v) for p, v in seen.items()}, messages

    def close(self) -> None:
        stop_process(self.proc)
        self.out.close()


class ShardedReadings:
    """Counting subscribers, each for ``per`` gateways' topics.

    A stock Mosquitto queues at most 1000 messages for a QoS 1 subscriber
    (``max_queued_messages``) and drops the rest. After the restart every
    gateway replays its backlog at once: one subscriber for the whole fleet
    would be sent more than that and lose some, which would count as the
    gateways' loss. A subscriber per few gateways keeps each queue short, on
    the same stock broker.
    """

    def __init__(self, port: int, root: Path, n: int, per: int = 5) -> None:
        self.shards = [
            Readings(
                port,
                root / f"readings-{k}.txt",
                [f"fleet-gw{i:02d}/#" for i in range(first, min(n, first + per - 1) + 1)],
                str(k),
            )
            for k, first in enumerate(range(1, n + 1, per))
        ]

    def wait_subscribed(self, timeout: float = 30.0) -> None:
        """Every shard's subscription is live (again)."""
        for shard in self.shards:
            shard.wait_subscribed(timeout)

    def distinct(self) -> tuple[dict[str, int], int]:
        """Distinct readings per topic prefix over every shard, and the messages counted."""
        per: dict[str, int] = defaultdict(int)
        messages = 0
        for shard in self.shards:
            counts, m = shard.distinct()
            messages += m
            for prefix, count in counts.items():
                per[prefix] += count
        return dict(per), messages

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """CPU seconds and RSS bytes of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def scrape(port: int, name: str) -> float | None:
    """One unlabelled sample of a gateway's /metrics (None: unreachable or absent)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Member:
    """One gateway of the fleet."""

    gid: str
    dir: Path
    status_port: int
    proc: subprocess.Popen[bytes]
    counter_file: Path

    @property
    def prefix(self) -> str:
        return f"fleet-{self.gid}"

    def printed(self) -> int:
        try:
            return int(self.counter_file.read_text() or 0)
        except (OSError, ValueError):
            return 0


def start_member(root: Path, i: int, mqtt_port: int, tsdb_url: str) -> Member:
    """A gateway with its own id, client id, prefix, buffer dir and status port."""
    gid = f"gw{i:02d}"
    d = root / gid
    d.mkdir()
    counter = d / "printed"
    gen = [sys.executable, str(root / "gen.py"), str(i), "1.0", str(counter)]
    cfg = base_config(d, gid, mqtt_port, tsdb_url, gen)
    status_port = free_port()
    cfg["mqtt"].update(
        topic_prefix=f"fleet-{gid}", client_id=f"iiot-gateway-{gid}", backoff_max=2.0
    )
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    cfg["influxdb"]["tags"] = {"gw": gid}
    path = write_config(d / "config.toml", cfg)
    log = open(d / "gateway.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(path)],
        cwd=REPO,
        stdout=log,
        stderr=log,
    )
    return Member(gid, d, status_port, proc, counter)


def tsdb_counts(tsdb: Tsdb) -> tuple[dict[str, int], int]:
    """Samples per gateway (its ``gw`` tag) and the number of series."""
    per: dict[str, int] = defaultdict(int)
    with urllib.request.urlopen(f"{tsdb.url}/internal/force_flush", timeout=10):
        pass
    query = urllib.parse.quote('{gw=~"gw.+"}')
    with urllib.request.urlopen(f"{tsdb.url}/api/v1/export?match[]={query}", timeout=60) as r:
        for line in r.read().splitlines():
            if line.strip():
                series = json.loads(line)
                # Distinct times: a point written twice (a retried request) is one reading.
                per[str(series["metric"].get("gw", ""))] += len(set(series["timestamps"]))
    with urllib.request.urlopen(f"{tsdb.url}/api/v1/series/count", timeout=10) as r:
        series_count = int(json.loads(r.read())["data"][0])
    return per, series_count


def run(n: int = 50, seconds: float = 60.0) -> dict[str, Any]:
    """Run the fleet; return its figures."""
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    (root / "gen.py").write_text(GENERATOR)
    broker = StockBroker(root).start()
    tsdb = Tsdb(root).start()
    relay = Proxy(broker.port).start()
    counter = Counter(broker.port).start()
    readings = ShardedReadings(broker.port, root, n)
    members: list[Member] = []
    out: dict[str, Any] = {"n": n, "seconds": seconds}
    try:
        assert counter.subscribed.wait(10)
        readings.wait_subscribed()
        for i in range(1, n + 1):
            members.append(start_member(root, i, relay.port, tsdb.url))
        started = time.monotonic()
        assert wait_until(lambda: all(m.printed() > 0 for m in members), 120)
        cpu0 = {m.gid: proc_cpu_rss(m.proc.pid)[0] for m in members}
        t0 = time.monotonic()
        out["start_s"] = round(t0 - started, 1)
        time.sleep(seconds / 2)
        # The restart: the relay refuses (and resets) while the broker is away.
        connects_before = {
            m.gid: scrape(m.status_port, "gateway_mqtt_connects_total") for m in members
        }
        relay.set_mode("refuse")
        broker.stop()
        time.sleep(DOWN_S)
        counter.subscribed.clear()
        broker.start()
        assert counter.subscribed.wait(30), "the counter never subscribed again"
        readings.wait_subscribed()
        healed = time.monotonic()
        relay.set_mode("heal")

        def reconnected() -> list[Member]:
            return [
                m
                for m in members
                if (scrape(m.status_port, "gateway_mqtt_connects_total") or 0)
                > (connects_before[m.gid] or 0)
                and scrape(m.status_port, "gateway_mqtt_connected") == 1.0
            ]

        wait_until(lambda: len(reconnected()) == n, 60, interval=0.5)
        out["reconnected"] = len(reconnected())
        out["reconnect_s"] = round(time.monotonic() - healed, 1)
        drained_at: dict[str, float] = {}
        while time.monotonic() - healed < 60 and len(drained_at) < n:
            for m in members:
                if (
                    m.gid not in drained_at
                    and scrape(m.status_port, "gateway_mqtt_buffered_messages") == 0.0
                ):
                    drained_at[m.gid] = time.monotonic() - healed
            time.sleep(0.2)
        out["drained"] = len(drained_at)
        out["drain_last_s"] = round(max(drained_at.values(), default=float("nan")), 1)
        time.sleep(max(0.0, t0 + seconds - time.monotonic()))
        elapsed = time.monotonic() - t0
        stats = {m.gid: proc_cpu_rss(m.proc.pid) for m in members}
        cpu = [100 * (stats[m.gid][0] - cpu0[m.gid]) / elapsed for m in members]
        rss = [stats[m.gid][1] / 2**20 for m in members]
        out["cpu_pct"] = (min(cpu), statistics.median(cpu), max(cpu))
        out["rss_mb"] = (min(rss), statistics.median(rss), max(rss))
        # Mosquitto publishes $SYS every 10 s; the count includes the counter itself.
        after = [c for t, c in counter.connected_clients if t > healed]
        out["broker_clients"] = max(after, default=None)
        # Stop the sources first (SIGTERM: the gateway stops its source, lands
        # its window, says offline), then count.
        for m in members:
            m.proc.terminate()
        for m in members:
            m.proc.wait(30)
        time.sleep(SETTLE_S)  # VictoriaMetrics makes points searchable within seconds
        printed = {m.gid: m.printed() for m in members}
        out["printed_readings"] = sum(printed.values()) * METRICS_PER_PACKET
        delivered, messages = readings.distinct()
        out["subscriber_readings"] = sum(delivered.get(m.prefix, 0) for m in members)
        out["subscriber_messages"] = messages
        per_gw, series = tsdb_counts(tsdb)
        out["tsdb_readings"] = sum(per_gw.get(m.gid, 0) for m in members)
        out["tsdb_series"] = series
        # The source may print a line the gateway never read before it stopped:
        # at most one per gateway, and not a loss (it never reached the gateway).
        out["short_at_subscriber"] = [
            m.gid
            for m in members
            if delivered.get(m.prefix, 0) < (printed[m.gid] - 1) * METRICS_PER_PACKET
        ]
        out["short_in_tsdb"] = [
            m.gid
            for m in members
            if per_gw.get(m.gid, 0) < (printed[m.gid] - 1) * METRICS_PER_PACKET
        ]
        return out
    finally:
        for m in members:
            stop_process(m.proc)
        counter.close()
        readings.close()
        relay.close()
        broker.stop()
        tsdb.stop()


def report(r: dict[str, Any]) -> str:
    """The figures as a Markdown section."""
    lo_med_hi = "{:.1f} / {:.1f} / {:.1f}"
    lines = [
        f"## Fleet: {r['n']} gateways × 1 packet/s for {r['seconds']:.0f} s, one broker restart",
        "",
        "`python -m bench fleet`: stock Mosquitto, one VictoriaMetrics, "
        f"{DOWN_S:.0f} s broker outage in the middle.",
        "",
        "| figure | measured |",
        "|---|---|",
        f"| readings printed by the sources | {r['printed_readings']} |",
        f"| distinct readings at the subscribers (one per 5 gateways) | {r['subscriber_readings']} "
        f"({r['subscriber_messages']} messages) |",
        f"| readings in the TSDB | {r['tsdb_readings']} |",
        f"| gateways short of what their source printed (subscriber / TSDB) | "
        f"{len(r['short_at_subscriber'])} / {len(r['short_in_tsdb'])} |",
        f"| CPU % per gateway (min / median / max) | {lo_med_hi.format(*r['cpu_pct'])} |",
        f"| RSS MB per gateway (min / median / max) | {lo_med_hi.format(*r['rss_mb'])} |",
        f"| broker's $SYS/broker/clients/connected after the restart (max; "
        f"the counting subscriber included) | {r['broker_clients']} |",
        f"| TSDB series | {r['tsdb_series']} |",
        f"| reconnected after the restart | {r['reconnected']} of {r['n']} "
        f"(all within {r['reconnect_s']} s) |",
        f"| buffers empty again after the restart | {r['drained']} of {r['n']}, "
        f"the last {r['drain_last_s']} s after the broker accepted again |",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Run the fleet bench; print the table and append it to bench/results.md."""
    n = int(argv[0]) if argv else 50
    seconds = float(argv[1]) if len(argv) > 1 else 60.0
    r = run(n, seconds)
    text = report(r)
    print(text)
    print(json.dumps(r, default=str))
    if n >= 50:
        with RESULTS.open("a") as f:
            f.write("\n" + text)
    return 0 if not r["short_at_subscriber"] and not r["short_in_tsdb"] else 1
