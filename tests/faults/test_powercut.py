"""Power cuts: the buffer directory on LazyFS, packets flowing, links flapping.

A cut kills `gateway run` (and its source) with SIGKILL and makes LazyFS lose every
byte not yet fsynced: its cache cleared, the LazyFS process itself killed, or LazyFS
made to exit just before a WAL fsync, right after a WAL write, or in the middle of a
run of WAL writes (a torn write). The gateway is then restarted on the same directory.

A packet counts as committed when the source printed it at least ``MARGIN`` seconds
(plus ``write_delay``) before a cut and after that run's start: it must arrive at the
subscriber and in the TSDB once everything has drained. The store must open after
every cut: SQLite's integrity_check of what reached the disk is "ok", no log says
"corrupt", and no ``buffer.corrupt-*`` file appears.

`make test` runs a few cuts per case; `make powercut` (``POWERCUT_CUTS``) many more,
every kind of cut, and prints one table (``POWERCUT_REPORT``, see powercut_table.py).
``durability = "normal"`` may lose data under a cut: its loss is measured and printed,
and only the store's opening is asserted.

Adding a case (e.g. a dead-letter directory that refuses writes): append a
:class:`Case` to ``CASES`` with a ``configure`` hook (edit the config, prepare the
directory) and a ``verify`` hook (assert on the :class:`Outcome`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import STORE_FILE
from tests.faults import lazyfs
from tests.faults.common import (
    TIMED,
    delivered_influx,
    delivered_mqtt,
    duplicates,
    flap,
    gw_running,
    kill_all,
    printed_between,
)
from tests.faults.proxy import Proxy
from tests.support import Subscriber, base_config, buffer_stats, wait_until

CUTS = int(os.environ.get("POWERCUT_CUTS", "0"))  # 0: the short cases of `make test`
REPORT = os.environ.get("POWERCUT_REPORT", "")
RATE = 20.0  # packets/s from the source
MARGIN = 1.0  # s: a packet printed this long before a cut was committed
WAL = f"{STORE_FILE}-wal"
CORRUPT_MARKERS = ("is corrupt", "moving it aside")

CRASH_BEFORE_FSYNC = f"lazyfs::crash::timing=before::op=fsync::from_rgx=.*{WAL}"
CRASH_AFTER_WRITE = f"lazyfs::crash::timing=after::op=write::from_rgx=.*{WAL}"
# Of the first run of two or more WAL writes between fsyncs, only the write numbered
# here reaches the disk, and LazyFS exits after the second. LazyFS arms the fault for
# that first run only: a number beyond its length never fires (one commit of the
# gateway can be as short as two writes).
TORN_PERSIST = ("1", "2")


@dataclass(frozen=True)
class Case:
    """One way to run the gateway under cuts.

    Attributes:
        name: the row in `make powercut`'s table.
        cuts: the kinds of cut, used in turn (see :func:`cut`).
        short_cuts: cuts in `make test`; 0 runs the case only under `make powercut`.
        gateway: keys for the config's ``[gateway]`` table.
        must_keep: assert that no committed packet is lost (False: only measure).
        configure: called with the config and the test's directory before the first run.
        verify: called with the outcome after the drain.
    """

    name: str
    cuts: tuple[str, ...]
    short_cuts: int = 0
    gateway: dict[str, Any] = field(default_factory=dict)
    must_keep: bool = True
    configure: Callable[[dict[str, dict[str, Any]], Path], None] | None = None
    verify: Callable[[Outcome], None] | None = None

    @property
    def write_delay(self) -> float:
        return float(self.gateway.get("write_delay", 0.0))


@dataclass
class Outcome:
    """What a case's cuts did, for its assertions and the table."""

    case: str
    cuts: int = 0
    committed: set[int] = field(default_factory=set)
    mqtt: list[int] = field(default_factory=list)
    influx: list[int] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    corrupt_logs: int = 0
    corrupt_files: int = 0
    crash_faults_missed: int = 0

    @property
    def lost_mqtt(self) -> set[int]:
        return self.committed - set(self.mqtt)

    @property
    def lost_influx(self) -> set[int]:
        return self.committed - set(self.influx)

    @property
    def corrupt_stores(self) -> int:
        bad_checks = sum(1 for result in self.integrity if result != "ok")
        return max(bad_checks, self.corrupt_logs, self.corrupt_files)

    def figures(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "cuts": self.cuts,
            "committed": len(self.committed),
            "lost_mqtt": len(self.lost_mqtt),
            "lost_influx": len(self.lost_influx),
            "duplicates_mqtt": duplicates(self.mqtt),
            "duplicates_influx": duplicates(self.influx),
            "corrupt_stores": self.corrupt_stores,
            "crash_faults_missed": self.crash_faults_missed,
        }


FULL_CUTS = ("clear-cache", "kill-lazyfs")
CASES = [
    Case("full: kill + clear cache / LazyFS killed", FULL_CUTS, short_cuts=4),
    Case("full: crash before WAL fsync", ("crash-before-fsync",)),
    Case("full: crash after WAL write", ("crash-after-write",)),
    Case("full: torn WAL writes", ("torn-write",)),
    Case(
        "full, write_delay = 2",
        (*FULL_CUTS, "crash-before-fsync"),
        short_cuts=3,
        gateway={"write_delay": 2.0},
    ),
    Case("normal", FULL_CUTS, short_cuts=3, gateway={"durability": "normal"}, must_keep=False),
]


@pytest.fixture(scope="session")
def lazyfs_binary() -> Path:
    """LazyFS built from source (cached in the checkout's .run/)."""
    if not lazyfs.FUSE_DEVICE.exists():
        pytest.skip(f"{lazyfs.FUSE_DEVICE} is missing: no FUSE here, so no LazyFS")
    return lazyfs.build()


@pytest.fixture
def fs(lazyfs_binary: Path, tmp_path: Path) -> Iterator[lazyfs.LazyFS]:
    """A LazyFS mount for this test's buffer directory."""
    mount = lazyfs.LazyFS(lazyfs_binary, tmp_path / "lazyfs").mount()
    yield mount
    mount.unmount()


def cut(kind: str, gw, fs: lazyfs.LazyFS, rng: random.Random, outcome: Outcome) -> float:  # type: ignore[no-untyped-def]
    """Cut the power one way; return when (unix time) it was cut, at the latest.

    LazyFS is mounted again on return, holding only what reached the disk.
    """
    cut_at = time.time()
    if kind == "clear-cache":
        kill_all(gw)
        fs.clear_cache()
        return cut_at
    if kind == "kill-lazyfs":
        fs.kill()  # the disk first: the gateway may go on writing into the void
        kill_all(gw)
        fs.mount()
        return cut_at
    if kind == "crash-before-fsync":
        fs.command(CRASH_BEFORE_FSYNC)
    elif kind == "crash-after-write":
        fs.command(CRASH_AFTER_WRITE)
    elif kind == "torn-write":
        wal = fs.backing / "buffer" / WAL
        fs.command(f"lazyfs::torn-seq::op=write::file={wal}::persist={rng.choice(TORN_PERSIST)}")
    else:
        raise ValueError(kind)
    # The fault fires at the next matching WAL operation: the time the command was
    # sent is the earliest possible cut, so the check below is on the safe side.
    if not fs.wait_exited(10):
        outcome.crash_faults_missed += 1  # nothing written to the WAL: cut anyway
    fs.kill()
    kill_all(gw)
    fs.mount()
    return cut_at


def integrity_on_disk(backing: Path, scratch: Path) -> str:
    """integrity_check of the store as the disk holds it (on a copy: the test writes nothing)."""
    src = backing / "buffer"
    if not (src / STORE_FILE).exists():
        return "ok"  # cut before the store existed
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for name in (STORE_FILE, WAL):
        if (src / name).exists():
            shutil.copyfile(src / name, scratch / name)
    con = sqlite3.connect(scratch / STORE_FILE, isolation_level=None)
    try:
        row = con.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"error: {exc}"
    finally:
        con.close()
    return str(row[0]) if row else "no result"


def report(outcome: Outcome) -> None:
    figures = outcome.figures()
    print(f"power-cut figures: {figures}")
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps(figures) + "\n")


def params() -> list[Any]:
    out = []
    for case in CASES:
        marks = []
        if not CUTS and not case.short_cuts:
            marks.append(pytest.mark.skip(reason="long power-cut case: `make powercut`"))
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


@pytest.mark.parametrize("case", params())
def test_power_cuts_lose_nothing_committed(
    case: Case,
    fs: lazyfs.LazyFS,
    tmp_path: Path,
    broker,
    tsdb,
    test_id,
    gateway_factory,
    record_property,
) -> None:
    cuts = CUTS or case.short_cuts
    rng = random.Random(f"{case.name}-{cuts}")
    mqtt_proxy = Proxy(broker.port).start()
    tsdb_proxy = Proxy(int(tsdb.url.rsplit(":", 1)[1])).start()
    script = tmp_path / "timed.py"
    script.write_text(TIMED)
    state = tmp_path / "state"
    cfg = base_config(
        tmp_path,
        test_id,
        mqtt_proxy.port,
        f"http://127.0.0.1:{tsdb_proxy.port}",
        [sys.executable, str(script), str(state), "10000000", str(RATE)],
    )
    buffer_dir = fs.mnt / "buffer"
    cfg["gateway"]["buffer_dir"] = str(buffer_dir)
    cfg["gateway"].update(case.gateway)
    cfg["mqtt"]["buffer_max_messages"] = 1_000_000  # nothing may be dropped here
    cfg["influxdb"]["buffer_max_points"] = 1_000_000
    if case.configure is not None:
        case.configure(cfg, tmp_path)
    keep_after = MARGIN + case.write_delay
    outcome = Outcome(case.name, cuts)
    sub = Subscriber(broker.port, f"{test_id}/#")
    logs: list[str] = []
    try:
        for i in range(cuts):
            kind = case.cuts[i % len(case.cuts)]
            for proxy in (mqtt_proxy, tsdb_proxy):
                proxy.set_mode(rng.choice(["heal", "heal", "refuse"]))
            started_at = time.time()
            gw = gateway_factory(cfg)
            assert wait_until(gw_running(gw), 30), gw.log_text()[-3000:]
            flap(rng, [mqtt_proxy, tsdb_proxy], rng.uniform(1.5, 4.0) + keep_after)
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            cut_at = cut(kind, gw, fs, rng, outcome)
            logs.append(gw.log_text())
            outcome.committed |= printed_between(state, started_at, cut_at - keep_after)
            outcome.integrity.append(integrity_on_disk(fs.backing, tmp_path / "copy"))

        # Heal, and let a last run with a silent source drain everything.
        mqtt_proxy.set_mode("heal")
        tsdb_proxy.set_mode("heal")
        silent = [sys.executable, "-c", "import time; time.sleep(3600)"]
        gw = gateway_factory({**cfg, "source": {**cfg["source"], "command": silent}})

        def arrived() -> bool:
            return outcome.committed <= set(delivered_mqtt(sub)) and outcome.committed <= (
                delivered_influx(tsdb, test_id)
            )

        def drained() -> bool:
            stats = buffer_stats(buffer_dir)
            return stats["mqtt"]["records"] == 0 and stats["influx"]["records"] == 0

        assert wait_until(lambda: arrived() or drained(), 180, 1.0), gw.log_text()[-3000:]
        assert wait_until(drained, 120, 1.0), gw.log_text()[-3000:]
        wait_until(arrived, 5)  # the last deliveries on their way to the subscriber
        assert wait_until(gw_running(gw), 30)  # SIGTERM handled from here
        assert gw.terminate() == 0
        logs.append(gw.log_text())
    finally:
        sub.close()
        mqtt_proxy.close()
        tsdb_proxy.close()
    outcome.mqtt = delivered_mqtt(sub)
    outcome.influx = sorted(
        int(float(v)) for name, _, _, v, _ in tsdb.points(testid=test_id) if name == "n"
    )
    outcome.corrupt_logs = sum(1 for log in logs if any(m in log for m in CORRUPT_MARKERS))
    outcome.corrupt_files = len(list((fs.backing / "buffer").glob("buffer.corrupt-*")))
    record_property("figures", outcome.figures())
    report(outcome)

    assert outcome.committed, "no packet was committed long enough before a cut"
    assert outcome.integrity == ["ok"] * cuts, outcome.integrity
    assert outcome.corrupt_logs == 0
    assert outcome.corrupt_files == 0
    if case.must_keep:
        assert not outcome.lost_mqtt, sorted(outcome.lost_mqtt)[:20]
        assert not outcome.lost_influx, sorted(outcome.lost_influx)[:20]
    if case.verify is not None:
        case.verify(outcome)
