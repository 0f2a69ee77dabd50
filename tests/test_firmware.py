"""Node 2 firmware: host unit tests, both ELFs, and the emulated board's output
checked against the line protocol (v1), heartbeats included."""

import itertools
import json
import re
import select
import subprocess
import time
from pathlib import Path

from gateway.telemetry import SequenceTracker, parse_line

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
BUILD = FIRMWARE / "build"
NUCLEO_ELF = BUILD / "nucleo-f446re" / "node2.elf"
QEMU_ELF = BUILD / "qemu-netduinoplus2" / "node2.elf"
# The emulated board, continuously, one line per second: the documented
# `source.command` for running the gateway on the QEMU firmware.
QEMU_COMMAND = [
    *("qemu-system-arm", "-M", "netduinoplus2", "-display", "none", "-monitor", "none"),
    *("-serial", "stdio", "-icount", "shift=auto", "-kernel", str(QEMU_ELF)),
]
LINES = 20
QEMU_LINES_ELF = BUILD / f"qemu-netduinoplus2-lines{LINES}" / "node2.elf"
# The quiet-radio builds: the simulated Node 1 sends QUIET_FRAMES frames and
# falls silent; a heartbeat after every QUIET_HEARTBEAT_S s of silence.
QUIET_FRAMES, QUIET_HEARTBEAT_S, QUIET_LINES = 8, 2, 12
QUIET = f"quiet{QUIET_FRAMES}-hb{QUIET_HEARTBEAT_S}-lines{QUIET_LINES}"
QUIET_VARS = (
    f"QUIET_FRAMES={QUIET_FRAMES}",
    f"QUIET_HEARTBEAT_S={QUIET_HEARTBEAT_S}",
    f"QUIET_LINES={QUIET_LINES}",
)
QEMU_QUIET_ELF = BUILD / f"qemu-netduinoplus2-{QUIET}" / "node2.elf"
HOST_QUIET_APP = BUILD / "host" / f"node2_host_{QUIET}"
TEXT_LIMIT = 64 * 1024
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
GROUP_METRICS = {
    "node1": {"temperature", "humidity", "gas_resistance"},
    "node2": {"temperature", "pressure"},
    "signal": {"rssi", "snr"},
    "stats": {"packets_received", "crc_errors"},
}


def make(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(FIRMWARE), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def build(*targets: str) -> None:
    result = make(*targets)
    assert result.returncode == 0, result.stdout + result.stderr


def check_generic(obj: dict) -> None:
    """Any line: an object with v=1, an integer seq, groups of numbers."""
    assert isinstance(obj, dict)
    assert obj["v"] == 1
    assert isinstance(obj["seq"], int)
    assert obj["seq"] >= 0
    for name, value in obj.items():
        assert NAME.match(name), name
        if isinstance(value, dict):
            assert set(value) == GROUP_METRICS[name], (name, value)
            for metric, number in value.items():
                assert NAME.match(metric), metric
                assert isinstance(number, (int, float))
                assert not isinstance(number, bool)
        else:
            assert name in {"v", "seq", "uptime_ms"}, name
            assert isinstance(value, int)


def check_node2_line(obj: dict) -> None:
    """A line of the running firmware: full metadata, stats and signal always;
    node1/node2 when present have plausible simulated values."""
    check_generic(obj)
    assert isinstance(obj["uptime_ms"], int)
    assert "stats" in obj
    assert "signal" in obj
    assert set(obj) <= {"v", "seq", "uptime_ms", "node1", "node2", "signal", "stats"}
    if "node1" in obj:
        n1 = obj["node1"]
        assert 20 <= n1["temperature"] <= 28
        assert 40 <= n1["humidity"] <= 60
        assert 50_000 <= n1["gas_resistance"] <= 150_000
        assert isinstance(n1["gas_resistance"], int)
    if "node2" in obj:
        check_node2_group(obj["node2"])
    assert -150 <= obj["signal"]["rssi"] <= 0
    assert -30 <= obj["signal"]["snr"] <= 30


def check_node2_group(n2: dict) -> None:
    assert 15 <= n2["temperature"] <= 35
    assert 950 <= n2["pressure"] <= 1050


def check_heartbeat_line(obj: dict) -> None:
    """A heartbeat: Node 2's own reading and stats, no node1, no signal."""
    check_generic(obj)
    assert set(obj) == {"v", "seq", "uptime_ms", "node2", "stats"}, obj
    check_node2_group(obj["node2"])


def check_quiet_run(lines: list[str]) -> list[dict]:
    """QUIET_FRAMES packet lines, then heartbeats: seq counts every line,
    the stats stay those of the last packet, each heartbeat at least
    QUIET_HEARTBEAT_S after the line before it (guest time)."""
    objs = [json.loads(line) for line in lines]
    assert len(objs) == QUIET_LINES
    assert [o["seq"] for o in objs] == list(range(1, QUIET_LINES + 1))
    packets, beats = objs[:QUIET_FRAMES], objs[QUIET_FRAMES:]
    for obj in packets:
        check_node2_line(obj)
    check_sequence(packets, QUIET_FRAMES)
    for obj in beats:
        check_heartbeat_line(obj)
        assert obj["stats"] == packets[-1]["stats"]
    uptimes = [o["uptime_ms"] for o in objs[QUIET_FRAMES - 1 :]]
    gaps = [b - a for a, b in itertools.pairwise(uptimes)]
    assert all(gap >= QUIET_HEARTBEAT_S * 1000 for gap in gaps), uptimes
    # The gateway takes every line as a packet and sees no gap and no reset.
    tracker = SequenceTracker()
    for line in lines:
        parsed = parse_line(line.encode())
        assert parsed is not None, line
        assert parsed.packet is not None, (line, parsed)
        assert tracker.observe(parsed.packet) == (0, False), line
    return objs


def check_sequence(objs: list[dict], count: int) -> None:
    assert [o["seq"] for o in objs] == list(range(1, count + 1))
    prev_ok = prev_bad = 0
    for o in objs:
        ok = o["stats"]["packets_received"]
        bad = o["stats"]["crc_errors"]
        assert ok + bad == o["seq"]  # one line per received packet
        if "node1" in o:
            assert (ok, bad) == (prev_ok + 1, prev_bad)
        else:
            assert (ok, bad) == (prev_ok, prev_bad + 1)
        prev_ok, prev_bad = ok, bad
    assert objs[-1]["stats"]["packets_received"] > objs[0]["stats"]["packets_received"]
    assert objs[-1]["stats"]["crc_errors"] > 0
    uptimes = [o["uptime_ms"] for o in objs]
    assert uptimes == sorted(uptimes)


def test_host_unit_tests_pass():
    result = make("test")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checks passed" in result.stdout


def test_both_elfs_build_and_nucleo_fits():
    build("all")
    assert NUCLEO_ELF.is_file()
    assert QEMU_ELF.is_file()
    out = subprocess.run(
        ["arm-none-eabi-size", str(NUCLEO_ELF), str(QEMU_ELF)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].split()[:3] == ["text", "data", "bss"]
    sizes = {Path(line.split()[5]).parent.name: int(line.split()[0]) for line in out[1:]}
    assert 0 < sizes["nucleo-f446re"] <= TEXT_LIMIT, sizes
    assert sizes["qemu-netduinoplus2"] > 0, sizes


def test_formatter_lines_are_valid_json():
    build("build/host/print_lines")
    out = subprocess.run(
        [str(BUILD / "host" / "print_lines")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    lines = out.splitlines()
    assert len(lines) > 1000
    seen_groups = set()
    for line in lines:
        obj = json.loads(line)
        check_generic(obj)
        seen_groups.update(k for k, v in obj.items() if isinstance(v, dict))
    assert seen_groups == set(GROUP_METRICS)
    assert '"temperature":-0.05' in out
    assert "-0.-" not in out


def test_host_build_of_the_application():
    build("build/host/node2_host")
    out = subprocess.run(
        [str(BUILD / "host" / "node2_host")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    objs = [json.loads(line) for line in out.splitlines()]
    assert len(objs) == 300
    for obj in objs:
        check_node2_line(obj)
    check_sequence(objs, 300)
    assert any("node2" not in o for o in objs)  # simulated BMP280 brown-out
    assert sum("node2" in o for o in objs) > 250


def test_qemu_emits_lines_and_exits():
    build(str(QEMU_LINES_ELF.relative_to(FIRMWARE)), "build/host/node2_host")
    cmd = [
        "timeout",
        "-k",
        "5",
        "60",
        "make",
        "-s",
        "--no-print-directory",
        "-C",
        str(FIRMWARE),
        "qemu-test",
        f"LINES={LINES}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == LINES, result.stdout
    objs = [json.loads(line) for line in lines]
    for obj in objs:
        check_node2_line(obj)
    check_sequence(objs, LINES)
    assert [o["uptime_ms"] for o in objs] == [1000 * (i + 1) for i in range(LINES)]
    # the same application code on the host gives the same lines
    host = subprocess.run(
        [str(BUILD / "host" / "node2_host")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert lines == host[:LINES]


def run_host_quiet() -> list[str]:
    build(str(HOST_QUIET_APP.relative_to(FIRMWARE)), *QUIET_VARS)
    out = subprocess.run(
        [str(HOST_QUIET_APP)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return out.splitlines()


def test_host_build_writes_heartbeats_when_the_radio_goes_quiet():
    objs = check_quiet_run(run_host_quiet())
    # The host clock is virtual: the heartbeats come exactly one period
    # after the last frame and after each other.
    period = QUIET_HEARTBEAT_S * 1000
    last_frame = objs[QUIET_FRAMES - 1]["uptime_ms"]
    assert [o["uptime_ms"] for o in objs[QUIET_FRAMES:]] == [
        last_frame + period * (i + 1) for i in range(QUIET_LINES - QUIET_FRAMES)
    ]


def test_qemu_writes_heartbeats_when_the_radio_goes_quiet():
    build(str(QEMU_QUIET_ELF.relative_to(FIRMWARE)), *QUIET_VARS)
    cmd = ["timeout", "-k", "5", "60", "make", "-s", "--no-print-directory", "-C"]
    result = subprocess.run(
        [*cmd, str(FIRMWARE), "qemu-quiet-test", *QUIET_VARS],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    check_quiet_run(lines)
    # the same application code on the host gives the same lines
    assert lines == run_host_quiet()


def test_qemu_continuous_run_paces_lines_in_real_time():
    """The command documented for the gateway's source.command."""
    build("build/qemu-netduinoplus2/node2.elf")
    argv = QEMU_COMMAND
    proc = subprocess.Popen(
        ["timeout", "-k", "5", "30", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    start = time.monotonic()
    stamps, buf = [], b""
    try:
        while len(stamps) < 3 and time.monotonic() - start < 15:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if not ready:
                continue
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                check_node2_line(json.loads(line))
                stamps.append(time.monotonic() - start)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert len(stamps) == 3, stamps
    # about one line per second, not a burst and not a crawl
    assert stamps[0] < 5
    assert 0.5 < stamps[2] - stamps[0] < 4.0, stamps
