"""The source stage: supervised child, restarts, stall watchdog, serial, file."""

from __future__ import annotations

import errno
import json
import os
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.config.sections import SourceSection
from gateway.metrics import Metrics
from gateway.source import Source, open_serial
from tests.support import CHUNKY_CHILD


class Collector:
    """An on_lines handler that keeps every line."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.stamps: list[int] = []

    async def __call__(self, lines: list[bytes]) -> None:
        received_ns = time.time_ns()
        self.lines += lines
        self.stamps.append(received_ns)


def source(collector: Collector, **kw: object) -> Source:
    defaults: dict[str, object] = {
        "stall_timeout": 0.0,
        "restart_initial": 0.05,
        "restart_max": 0.2,
    }
    return Source(SourceSection(**{**defaults, **kw}), collector, Metrics())  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` every 20 ms until it holds (tests bound this with fail_after)."""
    while True:
        if predicate():
            return
        await trio.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_missing_program_is_retried_with_exact_backoff(
    autojump_clock: trio.testing.MockClock,
):
    collector = Collector()
    src = source(
        collector, command=("/nonexistent/probe-rs",), restart_initial=0.5, restart_max=4.0
    )
    src.backoff._jitter = lambda ceiling: ceiling  # the upper bound, for exact times
    attempts: list[float] = []

    async def spawn(argv: list[str], **kwargs: object) -> trio.Process:
        # Spawning runs in a thread, which virtual time cannot wait for; fail
        # the way open_process does for a missing program.
        attempts.append(trio.current_time())
        raise FileNotFoundError(2, "No such file or directory")

    src.spawn = spawn
    with trio.move_on_after(20):
        await src.run()
    # Attempts at 0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5: doubling up to the cap.
    assert attempts == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5]
    assert src.restarts == {"failed_to_start": 8}
    assert src.metrics.source_restarts.get("failed_to_start") == 8


async def test_child_exiting_every_few_packets_is_restarted_and_nothing_lost(tmp_path: Path):
    script = tmp_path / "chunky.py"
    script.write_text(CHUNKY_CHILD)
    collector = Collector()
    src = source(collector, command=(sys.executable, str(script), str(tmp_path / "n")))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            await until(lambda: len(collector.lines) >= 15)
            nursery.cancel_scope.cancel()
    seqs = [json.loads(line)["seq"] for line in collector.lines]
    assert seqs[:15] == list(range(1, 16))  # each packet once, in order
    assert src.restarts["exit_code_3"] >= 4
    assert set(src.restarts) == {"exit_code_3"}


CLOSES_STDOUT = """
import os, sys, time
print('{"v":1,"a":{"n":1}}', flush=True)
os.close(1)   # a probe-rs whose RTT pipe broke: no more output, still running
time.sleep(3600)
"""


async def test_child_that_closes_stdout_is_counted_as_that(tmp_path: Path):
    script = tmp_path / "closes.py"
    script.write_text(CLOSES_STDOUT)
    collector = Collector()
    src = source(collector, command=(sys.executable, str(script)))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            await until(lambda: src.restarts.get("stdout_closed", 0) >= 1)
            nursery.cancel_scope.cancel()
    assert set(src.restarts) == {"stdout_closed"}  # not signal_2, the SIGINT we sent


async def test_cr_only_line_endings_are_lines(tmp_path: Path):
    """A terminal-style stream ending lines with a lone CR delivers at once."""
    script = tmp_path / "cr.py"
    script.write_text(
        "import sys, time\n"
        'sys.stdout.write(\'{"v":1,"a":{"n":1}}\\r{"v":1,"a":{"n":2}}\\r\')\n'
        "sys.stdout.flush()\n"
        "time.sleep(3600)\n"
    )
    collector = Collector()
    src = source(collector, command=(sys.executable, str(script)))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            await until(lambda: len(collector.lines) >= 2)
            nursery.cancel_scope.cancel()
    assert [json.loads(line)["a"]["n"] for line in collector.lines if line] == [1, 2]


SILENT = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)   # a wedged probe-rs: only SIGKILL works
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
print('{"v":1,"node2":{"pressure":1000.0}}', flush=True)
time.sleep(3600)
"""


async def test_silent_child_is_killed_with_its_group_and_restarted(tmp_path: Path):
    script = tmp_path / "silent.py"
    script.write_text(SILENT)
    pids = tmp_path / "pids"
    collector = Collector()
    src = source(
        collector,
        command=(sys.executable, str(script), str(pids)),
        stall_timeout=1.0,
        restart_initial=5.0,
        restart_max=5.0,
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            await until(lambda: bool(src.restarts))
            nursery.cancel_scope.cancel()
        assert src.restarts == {"stalled": 1}
        assert collector.lines == [b'{"v":1,"node2":{"pressure":1000.0}}']
        leader, grandchild = map(int, pids.read_text().split())
        assert not pid_alive(leader)
        # The SIGKILL went to the whole group at once, but a loaded machine may
        # take a moment to finish off the grandchild: it must die, not linger.
        await until(lambda: not pid_alive(grandchild))


async def test_serial_port_vanishing_and_returning(tmp_path: Path):
    link = tmp_path / "ttyACM0"  # like /dev/serial/by-id/…: a link that comes and goes

    def plug() -> int:
        master, slave = os.openpty()
        link.symlink_to(os.ttyname(slave))
        os.close(slave)
        return master

    collector = Collector()
    src = source(collector, kind="serial", port=str(link), baud=115200)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            # Not plugged in yet: retried.
            await until(lambda: src.restarts.get("device_missing", 0) >= 2)
            master = plug()
            await until(lambda: src.state == "running")
            os.write(master, b'{"v":1,"seq":1,"node2":{"pressure":1000.5}}\r\n')
            await until(lambda: len(collector.lines) >= 1)
            # Unplugged: the reader sees EIO, the link disappears.
            os.close(master)
            link.unlink()
            await until(lambda: "device_lost" in src.restarts or "device_closed" in src.restarts)
            master = plug()
            await until(lambda: src.state == "running")
            os.write(master, b'{"v":1,"seq":2,"node2":{"pressure":1000.6}}\n')
            await until(lambda: len(collector.lines) >= 2)
            nursery.cancel_scope.cancel()
    os.close(master)
    assert collector.lines == [
        b'{"v":1,"seq":1,"node2":{"pressure":1000.5}}',
        b'{"v":1,"seq":2,"node2":{"pressure":1000.6}}',
    ]


def test_open_serial_sets_raw_8n1_and_locks_the_device_against_a_second_reader(
    tmp_path: Path,
):
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        fd = open_serial(name, 115200)
        try:
            iflag, _oflag, cflag, lflag, ispeed, ospeed, _ = termios.tcgetattr(fd)
            assert (ispeed, ospeed) == (termios.B115200, termios.B115200)
            assert cflag & termios.CSIZE == termios.CS8
            assert not cflag & (termios.PARENB | termios.CSTOPB | termios.CRTSCTS)
            assert not lflag & (termios.ICANON | termios.ECHO)  # raw: lines as sent
            assert not iflag & (termios.IXON | termios.ICRNL)
            # A second reader (another gateway, a terminal) is refused while we hold it.
            with pytest.raises(OSError, match="lock"):
                os.close(open_serial(name, 115200))
            os.write(master, b"line\n")
            assert os.read(fd, 100) == b"line\n"
        finally:
            os.close(fd)
        os.close(open_serial(name, 115200))  # released with our descriptor
    finally:
        os.close(slave)
        os.close(master)


def test_open_serial_refuses_a_file_that_is_not_a_terminal(tmp_path: Path):
    plain = tmp_path / "ttyUSB0"
    plain.write_bytes(b"")
    with pytest.raises(OSError, match="configure port") as caught:
        open_serial(str(plain), 115200)
    assert caught.value.errno == errno.ENOTTY
    with pytest.raises(OSError, match="could not open port") as missing:
        open_serial(str(tmp_path / "absent"), 115200)
    assert missing.value.errno == errno.ENOENT


async def test_file_replay_at_a_rate(tmp_path: Path, autojump_clock: trio.testing.MockClock):
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(b"".join(b'{"v":1,"seq":%d,"a":{"b":1}}\n' % i for i in range(5)))
    collector = Collector()
    src = source(collector, kind="file", path=str(capture), rate=2.0)
    await src.run()
    assert len(collector.lines) == 5
    assert trio.current_time() == pytest.approx(2.0)  # 5 lines at 2/s: 0, .5, 1, 1.5, 2
