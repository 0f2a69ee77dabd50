"""gateway.buffer.recovery: what a corrupt store still holds goes into the new one."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
import trio

from gateway.buffer import STORE_FILE, BufferStore, Record
from gateway.buffer.cachefile import PAGE_SIZE, record_key
from gateway.buffer.chunks import encode
from gateway.buffer.recovery import _assemble
from tests.test_cli import _restore_process_state, listing  # noqa: F401 (an autouse fixture)

SINKS = {"mqtt": 10_000, "influx": 10_000}


def on_disk(store: BufferStore, name: str) -> list[Record]:
    """Every record waiting in buffer ``name``, read from the file (all of them are written)."""
    buf = store.buffers[name]
    return store.read_sync(buf, buf.head, buf.tail)


def packet(n: int) -> tuple[str, str]:
    return f"1795773905582000000 t/a/n {n}", f"1795773905582000000 n,node=a value={n}"


async def build(directory: Path, packets: int) -> None:
    """A store of ``packets`` commits (one record per buffer each), a boot and an alert."""
    store = await BufferStore.open(directory, SINKS, ack_delay=0)
    await store.save_boot("0123abcd-boot", 42)
    for n in range(1, packets + 1):
        mqtt, influx = packet(n)
        state = {"group:node1": "1"} if n == packets else None
        await store.commit(
            {store.buffers["mqtt"]: [mqtt], store.buffers["influx"]: [influx]}, state=state
        )
    store.close()
    con = sqlite3.connect(directory / STORE_FILE)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    con.close()


def middle_leaf(db: Path) -> int:
    """The middle page of the records' table (a leaf: rows of items)."""
    con = sqlite3.connect(db)
    pages = [
        p
        for (p,) in con.execute(
            "SELECT pageno FROM dbstat WHERE name = 'Cache' AND pagetype = 'leaf'"
        )
    ]
    con.close()
    return sorted(pages)[len(pages) // 2]


def overwrite_page(db: Path, pageno: int, seed: int = 1) -> None:
    with open(db, "r+b") as f:
        f.seek((pageno - 1) * PAGE_SIZE)
        f.write(random.Random(seed).randbytes(PAGE_SIZE))


def numbers(store: BufferStore, name: str) -> list[int]:
    return [int(float(r.value.rsplit(" ", 1)[1].split("=")[-1])) for r in on_disk(store, name)]


async def test_a_damaged_page_loses_only_the_records_on_it(tmp_path: Path) -> None:
    await build(tmp_path, 1000)
    db = tmp_path / STORE_FILE
    overwrite_page(db, middle_leaf(db))
    damaged = db.read_bytes()

    store = await BufferStore.open(tmp_path, SINKS, ack_delay=0)
    try:
        assert len(store.corrupt_moved) == 1
        assert store.corrupt_moved[0].read_bytes() == damaged  # kept as it was
        for name in SINKS:
            got = numbers(store, name)
            assert got == sorted(got)  # FIFO
            assert len(got) == store.salvaged[name] >= 980
            assert store.salvaged[name] + store.salvage_lost[name] == 1000
            assert (got[0], got[-1]) == (1, 1000)
        assert store.boot_offsets() == {"0123abcd": ("0123abcd-boot", 42)}
        assert store.alert_state() == {"group:node1": "1"}
        assert store.file.integrity_check() == "ok"
    finally:
        store.close()


async def test_damaged_bytes_sqlite_does_not_notice_are_found_at_open(tmp_path: Path) -> None:
    """Garbage inside one item passes quick_check; reading every item at open finds it."""
    await build(tmp_path, 50)
    db = tmp_path / STORE_FILE
    con = sqlite3.connect(db)
    (blob,) = con.execute(
        "SELECT value FROM Cache WHERE key = ?", (record_key("mqtt", 20),)
    ).fetchone()
    con.close()
    data = db.read_bytes()
    at = data.index(blob)
    db.write_bytes(data[:at] + b"\xff" * len(blob) + data[at + len(blob) :])
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA quick_check").fetchone() == ("ok",)
    con.close()

    store = await BufferStore.open(tmp_path, SINKS, ack_delay=0)
    try:
        assert len(store.corrupt_moved) == 1
        assert numbers(store, "mqtt") == [n for n in range(1, 51) if n != 20]
        assert store.salvage_lost == {"mqtt": 1, "influx": 0, "mqtt_dead": 0, "influx_dead": 0}
        assert len(numbers(store, "influx")) == 50
    finally:
        store.close()


def test_acknowledged_records_stay_out_and_gaps_count_as_lost() -> None:
    rows = {
        record_key("mqtt", 1): [encode([f"r{i}" for i in range(1, 11)])],  # 1..10
        # 11..20 lost with a damaged page
        record_key("mqtt", 21): [b"not zlib", encode([f"r{i}" for i in range(21, 26)])],
        "heads": [json.dumps({"mqtt": 4})],  # 1..3 acknowledged
        "boots": ["{not json"],
    }
    found = _assemble(Path("x.db"), rows, ["mqtt", "influx"], {})
    assert found.records["mqtt"] == [f"r{i}" for i in [*range(4, 11), *range(21, 26)]]
    assert found.first["mqtt"] == 4
    assert found.lost == {"mqtt": 10, "influx": 0}
    assert found.records["influx"] == []
    assert found.documents == {}  # an unreadable document is not carried over


def test_the_lost_front_counts_from_the_saved_head() -> None:
    rows = {
        record_key("mqtt", 30): [encode(["a", "b"])],
        "heads": [json.dumps({"mqtt": 25})],
    }
    found = _assemble(Path("x.db"), rows, ["mqtt"], {})
    assert found.records["mqtt"] == ["a", "b"]
    assert found.lost["mqtt"] == 5


def test_the_bound_keeps_the_newest() -> None:
    rows = {record_key("mqtt", 1): [encode([str(i) for i in range(10)])]}
    found = _assemble(Path("x.db"), rows, ["mqtt"], {"mqtt": 4})
    assert found.records["mqtt"] == ["6", "7", "8", "9"]
    assert found.first["mqtt"] == 7
    assert found.over_bound == {"mqtt": 6}


def test_a_store_of_another_format_is_not_salvaged() -> None:
    rows = {"format": [99], record_key("mqtt", 1): [encode(["a"])]}
    assert _assemble(Path("x.db"), rows, ["mqtt"], {}).records == {}


@pytest.mark.parametrize("as_json", [False, True])
def test_stats_on_a_corrupt_store_says_what_looks_recoverable_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    from gateway.cli import main

    trio.run(build, tmp_path, 300)
    db = tmp_path / STORE_FILE
    overwrite_page(db, middle_leaf(db))
    before = listing(tmp_path)
    assert (
        main(["buffer", "stats", "--buffer-dir", str(tmp_path), *(["--json"] if as_json else [])])
        == 1
    )
    out, err = capsys.readouterr()
    assert "corrupt" in err
    assert "look recoverable" in err
    assert listing(tmp_path) == before
    if as_json:
        report = json.loads(out)
        for name in SINKS:
            row = report[name]
            assert row["corrupt"] is True
            assert row["recoverable"] >= 280
            assert row["recoverable"] + row["lost"] == 300
