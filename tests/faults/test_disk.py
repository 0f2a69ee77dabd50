"""The buffer directory at its worst: a corrupt store, a read-only mount, a full disk.

The gateway starts anyway, keeps delivering live data, says so loudly, and
resumes writing by itself when the disk has room again.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buffer import STORE_FILE
from tests.faults.common import NUMBERED, numbers
from tests.support import Subscriber, base_config, buffer_stats, wait_until


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs to fill up (needs root, as in CI)."""
    assert os.geteuid() == 0, "the disk-full tests mount a tmpfs and need root"
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def numbered_config(tmp_path: Path, test_id: str, broker, tsdb, rate: float = 20) -> dict:
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    return base_config(
        tmp_path,
        test_id,
        broker.port,
        tsdb.url,
        [sys.executable, str(script), str(tmp_path / "state"), "100000", str(rate)],
    )


def fill(path: Path) -> None:
    """Write ``path`` until the file system has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 65536, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)


def delivered(sub: Subscriber) -> list[int]:
    return numbers(p for t, p in sub.snapshot() if t.endswith("/a/n"))


@pytest.mark.parametrize("damage", ["random_bytes", "truncated"])
def test_corrupt_buffer_is_moved_aside_and_live_data_flows(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, damage
) -> None:
    cfg = numbered_config(tmp_path, test_id, broker, tsdb)
    buffer_dir = tmp_path / "buffer"
    # A first run creates real stores ...
    gw = gateway_factory(cfg)
    assert wait_until(lambda: (buffer_dir / STORE_FILE).exists(), 30)
    assert gw.terminate() == 0
    # ... which then get damaged.
    db = buffer_dir / STORE_FILE
    for leftover in buffer_dir.glob(f"{STORE_FILE}-*"):
        leftover.unlink()
    if damage == "random_bytes":
        db.write_bytes(os.urandom(64 * 1024))
    else:
        with open(db, "r+b") as f:
            f.truncate(1000)
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    try:
        before = len(delivered(sub))
        assert sub.wait_for(lambda m: len(delivered(sub)) > before + 20, 30), gw.log_text()
    finally:
        assert gw.terminate() == 0
        sub.close()
    log = gw.log_text()
    assert "is corrupt" in log
    assert list(buffer_dir.glob("buffer.corrupt-*.db"))
    assert buffer_stats(buffer_dir)["mqtt"]["records"] >= 0  # the new store opens


def test_read_only_buffer_dir_keeps_delivering_from_memory(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    assert os.geteuid() == 0, "mounts a read-only tmpfs; needs root"
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        cfg = numbered_config(tmp_path, test_id, broker, tsdb)
        cfg["gateway"]["buffer_dir"] = str(ro / "buffer")
        sub = Subscriber(broker.port, f"{test_id}/#")
        gw = gateway_factory(cfg)
        try:
            assert sub.wait_for(lambda m: len(delivered(sub)) > 40, 30), gw.log_text()
            assert wait_until(lambda: len(tsdb.points(testid=test_id)) > 40, 30)
            assert gw.alive()
        finally:
            assert gw.terminate() == 0
            sub.close()
        assert "IN MEMORY ONLY" in gw.log_text()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_disk_full_then_space_returns(
    tmp_path: Path, small_tmpfs: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg = numbered_config(tmp_path, test_id, broker, tsdb, rate=50)
    buffer_dir = small_tmpfs / "buffer"
    cfg["gateway"]["buffer_dir"] = str(buffer_dir)
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(cfg)
    filler = small_tmpfs / "filler"
    try:
        assert sub.wait_for(lambda m: len(delivered(sub)) > 20, 30), gw.log_text()
        # Fill the disk to the last byte.
        fill(filler)
        assert wait_until(lambda: "held in memory" in gw.log_text(), 30), gw.log_text()[-3000:]
        # Live delivery goes on while the disk is full.
        during = len(delivered(sub))
        assert sub.wait_for(lambda m: len(delivered(sub)) > during + 50, 30)
        assert gw.alive()
        # Space returns: writes resume by themselves.
        filler.unlink()
        # The first write after that puts what was held in memory on disk (records keep coming).
        assert wait_until(lambda: "on disk now" in gw.log_text(), 30), gw.log_text()[-3000:]
        mark = len(gw.log_text())
        assert wait_until(lambda: len(delivered(sub)) > during + 150, 30)
        assert "held in memory" not in gw.log_text()[mark:] or wait_until(
            lambda: "writable again" in gw.log_text() or "on disk now" in gw.log_text(), 10
        )
        state = int((tmp_path / "state").read_text())
        assert sub.wait_for(lambda m: set(range(1, state + 1)) <= set(delivered(sub)), 30)
    finally:
        assert gw.terminate() == 0
        sub.close()
    assert "Traceback" not in gw.log_text()


def test_deleted_store_is_recreated_with_everything_it_held(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """An operator's `rm buffer.db*` while the broker is down: nothing is lost.

    Before, SQLite went on writing to the unlinked file: no error, /healthz 200,
    exit 0, and the whole backlog gone at the next start.
    """
    cfg = numbered_config(tmp_path, test_id, broker, tsdb, rate=50)
    buffer_dir = tmp_path / "buffer"
    broker.stop()
    gw = gateway_factory(cfg)
    assert wait_until(lambda: (tmp_path / "state").exists(), 30), gw.log_text()
    assert wait_until(lambda: int((tmp_path / "state").read_text() or 0) > 100, 30)
    for path in buffer_dir.glob(f"{STORE_FILE}*"):
        path.unlink()
    assert wait_until(lambda: "was deleted or replaced while open" in gw.log_text(), 30)
    printed = int((tmp_path / "state").read_text())

    def rewritten() -> bool:
        # The new file holds what was held (lines still in the pipe may be missing).
        store = buffer_dir / STORE_FILE
        return store.exists() and buffer_stats(buffer_dir)["mqtt"]["records"] >= printed - 5

    assert wait_until(rewritten, 30), gw.log_text()[-3000:]
    assert gw.terminate() == 0, gw.log_text()[-3000:]
    state = int((tmp_path / "state").read_text())
    held = buffer_stats(buffer_dir)["mqtt"]["records"]
    assert held >= state - 5, (held, state)  # lines still in the pipe at SIGTERM may be missing
    broker.start()
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw2 = gateway_factory(cfg)
    try:
        assert sub.wait_for(lambda m: set(range(1, held + 1)) <= set(delivered(sub)), 60), (
            gw2.log_text()[-3000:]
        )
    finally:
        assert gw2.terminate() == 0
        sub.close()


def test_records_that_never_reached_the_disk_are_reported_and_the_exit_code_says_so(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """A buffer dir that refuses every write and a broker that is down: at SIGTERM the
    held records are lost, which the log says and exit code 3 tells systemd."""
    assert os.geteuid() == 0, "mounts a read-only tmpfs; needs root"
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        cfg = numbered_config(tmp_path, test_id, broker, tsdb)
        cfg["gateway"]["buffer_dir"] = str(ro / "buffer")
        broker.stop()
        gw = gateway_factory(cfg)
        state = tmp_path / "state"
        assert wait_until(lambda: state.exists() and int(state.read_text() or 0) > 20, 30)
        assert gw.terminate() == 3, gw.log_text()[-3000:]
        assert "never reached the disk and are lost" in gw.log_text()
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


def test_a_store_with_a_damaged_page_is_salvaged_and_delivered(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """1,000 packets buffered with the links down, one page in the store's middle
    overwritten: after a restart with the links up, what could be read arrives,
    and the log and the counters say how much that was."""
    import re
    import sqlite3
    import urllib.request

    from gateway.buffer.cachefile import PAGE_SIZE
    from tests.services import free_port

    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    command = [sys.executable, str(script), str(tmp_path / "state"), "1000", "200"]
    down = base_config(tmp_path, test_id, free_port(), f"http://127.0.0.1:{free_port()}", command)
    buffer_dir = tmp_path / "buffer"
    gw = gateway_factory(down)
    try:
        assert wait_until(
            lambda: (
                (buffer_dir / STORE_FILE).exists()
                and buffer_stats(buffer_dir)["mqtt"]["records"] == 1000
                and buffer_stats(buffer_dir)["influx"]["records"] == 1000
            ),
            120,
            interval=1.0,
        ), gw.log_text()
    finally:
        assert gw.terminate() == 0
    db = buffer_dir / STORE_FILE
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    (pages,) = con.execute("PRAGMA page_count").fetchone()
    con.close()
    with open(db, "r+b") as f:
        f.seek((pages // 2 - 1) * PAGE_SIZE)
        f.write(random.Random(27).randbytes(PAGE_SIZE))

    up = base_config(tmp_path, test_id, broker.port, tsdb.url, command)
    port = free_port()
    up["status"] = {"listen": f"127.0.0.1:{port}"}
    sub = Subscriber(broker.port, f"{test_id}/#")
    gw = gateway_factory(up)

    def counters() -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        found = re.findall(
            r'^gateway_buffer_(salvaged|salvage_lost)_total\{sink="(\w+)"\} (\S+)$', text, re.M
        )
        return {f"{what}:{sink}": int(float(v)) for what, sink, v in found}

    def points() -> set[int]:
        return set(
            numbers(str(v) for name, _, _, v, _ in tsdb.points(testid=test_id) if name == "n")
        )

    try:
        assert wait_until(lambda: "salvaged" in gw.log_text(), 60), gw.log_text()
        got: dict[str, int] = {}
        assert wait_until(lambda: bool(got.update(counters()) or got), 30)
        assert sub.wait_for(lambda m: len(set(delivered(sub))) >= got["salvaged:mqtt"], 120)
        assert wait_until(lambda: len(points()) >= got["salvaged:influx"], 120, interval=1.0)
    finally:
        assert gw.terminate() == 0
        sub.close()
    log = gw.log_text()
    print("salvage:", got, "messages", len(set(delivered(sub))), "points", len(points()))
    for sink in ("mqtt", "influx"):
        assert got[f"salvaged:{sink}"] >= 900
        assert got[f"salvaged:{sink}"] + got[f"salvage_lost:{sink}"] <= 1000
        assert (
            f"{sink} {got[f'salvaged:{sink}']} salvaged, {got[f'salvage_lost:{sink}']} lost" in log
        )
    assert len(set(delivered(sub))) >= 900
    assert len(points()) >= 900
    assert list(buffer_dir.glob("buffer.corrupt-*.db"))
