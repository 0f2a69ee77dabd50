"""Helpers for the fault suite: numbered sources, delivery checks, kills, flapping links."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.buffer import STORE_FILE, BufferStore, Record
from gateway.records import split_record
from tests.faults.proxy import Proxy
from tests.support import Subscriber

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


def on_disk(store: BufferStore, name: str) -> list[Record]:
    """Every record waiting in buffer ``name`` (the store was just opened: all on disk)."""
    buf = store.buffers[name]
    return store.read_sync(buf, buf.head, buf.tail)


def committed_after_kill(buffer_dir: Path) -> tuple[set[int], set[int], list[str]]:
    """Numbers waiting in each buffer, and the store's integrity_check result."""
    waiting: dict[str, set[int]] = {"mqtt": set(), "influx": set()}
    checks: list[str] = []
    if not (buffer_dir / STORE_FILE).exists():
        return waiting["mqtt"], waiting["influx"], checks
    store = BufferStore(buffer_dir, {"mqtt": 10**9, "influx": 10**9}, ack_delay=0)
    try:
        checks.append(store.file.integrity_check())
        assert not store.corrupt_moved, "the buffer store was corrupt after kill -9"
        waiting["mqtt"] = {int(split_record(r.value)[2]) for r in on_disk(store, "mqtt")}
        waiting["influx"] = {
            int(float(r.value.split("value=")[1].split()[0])) for r in on_disk(store, "influx")
        }
    finally:
        store.close()
    return waiting["mqtt"], waiting["influx"], checks


# Like NUMBERED, and logs when each packet was printed ("<n> <unix time>").
TIMED = NUMBERED.replace(
    '    os.replace(state + ".tmp", state)\n',
    '    os.replace(state + ".tmp", state)\n'
    '    with open(state + ".times", "a") as f:\n'
    '        f.write(f"{n} {time.time()}\\n")\n',
)


def printed_between(state: Path, start: float, end: float) -> set[int]:
    """Packets the source printed between ``start`` and ``end`` (unix times).

    Lines printed just before an earlier kill that were still in the pipe were
    never committed: only a run's own lines are checked after its kill.
    """
    times = Path(f"{state}.times")
    if not times.exists():
        return set()
    out = set()
    for line in times.read_text().splitlines():
        n, _, at = line.partition(" ")
        if at and start <= float(at) < end:
            out.add(int(n))
    return out


def delivered_mqtt(sub: Subscriber) -> list[int]:
    return numbers(p for t, p in sub.snapshot() if t.endswith("/a/n"))


def delivered_influx(tsdb, test_id: str) -> set[int]:  # type: ignore[no-untyped-def]
    return set(numbers(str(v) for name, _, _, v, _ in tsdb.points(testid=test_id) if name == "n"))


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_all(gw) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the gateway and its source at once, as a power cut would."""
    for pid in [gw.proc.pid, *descendants(gw.proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    gw.proc.wait()
    gw.kill()


def gw_running(gw) -> Callable[[], bool]:  # type: ignore[no-untyped-def]
    """A condition: the gateway says it is running (its stages are up)."""
    return lambda: "running:" in gw.log_text()


def flap(rng: random.Random, proxies: list[Proxy], seconds: float) -> None:
    """Switch each link up or down at random moments for ``seconds``."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, rng.uniform(0.3, 1.2)))
        rng.choice(proxies).set_mode(rng.choice(["heal", "heal", "refuse"]))
