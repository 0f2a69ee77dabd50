"""The daemon never freezes: a read that overflows a buffer, servers that stall.

Each test runs `gateway run` as a process and keeps asking it for /healthz
while it works: a daemon whose event loop spins or blocks stops answering.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from gateway.records import packet_records
from gateway.telemetry import parse_line
from tests.services import free_port
from tests.support import REPO, Subscriber, base_config, wait_until


def _capture(path: Path, count: int) -> list[str]:
    """Write a simulator capture; return the MQTT `topic payload` of every record in order."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "simulate", "--interval", "0", "--count", str(count)],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    path.write_bytes(out)
    records: list[str] = []
    for line in out.splitlines():
        parsed = parse_line(line, 1)
        assert parsed is not None
        assert parsed.packet is not None
        records += [r.split(" ", 1)[1] for r in packet_records(parsed.packet, "P", "1")]
    return records


# A fault's duration: how long the request has been dripping when the signal comes.
DRIPPING_S = 3.0


class HealthProbe:
    """Asks /healthz every 0.2 s from a thread; records how long each answer took."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/healthz"
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as r:
                    r.read()
            except urllib.error.HTTPError as exc:  # a 503 is an answer too
                exc.read()
            except (OSError, urllib.error.URLError) as exc:
                if self.latencies:  # refused before the server is up is fine
                    self.failures.append(repr(exc))
                time.sleep(0.2)
                continue
            self.latencies.append(time.monotonic() - start)
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_replay_overflowing_the_buffer_never_freezes(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """3,000 packets in one read against the default 1,000-message bound.

    Before the fix the MQTT sink spun on an empty peek without a checkpoint:
    100 % CPU, no /healthz, SIGTERM ignored.
    """
    records = _capture(tmp_path / "cap.jsonl", 3000)
    status_port = free_port()
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["unused"])
    cfg["source"] = {"kind": "file", "path": str(tmp_path / "cap.jsonl"), "rate": 0.0}
    cfg["mqtt"].pop("buffer_max_messages", None)  # the default bound, 1000
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    probe = HealthProbe(status_port)
    try:
        expected_tail = [r.replace("P/", f"{test_id}/", 1) for r in records[-1000:]]
        wanted = {tuple(r.split(" ", 1)) for r in expected_tail}

        def newest_arrived() -> bool:
            got = {m for m in sub.snapshot() if not m[0].endswith("/gateway/status")}
            return wanted <= got

        assert wait_until(newest_arrived, 90), "the newest 1,000 messages never arrived"
        assert wait_until(lambda: len(probe.latencies) >= 5, 30)
    finally:
        probe.stop()
        sub.close()
    assert gw.alive()

    # Every message is either published or dropped, never both (nor neither).
    def counters() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith(("gateway_mqtt_published_total", "gateway_mqtt_dropped_total"))
        }

    assert wait_until(lambda: sum(counters().values()) >= len(records), 30), counters()
    assert sum(counters().values()) == len(records), counters()
    start = time.monotonic()
    code = gw.terminate(timeout=30)
    took = time.monotonic() - start
    print(
        f"\nfreeze figures: /healthz answered {len(probe.latencies)} times, "
        f"slowest {max(probe.latencies):.3f} s; SIGTERM → exit in {took:.2f} s"
    )
    assert code == 0, gw.log_text()[-3000:]
    assert not probe.failures, probe.failures[:3]
    assert "dropped the" in gw.log_text()  # the overflow was counted and said


class SlowServer:
    """An HTTP server that accepts, then sends its answer one byte every 2 s."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        body = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        with conn:
            conn.settimeout(1)
            for byte in body:
                if self._stop.is_set():
                    return
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(2)

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_sigterm_ends_the_daemon_while_the_database_drips(
    tmp_path: Path, broker, test_id, gateway_factory
) -> None:
    """A database answering one byte every 2 s: each read is within the timeout, the request
    never ends. SIGTERM must still end the daemon within its grace (exit 0), and a second
    signal at once."""
    slow = SlowServer()
    try:
        cfg = base_config(
            tmp_path,
            test_id,
            broker.port,
            f"http://127.0.0.1:{slow.port}",
            [sys.executable, "-m", "gateway", "simulate", "--interval", "0.2"],
        )
        cfg["influxdb"]["timeout"] = 30.0
        gw = gateway_factory(cfg)
        assert wait_until(lambda: slow.accepted >= 1, 30), gw.log_text()[-2000:]
        time.sleep(DRIPPING_S)  # the request is now well inside its dripping response
        start = time.monotonic()
        code = gw.terminate(timeout=40)
        took = time.monotonic() - start
        print(f"\nSIGTERM with a dripping database: exit {code} in {took:.2f} s")
        assert code == 0, gw.log_text()[-3000:]
        # The unit's TimeoutStopSec is 15 s; the documented bound is the 5 s grace.
        assert took < 15, f"shutdown took {took:.1f} s"

        gw2 = gateway_factory(cfg)
        assert wait_until(lambda: slow.accepted >= 2, 30), gw2.log_text()[-2000:]
        time.sleep(DRIPPING_S)
        gw2.proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # kill timing: the second signal while the first is being handled
        gw2.proc.send_signal(signal.SIGINT)
        code2 = gw2.proc.wait(timeout=40)
        log2 = gw2.log_text()
        assert code2 == 0, log2[-3000:]
        assert "Traceback" not in log2, log2[-3000:]
    finally:
        slow.close()


def test_sighup_is_logged_and_the_daemon_keeps_running(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg = base_config(
        tmp_path,
        test_id,
        broker.port,
        tsdb.url,
        [sys.executable, "-m", "gateway", "simulate", "--interval", "0.2"],
    )
    sub = Subscriber(broker.port, f"{test_id}/#")
    try:
        gw = gateway_factory(cfg)
        assert wait_until(lambda: "running:" in gw.log_text(), 30), gw.log_text()[-2000:]
        gw.proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "SIGHUP" in gw.log_text(), 10), gw.log_text()[-2000:]
        n = len(sub.snapshot())
        assert wait_until(lambda: len(sub.snapshot()) > n + 9, 30), "no data after SIGHUP"
        assert gw.alive()
        assert gw.terminate() == 0
    finally:
        sub.close()
