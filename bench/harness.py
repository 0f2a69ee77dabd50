"""What every benchmark stands on: a run's servers and gateway, the load, the counting.

Each benchmark starts its own Mosquitto and VictoriaMetrics (tests.services),
runs the real `gateway run` process and measures it from outside: /proc, the
status port's /metrics, and an independent subscriber (:class:`Counter`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tests.services import Broker, Tsdb, free_port, stop_process, wait_listening
from tests.support import base_config, write_config

REPO = Path(__file__).resolve().parent.parent
SUBSCRIBE_TIMEOUT = 30.0  # s for a Counter's SUBACK: a broker that never answers

# A generator child: `rate` packets/s of the firmware's 9 metrics; `count` 0 =
# forever, else exit after `count` packets. With a third argument, it appends
# "<packets_received> <send time, ms>" per packet to that file: the latency
# probe is the packet's own stats/packets_received (unique per packet, the 8th
# of its 9 messages), so the gateway carries exactly what the firmware sends.
GENERATOR = r"""
import json, sys, time
from gateway.simulate import NodeSimulator
rate, count = float(sys.argv[1]), int(sys.argv[2])
sent = open(sys.argv[3], "a") if len(sys.argv) > 3 else None
sim = NodeSimulator(seed=1, crc_error_rate=0.0)
out = sys.stdout
n = 0
next_at = time.monotonic()
while count == 0 or n < count:
    obj = sim.packet()
    now_ms = time.time() * 1000.0
    out.write(json.dumps(obj, separators=(",", ":")) + "\n")
    out.flush()
    if sent is not None:
        sent.write(f"{obj['stats']['packets_received']} {now_ms}\n")
        sent.flush()
    n += 1
    if rate > 0:
        next_at += 1.0 / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
"""
PROBE = "stats/packets_received"  # the topic / measurement that carries the probe


def sent_times(path: Path) -> dict[int, float]:
    """The generator's send times (ms) by packets_received."""
    if not path.exists():
        return {}
    return {int(n): float(ms) for n, ms in (line.split() for line in path.read_text().splitlines())}


def latencies(sent: dict[int, float], arrived: dict[int, float]) -> list[float]:
    """Send → arrival (ms) for every probe that arrived, sorted."""
    return sorted(arrived[n] - sent[n] for n in arrived if n in sent)


class Counter:
    """An independent paho subscriber counting messages and noting when probes arrive."""

    def __init__(self, port: int, prefix: str, qos: int = 1) -> None:
        self.count = 0
        self.arrived_ms: dict[int, float] = {}
        self.first_at: float | None = None
        self.last_at: float | None = None
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{prefix}/#", qos=qos)
        self.client.loop_start()
        # Counting starts with the SUBACK: the broker sends on from then on.
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT):
            self.close()
            raise TimeoutError(f"no SUBACK from the broker on port {port}")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if msg.topic.endswith("/gateway/status"):
            return
        with self._lock:
            self.count += 1
            self.first_at = self.first_at or time.monotonic()
            self.last_at = time.monotonic()
            if msg.topic.endswith("/" + PROBE):
                self.arrived_ms.setdefault(int(float(msg.payload)), now * 1000.0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds, RSS bytes and bytes written of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {
        "cpu_s": (int(stat[11]) + int(stat[12])) / ticks,
        "rss": rss,
        "write_bytes": int(io["write_bytes"]),
    }


class Run:
    """Servers + one gateway process in a fresh directory."""

    def __init__(self, name: str, broker: type[Broker] = Broker) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.broker = broker(self.dir)
        self.tsdb = Tsdb(self.dir)
        self.status_port = free_port()
        self.prefix = f"b{name}"
        self.gw: subprocess.Popen[bytes] | None = None
        (self.dir / "gen.py").write_text(GENERATOR)

    def config(self, command: list[str], **overrides: dict[str, Any]) -> Path:
        cfg = base_config(self.dir, self.prefix, self.broker.port, self.tsdb.url, command)
        cfg["mqtt"]["topic_prefix"] = self.prefix
        cfg["status"] = {"listen": f"127.0.0.1:{self.status_port}"}
        for section, values in overrides.items():
            cfg.setdefault(section, {}).update(values)
        return write_config(self.dir / "config.toml", cfg)

    def generator(self, rate: float, count: int = 0, sent: Path | None = None) -> list[str]:
        argv = [sys.executable, str(self.dir / "gen.py"), str(rate), str(count)]
        return argv + ([str(sent)] if sent is not None else [])

    def start_gateway(self, config: Path) -> subprocess.Popen[bytes]:
        log = open(self.dir / "gateway.log", "ab")  # noqa: SIM115
        self.gw = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO,
            stdout=log,
            stderr=log,
        )
        return self.gw

    def close(self) -> None:
        stop_process(self.gw)
        self.broker.stop()
        self.tsdb.stop()


@dataclass
class StockBroker(Broker):
    """Mosquitto as a distribution installs it: a listener and anonymous access only.

    (Plus ``extra_conf``, for the one row that turns Nagle off.) No
    ``set_tcp_nodelay`` (its PUBACKs wait behind Nagle) and no tuning of
    ``max_inflight_messages`` or ``max_queued_messages``: the broker the
    gateway meets in the field, unlike the tests' tuned one.
    """

    def start(self) -> StockBroker:
        """Start the broker and wait until it listens."""
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{self.extra_conf}")
        log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=log)
        wait_listening(self.port)
        return self


class Relay:
    """A :class:`~tests.faults.slowlink.SlowLink` in a process of its own.

    Starting it is the link healing (connections are refused until then), so
    a subscriber can be in place before the first message goes. ``delay`` is
    added in each direction: 0.025 is a 50 ms round trip, 0 a plain relay on
    loopback (the same path, minus the delay).
    """

    def __init__(self, target: int, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Relay:
        argv = [str(self.port), str(self.target), str(self.delay)]
        relay = [sys.executable, "-m", "tests.faults.slowlink", *argv]
        self.proc = subprocess.Popen(relay, cwd=REPO)
        wait_listening(self.port)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
