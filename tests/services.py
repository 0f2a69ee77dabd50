"""Real servers for tests: Mosquitto brokers and VictoriaMetrics, each on a free port.

VictoriaMetrics stands in for InfluxDB 2: it accepts ``/api/v2/write`` line
protocol from influxdb-client and lets us read every sample back through
``/api/v1/export``.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def _mosquitto() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def stop_process(
    proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15
) -> None:
    """Send ``sig`` to a running process; SIGKILL it if it is not gone in ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Broker:
    """A private Mosquitto that a test can stop and start again on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_conf: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        """Start (or restart) the broker and wait until it listens."""
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 0\n" + self.extra_conf
        )
        log = open(self.workdir / f"mosquitto-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([_mosquitto(), "-c", str(conf)], stdout=log, stderr=log)
        wait_listening(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGKILL for a crash)."""
        stop_process(self.proc, sig, timeout=10)
        self.proc = None


@dataclass
class Tsdb:
    """A VictoriaMetrics server accepting InfluxDB line protocol."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Tsdb:
        """Start the server and wait until it answers /health."""
        data = self.workdir / f"vm-{self.port}"
        log = open(self.workdir / f"vm-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={data}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server."""
        stop_process(self.proc)
        self.proc = None

    def export(self, **labels: str) -> list[dict[str, object]]:
        """Every series whose labels match, as VictoriaMetrics' JSON-lines export."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        query = urllib.parse.quote(f'{{__name__=~".+",{selector}}}')
        with urllib.request.urlopen(f"{self.url}/api/v1/export?match[]={query}", timeout=10) as r:
            return [json.loads(line) for line in r.read().splitlines() if line.strip()]

    def points(self, **labels: str) -> list[tuple[str, str, str, float, int]]:
        """Flattened samples: (measurement, node, unit, value, timestamp_ms)."""
        out = []
        for series in self.export(**labels):
            metric = series["metric"]
            assert isinstance(metric, dict)
            name = str(metric["__name__"]).removesuffix("_value")
            for value, ts in zip(series["values"], series["timestamps"], strict=False):  # type: ignore[call-overload]
                out.append((name, metric.get("node", ""), metric.get("unit", ""), value, ts))
        return out
