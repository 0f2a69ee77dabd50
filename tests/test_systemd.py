"""sd_notify against a real AF_UNIX datagram socket, the watchdog, and the unit file."""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import trio

from gateway.metrics import Metrics
from gateway.systemd import notify, watchdog, watchdog_interval

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "ops" / "iiot-gateway.service"


def test_notify_to_a_filesystem_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        assert notify("READY=1", environ={"NOTIFY_SOCKET": path})
        assert server.recv(4096) == b"READY=1"


def test_notify_to_an_abstract_socket() -> None:
    name = f"iiot-gateway-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(b"\0" + name.encode())
        server.settimeout(5)
        assert notify("STATUS=replaying\nWATCHDOG=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"STATUS=replaying\nWATCHDOG=1"


def test_notify_without_systemd_does_nothing(tmp_path: Path) -> None:
    assert notify("READY=1", environ={}) is False
    # A socket that went away is logged, never raised.
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "120000000"}) == 60.0
    own = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(own) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


async def test_watchdog_without_notify_socket_returns() -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog, Metrics(), 1.0)


async def test_watchdog_feeds_only_while_progressing(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    received: list[tuple[float, str]] = []
    metrics = Metrics()  # no sinks busy yet; the packet clock is moved by hand
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # ping every 0.05 s
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        await server.bind(path)

        async def listen() -> None:
            while True:
                received.append((time.monotonic(), (await server.recv(4096)).decode()))

        def pings_since(t: float) -> int:
            return sum(1 for at, msg in received if msg == "WATCHDOG=1" and at >= t)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                scope = trio.CancelScope()

                async def run_watchdog(task_status: trio.TaskStatus[None]) -> None:
                    with scope:
                        await watchdog(metrics, 0.5, environ=env, task_status=task_status)

                await nursery.start(run_watchdog)
                # Start-up grace: fed before any packet.
                await trio.sleep(0.3)
                assert received[0][1] == "READY=1"
                assert pings_since(0) >= 2
                # No packet past unhealthy_after: starving.
                await trio.sleep(0.5)
                quiet_from = time.monotonic()
                await trio.sleep(0.5)
                assert pings_since(quiet_from) == 0
                # Packets again: fed again.
                metrics.last_packet_at = time.monotonic()
                resumed = time.monotonic()
                await trio.sleep(0.3)
                assert pings_since(resumed) >= 2
                scope.cancel()
                await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
    assert received[-1][1] == "STOPPING=1"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_file_says_what_the_daemon_needs() -> None:
    service = unit()["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "120",
        "Restart": "always",
        "RestartSec": "5",
        "User": "iiot-gateway",
        "DynamicUser": "no",
        "StateDirectory": "iiot-gateway",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "SupplementaryGroups": "dialout plugdev",
        "KillSignal": "SIGTERM",
        "TimeoutStopSec": "15",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert service["ExecStart"].split() == [
        "/opt/iiot-gateway/venv/bin/gateway",
        "run",
        "--config",
        "/etc/iiot-gateway/config.toml",
        "--buffer-dir",
        "/var/lib/iiot-gateway",
    ]
    families = service["RestrictAddressFamilies"].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    # The serial port must stay reachable: no PrivateDevices.
    assert service.get("PrivateDevices", "no") == "no"


def test_unit_file_lets_the_daemon_read_but_not_set_the_clock() -> None:
    """adjtimex() must answer (gateway/clock.py), clock setting must stay impossible."""
    service = unit()["Service"]
    # ProtectClock=yes denies all of @clock, even a read-only adjtimex(): EPERM.
    assert service.get("ProtectClock", "no") == "no"
    # Every SystemCallFilter= line counts (they merge); configparser keeps the last.
    filters = [
        line.partition("=")[2].split()
        for line in UNIT.read_text().splitlines()
        if line.startswith("SystemCallFilter=")
    ]
    allowed = {name for names in filters for name in names}
    assert "@system-service" in allowed
    # glibc's adjtimex() is clock_adjtime(CLOCK_REALTIME); clock_adjtime64 on 32-bit ARM.
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= allowed
    assert not any(name.startswith("~") for names in filters for name in names)
    assert "@clock" not in allowed
    # No CAP_SYS_TIME: those calls can only read.
    assert service["CapabilityBoundingSet"] == ""
    assert service["AmbientCapabilities"] == ""


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Nothing to verify with: the key checks above still ran.
        test_unit_file_says_what_the_daemon_needs()
        return
    # verify insists the ExecStart binary exists: point it at a stub under tmp.
    stub = tmp_path / "opt/iiot-gateway/venv/bin/gateway"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = UNIT.read_text().replace("ExecStart=/opt/", f"ExecStart={tmp_path}/opt/")
    copy = tmp_path / "iiot-gateway.service"
    copy.write_text(text)
    out = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown keys are only warnings (exit 0): any output is a finding.
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
