"""What tests and the benchmarks share: configs, a subscriber, waits, scripted HTTP.

Library code only: no fixtures and no hooks (those live in tests/conftest.py).
bench/ imports this module too; neither tests nor bench import each other.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._probe = topic.rstrip("#") + "_probe"
        if not retained_only:
            self._wait_subscribed(port)

    def _wait_subscribed(self, port: int) -> None:
        # The first probe that comes back: the subscription is live.
        if not self.flush():
            raise TimeoutError("subscriber never saw its probe")

    def flush(self, timeout: float = 20.0) -> bool:
        """Publish probes until one comes back: a sentinel behind what the broker holds.

        The broker forwards to this subscriber in the order it took messages
        in, so once a probe published now arrives, every message the broker
        had taken before it has arrived too. Call it when no more may come
        (the publisher gone): then the messages are all there is. The probes
        are left out of :attr:`messages`. False if none came back in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            subprocess.run(
                [
                    *("mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port)),
                    *("-t", self._probe, "-m", "x", *getattr(self, "extra", [])),
                ],
                check=False,
                timeout=10,
            )
            if self.wait_for(lambda msgs: any(t == self._probe for t, _ in msgs), 0.2):
                with self._lock:
                    self.messages = [m for m in self.messages if m[0] != self._probe]
                return True
        return False

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


# -- a scripted HTTP server -----------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One request a :class:`StubHttp` answered."""

    method: str
    target: str  # as in the request line: the path and the query
    path: str  # without the query
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes  # as sent (gzip included)

    @property
    def content(self) -> bytes:
        """The body, gunzipped if it came with ``Content-Encoding: gzip``."""
        if self.headers.get("content-encoding") == "gzip":
            return gzip.decompress(self.body)
        return self.body

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of the (gunzipped) body: a line-protocol write's points."""
        return [line for line in self.content.decode().split("\n") if line]


# status, headers, body; Content-Length is added.
HttpResponse = tuple[int, dict[str, str], bytes]
HttpRoute = Callable[[HttpRequest], HttpResponse]


def json_response(status: int, doc: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    """A JSON answer (an empty body for ``doc`` None)."""
    body = b"" if doc is None else json.dumps(doc).encode()
    return status, {"Content-Type": "application/json", **(headers or {})}, body


class StubHttp:
    """A scripted HTTP server on a free port of 127.0.0.1, served from a thread.

    ``routes`` maps a path (without the query) to a callable that answers it;
    ``"*"`` answers any path without a route of its own; anything else is 404.
    Routes may be replaced while it runs. Every answered request is kept in
    ``log`` with its status. ``keep_alive`` speaks HTTP/1.1 with persistent
    connections (as a real server); by default each answer closes its connection.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, routes: dict[str, HttpRoute], *, keep_alive: bool = False) -> None:
        self.routes = routes
        self.log: list[tuple[HttpRequest, int]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_GET(self) -> None:
                stub._answer(self)

            do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _answer(self, h: http.server.BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        url = urllib.parse.urlsplit(h.path)
        request = HttpRequest(
            method=h.command,
            target=h.path,
            path=url.path,
            query=dict(urllib.parse.parse_qsl(url.query)),
            headers={k.lower(): v for k, v in h.headers.items()},
            body=h.rfile.read(length) if length else b"",
        )
        route = self.routes.get(url.path) or self.routes.get("*")
        status, headers, body = route(request) if route else (404, {}, b"")
        with self._lock:
            self.log.append((request, status))
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def requests(self) -> list[HttpRequest]:
        """Every request answered so far, in order."""
        with self._lock:
            return [r for r, _ in self.log]

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def __enter__(self) -> StubHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
