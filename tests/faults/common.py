"""Helpers for the fault suite: a numbered packet source and delivery checks."""

from __future__ import annotations

from collections.abc import Iterable

# Prints packets numbered from (state file + 1) to N at a steady rate, records
# progress, then idles like an attached probe-rs. Each packet has one metric,
# `a/n` = n, so a delivered message or point names the packet it came from.
NUMBERED = """
import json, os, sys, time
state, total, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n = int(open(state).read() or 0) if os.path.exists(state) else 0
while n < total:
    n += 1
    sys.stdout.write(json.dumps({"v": 1, "seq": n, "a": {"n": n}}) + "\\n")
    sys.stdout.flush()
    with open(state + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(state + ".tmp", state)
    time.sleep(1 / rate)
time.sleep(3600)
"""


def numbers(payloads: Iterable[str]) -> list[int]:
    """Packet numbers from MQTT payloads or point values."""
    return [int(float(p)) for p in payloads]


def duplicates(seq: list[int]) -> int:
    """How many deliveries were repeats."""
    return len(seq) - len(set(seq))


def fifo_violations(seq: list[int]) -> int:
    """Deliveries of a number lower than one already seen, excluding replays of a
    window (a replay restarts from an older record and then moves forward)."""
    seen: set[int] = set()
    bad = 0
    for n in seq:
        if n not in seen and seen and n < max(seen):
            bad += 1  # a new record overtook an older one
        seen.add(n)
    return bad
