"""What tests and the benchmarks share: configs, a subscriber, waits, scripted HTTP.

Library code only: no fixtures and no hooks (those live in tests/conftest.py).
bench/ imports this module too; neither tests nor bench import each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# The example line of DESIGN.md ("Line protocol (firmware → gateway), v1").
DESIGN_EXAMPLE = (
    b'{"v":1,"seq":42,"uptime_ms":420113,'
    b'"node1":{"temperature":26.7,"humidity":55.4,"gas_resistance":101169},'
    b'"node2":{"temperature":24.3,"pressure":1013.25},'
    b'"signal":{"rssi":-33,"snr":13},'
    b'"stats":{"packets_received":42,"crc_errors":0}}'
)

# A child that prints three numbered packets (continuing from a state file)
# and exits with code 3: a probe-rs that keeps losing the target.
CHUNKY_CHILD = """
import json, os, sys
state = sys.argv[1]
n = int(open(state).read()) if os.path.exists(state) else 0
for _ in range(3):
    n += 1
    print(json.dumps({"v": 1, "seq": n, "a": {"n": n}}), flush=True)
open(state, "w").write(str(n))
sys.exit(3)
"""


def toml_value(value: Any) -> str:
    """Render a Python value as TOML (enough for test configs)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: a list of them is an array of tables
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a config file from nested dicts (one level of sub-tables)."""
    lines: list[str] = []
    for name, table in sections.items():
        subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if k not in subtables]
        for sub, subtable in subtables.items():
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in subtable.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def base_config(
    tmp_path: Path, test_id: str, mqtt_port: int, influx_url: str, command: list[str]
) -> dict[str, dict[str, Any]]:
    """A config for one test: its own prefix, tag, buffer dir and client id."""
    return {
        # stats_interval 0: no gateway self-stats points among the test's data.
        # clock_sync "none": these machines' kernels report the clock unsynchronised
        # although it is right; only the clock tests are about the clock.
        "gateway": {
            "id": test_id,
            "buffer_dir": str(tmp_path / "buffer"),
            "stats_interval": 0.0,
            "clock_sync": "none",
        },
        "source": {
            "kind": "command",
            "command": command,
            "stall_timeout": 0.0,
            "restart_initial": 0.2,
            "restart_max": 2.0,
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "client_id": f"gw-{test_id}",
            "topic_prefix": test_id,
            "backoff_initial": 0.2,
            "backoff_max": 1.0,
            "keepalive": 5,
        },
        "influxdb": {
            "url": influx_url,
            "org": "test",
            "bucket": "test",
            "backoff_initial": 0.2,
            "backoff_max": 1.0,
            "tags": {"testid": test_id},
        },
        "status": {"listen": ""},
    }


class GatewayProcess:
    """`gateway run` as a child process, with its log captured to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "--log-level",
                "debug",
                "run",
                "--config",
                str(config),
            ],
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


class Subscriber:
    """An independent MQTT subscriber (mosquitto_sub) recording `topic payload` lines."""

    def __init__(self, port: int, topic: str, *, retained_only: bool = False) -> None:
        argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-v", "-q", "1"]
        argv += getattr(self, "extra", [])
        if retained_only:
            argv.append("--retained-only")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._probe = topic.rstrip("#") + "_probe"
        if not retained_only:
            self._wait_subscribed(port)

    def _wait_subscribed(self, port: int) -> None:
        # Publish probes until one comes back: then the subscription is live.
        for _ in range(100):
            subprocess.run(
                [
                    *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port)),
                    *("-t", self._probe, "-m", "x", *getattr(self, "extra", [])),
                ],
                check=False,
                timeout=10,
            )
            if self.wait_for(lambda msgs: any(t == self._probe for t, _ in msgs), 0.2):
                with self._lock:
                    self.messages = [m for m in self.messages if m[0] != self._probe]
                return
        raise TimeoutError("subscriber never saw its probe")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            topic, _, payload = raw.decode().rstrip("\n").partition(" ")
            with self._lock:
                self.messages.append((topic, payload))

    def wait_for(self, predicate: Callable[[list[tuple[str, str]]], bool], timeout: float) -> bool:
        """Poll until ``predicate(messages)`` holds (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.05)
        return False

    def snapshot(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def retained(port: int, topic: str, timeout: float = 15.0) -> dict[str, str]:
    """The retained value of every topic matching ``topic``: what the broker holds now.

    No fixed wait: a sentinel ends it. The subscriber also subscribes to a
    probe topic of its own, and a non-retained probe is published there until
    it arrives. The broker sends a subscription's retained messages when it
    subscribes, so they all come before any probe published after that, and
    ``mosquitto_sub --retained-only`` exits on the first message that is not
    retained: the probe. ``timeout`` only bounds a broker that never answers.
    """
    probe = f"_probe/{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [
            *("mosquitto_sub", "-h", "127.0.0.1", "-p", str(port)),
            *("-t", topic, "-t", probe, "-v", "-q", "1", "--retained-only"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sentinel from the broker on port {port} within {timeout} s")
            pub = ("mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", probe, "-m", "x")
            subprocess.run(pub, check=False, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
        out = proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kept: dict[str, str] = {}
    for line in out.splitlines():
        name, _, payload = line.partition(" ")
        if name != probe:
            kept[name] = payload
    return kept


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def gateway_cli(*args: str) -> str:
    """Run ``gateway ARGS`` from the tree (60 s at most) and return what it printed."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return out.stdout.decode()


def buffer_stats(buffer_dir: Path) -> dict[str, Any]:
    """`gateway buffer stats --json` for a buffer dir."""
    return dict(
        json.loads(gateway_cli("buffer", "stats", "--json", "--buffer-dir", str(buffer_dir)))
    )
