"""gateway.simulate: the hardware-free Node 2 speaks the line protocol, plausibly."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from gateway import simulate
from gateway.config.sections import DEFAULT_PLAUSIBILITY
from gateway.telemetry import Packet, check_plausibility, parse_line

REPO = Path(__file__).resolve().parent.parent


def simulated(count: int, seed: int) -> list[Packet]:
    out = io.StringIO()
    assert simulate.run(interval=0, count=count, seed=seed, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == count
    packets = []
    for line in lines:
        parsed = parse_line(line.encode())
        assert parsed is not None
        assert parsed.packet is not None, parsed
        assert parsed.rejected == []
        packets.append(parsed.packet)
    return packets


def test_lines_parse_into_plausible_values() -> None:
    packets = simulated(50, seed=1)
    for packet in packets:
        kept, implausible = check_plausibility(packet, DEFAULT_PLAUSIBILITY)
        assert implausible == []
        assert kept is packet
        assert {"node2", "signal", "stats"} <= set(packet.groups)


def test_counters_add_up() -> None:
    previous_received = 0
    for index, packet in enumerate(simulated(50, seed=1), start=1):
        stats = packet.groups["stats"]
        assert packet.meta["seq"] == index
        assert stats["packets_received"] + stats["crc_errors"] == packet.meta["seq"]
        # A frame that failed its CRC carries no node1 values.
        received_one = stats["packets_received"] == previous_received + 1
        assert ("node1" in packet.groups) == received_one
        previous_received = int(stats["packets_received"])


def test_same_seed_same_values() -> None:
    first = [p.groups for p in simulated(50, seed=1)]
    assert first == [p.groups for p in simulated(50, seed=1)]
    assert first != [p.groups for p in simulated(50, seed=2)]


def test_simulate_command_prints_lines() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "simulate", "--count", "3", "--interval", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    for line in lines:
        parsed = parse_line(line.encode())
        assert parsed is not None
        assert parsed.packet is not None
