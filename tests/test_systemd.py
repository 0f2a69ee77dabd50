"""sd_notify against a real AF_UNIX datagram socket, the watchdog ("wedged"), the unit file."""

from __future__ import annotations

import configparser
import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import trio
from trio_util import AsyncValue

from gateway.metrics import Metrics
from gateway.systemd import notify, watchdog, watchdog_interval
from tests.services import free_port
from tests.support import GatewayProcess, base_config, wait_until

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


async def test_watchdog_feeds_unless_a_sink_is_wedged(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    received: list[tuple[float, str]] = []
    ping_count = AsyncValue(0)
    metrics = Metrics()  # no packet ever: the source is silent throughout
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}  # ping every 0.05 s
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        await server.bind(path)

        async def listen() -> None:
            while True:
                received.append((time.monotonic(), (await server.recv(4096)).decode()))
                if received[-1][1] == "WATCHDOG=1":
                    ping_count.value += 1

        def pings_since(t: float) -> int:
            return sum(1 for at, msg in received if msg == "WATCHDOG=1" and at >= t)

        async def pings_arrive() -> None:
            target = ping_count.value + 3
            await ping_count.wait_value(lambda n: n >= target)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                scope = trio.CancelScope()

                async def run_watchdog(task_status: trio.TaskStatus[None]) -> None:
                    with scope:
                        await watchdog(metrics, 0.5, environ=env, task_status=task_status)

                await nursery.start(run_watchdog)
                # A silent source, long past unhealthy_after: still fed.
                await trio.sleep(0.8)
                assert received[0][1] == "READY=1"
                await pings_arrive()
                # MQTT connected with a backlog that never moves: wedged, starving.
                mq = metrics.mqtt
                mq.connected = True
                mq.set_backlog(5, now=time.monotonic() - 10.0)
                await trio.sleep(0.1)  # a ping already on its way may still land
                quiet_from = time.monotonic()
                await trio.sleep(0.5)
                assert pings_since(quiet_from) == 0
                # It delivers again: fed again.
                mq.note_delivery(5, 0)
                await pings_arrive()
                scope.cancel()
                await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
    assert received[-1][1] == "STOPPING=1"


SILENT_CHILD = "import time; time.sleep(3600)"  # Node 2 or the probe gone: not a line


def test_a_silent_source_and_servers_that_are_down_never_starve_the_watchdog(
    tmp_path: Path, test_id: str, gateway_factory: Callable[..., GatewayProcess]
) -> None:
    """``gateway run`` under a fake systemd for over five watchdog intervals."""
    interval = 1.5  # WATCHDOG_USEC / 2: what the daemon pings at
    deadline = 2 * interval  # what systemd would wait before killing it
    cfg = base_config(
        tmp_path,
        test_id,
        free_port(),  # no broker: MQTT is down throughout
        f"http://127.0.0.1:{free_port()}",  # no database: every write refused
        [sys.executable, "-c", SILENT_CHILD],
    )
    cfg["status"]["unhealthy_after"] = 0.5  # the old rule would starve it after 0.5 s
    sock_path = tmp_path / "notify.sock"
    received: list[tuple[float, str]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(sock_path))
        server.settimeout(0.2)
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                try:
                    data = server.recv(4096)
                except TimeoutError:
                    continue
                received.append((time.monotonic(), data.decode()))

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": str(int(deadline * 1e6))}
        gw = gateway_factory(cfg, env)
        try:

            def pings() -> list[float]:
                ready = [at for at, msg in received if msg == "READY=1"]
                return [at for at, msg in received if msg == "WATCHDOG=1" and ready]

            assert wait_until(lambda: len(pings()) >= 6, 60), gw.log_text()
            assert gw.alive(), gw.log_text()
        finally:
            code = gw.terminate()
            stop.set()
            listener.join(5)
    assert code == 0, gw.log_text()
    messages = [msg for _, msg in received]
    assert messages[0] == "READY=1"
    assert messages[-1] == "STOPPING=1"
    ready_at = received[0][0]
    times = [ready_at, *pings()]
    # Fed throughout: never a gap systemd would have killed it for.
    assert max(b - a for a, b in itertools.pairwise(times)) < deadline, times
    log = gw.log_text()
    assert "not feeding the systemd watchdog" not in log
    assert "mqtt:" in log  # the broker really was down


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
