"""gateway.buffer: the bounded, durable FIFO both sinks deliver from."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path

import pytest
import trio

from gateway.buffer import STORE_FILE, BufferStore, DiskBuffer, Record, StoreReader
from gateway.buffer import queue as buffer_module
from gateway.buffer import store as store_module
from gateway.buffer.cachefile import PAGE_SIZE, store_bytes
from gateway.buffer.store import DRAIN_ACK_DELAY


def on_disk(store: BufferStore, name: str) -> list[Record]:
    """Every record waiting in buffer ``name``, read from the file (all of them are written)."""
    buf = store.buffers[name]
    return store.read_sync(buf, buf.head, buf.tail)


def crash(store: BufferStore) -> None:
    """What kill -9 leaves: the file closed with nothing more written."""
    cache, store.file.cache = store.file.cache, None
    assert cache is not None
    store._thread.call(cache.close)


async def open_buffer(path: Path, max_records: int = 100, **kwargs: object) -> DiskBuffer:
    return await store_module.open_buffer(path, max_records=max_records, **kwargs)  # type: ignore[arg-type]


def values(records: list) -> list[str]:  # type: ignore[type-arg]
    return [r.value for r in records]


async def test_fifo_order(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "influx")
    await buf.append(["a", "b"])
    await buf.append(["c"])
    await buf.append(["d", "e", "f"])
    assert values(await buf.peek(10)) == ["a", "b", "c", "d", "e", "f"]
    assert values(await buf.peek(2)) == ["a", "b"]
    buf.store.close()


async def test_peek_does_not_remove(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt")
    await buf.append(["a", "b", "c"])
    first = await buf.peek(2)
    second = await buf.peek(2)
    assert first == second
    assert buf.count.value == 3
    assert len(await buf.peek(10)) == 3
    buf.store.close()


async def test_ack_is_fifo_and_acks_every_older_record(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt")
    await buf.append(["a", "b", "c", "d"])
    batch = await buf.peek(4)
    await buf.ack([batch[1]])
    assert values(await buf.peek(10)) == ["c", "d"]
    assert buf.count.value == 2
    # Acking records that are already gone is harmless.
    await buf.ack(batch[:1])
    await buf.ack([])
    assert values(await buf.peek(10)) == ["c", "d"]
    buf.store.close()


async def test_records_appended_after_a_peek_survive_its_ack(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "influx")
    await buf.append(["a", "b"])
    batch = await buf.peek(10)
    await buf.append(["c"])
    await buf.ack(batch)
    assert values(await buf.peek(10)) == ["c"]
    buf.store.close()


async def test_stale_ack_after_the_buffer_emptied_keeps_new_records(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt")
    await buf.append(["old"])
    stale = await buf.peek(10)
    await buf.ack(stale)
    await buf.append(["new"])
    # Sequence numbers are never reused while a store is open.
    assert [r.key for r in await buf.peek(10)] == [stale[0].key + 1]
    await buf.ack(stale)
    assert values(await buf.peek(10)) == ["new"]
    buf.store.close()


async def test_read_hands_out_records_after_those_in_flight(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt")
    await buf.append(["a", "b", "c", "d", "e", "f"])
    assert values(await buf.read(2)) == ["a", "b"]
    assert values(await buf.read(2)) == ["c", "d"]
    # peek looks from the cursor and moves nothing.
    assert values(await buf.peek(10)) == ["e", "f"]
    assert (buf.count.value, buf.unread.value) == (6, 2)
    # One ack for what landed: the head moves, the cursor stays ahead.
    first = await buf.peek(1)
    await buf.ack([Record(2, "b")])
    assert (buf.count.value, buf.unread.value) == (4, 2)
    assert values(await buf.read(10)) == ["e", "f"]
    assert buf.unread.value == 0
    assert await buf.read(10) == []
    # A new connection: everything unacknowledged is handed out again, in order.
    buf.rewind()
    assert buf.unread.value == 4
    assert values(await buf.read(10)) == ["c", "d", "e", "f"]
    assert first[0].value == "e"
    buf.store.close()


async def test_read_and_rewind_across_disk_and_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buffer_module, "CACHE_RECORDS", 20)
    buf = await open_buffer(tmp_path, max_records=10_000)
    sent = [f"r{i}" for i in range(300)]
    for start in range(0, 300, 45):
        await buf.append(sent[start : start + 45])
    got: list[str] = []
    in_flight: list[Record] = []
    rounds = 0
    while buf.count.value:
        in_flight += await buf.read(17)
        # Acknowledge the older part of what is in flight; now and then the
        # connection drops and the rest is handed out again.
        half = len(in_flight) // 2 if buf.unread.value else len(in_flight)
        landed, in_flight = in_flight[:half], in_flight[half:]
        if landed:
            got += values(landed)
            await buf.ack(landed[-1:])
        rounds += 1
        if rounds % 5 == 0:
            buf.rewind()
            in_flight = []
    assert got == sent
    buf.store.close()


async def test_overflow_past_the_read_cursor(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt", max_records=3)
    await buf.append(["a", "b", "c"])
    in_flight = await buf.read(1)
    await buf.append(["d", "e", "f", "g"])  # drops a..d, one of them in flight
    assert buf.unread.value == 3
    assert values(await buf.read(10)) == ["e", "f", "g"]
    await buf.ack(in_flight)  # a dropped record: ignored
    assert buf.count.value == 3
    buf.store.close()


async def test_renumbered_records_are_handed_out_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buffer_module, "CACHE_RECORDS", 1)
    buf = await open_buffer(tmp_path / "mqtt")
    await buf.append(["a", "b", "c"])
    await buf.read(2)
    generation = buf.generation
    buf.renumbered()  # what the store does when it adopts a file's rows
    assert buf.generation == generation + 1
    assert buf.unread.value == 3
    # A read that spans a renumbering hands out nothing and moves nothing.
    read = buf.store.read

    async def read_then_renumber(*args: object) -> list[Record]:
        rows = await read(*args)  # type: ignore[arg-type]
        buf.renumbered()
        return rows

    monkeypatch.setattr(buf.store, "read", read_then_renumber)
    assert await buf.read(10) == []
    monkeypatch.setattr(buf.store, "read", read)
    assert values(await buf.read(10)) == ["a", "b", "c"]
    buf.store.close()


async def test_bound_drops_oldest_and_returns_the_count(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt", max_records=5)
    assert await buf.append(["1", "2", "3"]) == 0
    assert await buf.append(["4", "5", "6", "7"]) == 2
    assert values(await buf.peek(10)) == ["3", "4", "5", "6", "7"]
    assert await buf.append([str(i) for i in range(8, 20)]) == 12
    assert values(await buf.peek(10)) == ["15", "16", "17", "18", "19"]
    assert buf.dropped_total == 14
    assert buf.count.value == 5
    assert await buf.append([]) == 0
    buf.store.close()


async def test_ack_of_records_dropped_by_overflow(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt", max_records=3)
    await buf.append(["a", "b", "c"])
    batch = await buf.peek(3)
    await buf.append(["d", "e"])  # drops a and b while the batch is in flight
    await buf.ack(batch)
    assert values(await buf.peek(10)) == ["d", "e"]
    buf.store.close()


async def test_reopen_keeps_records_in_order(tmp_path: Path) -> None:
    path = tmp_path / "influx"
    buf = await open_buffer(path)
    await buf.append(["a", "b", "c"])
    await buf.ack(await buf.peek(1))
    buf.store.close()
    buf = await open_buffer(path)
    assert buf.count.value == 2
    await buf.append(["d"])
    assert values(await buf.peek(10)) == ["b", "c", "d"]
    assert buf.store.corrupt_moved == []
    buf.store.close()


async def test_count_wakes_a_waiting_sink(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "mqtt")
    seen: list[int] = []

    async def sink() -> None:
        seen.append(await buf.count.wait_value(lambda n: n >= 3))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink)
            await buf.append(["a", "b"])
            await trio.testing.wait_all_tasks_blocked()
            assert seen == []
            await buf.append(["c"])
    assert seen == [3]
    await buf.ack(await buf.peek(2))
    assert buf.count.value == 1
    buf.store.close()


def sibling_names(directory: Path, prefix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(prefix))


def corrupt_with_random_bytes(db: Path) -> None:
    db.write_bytes(random.Random(7).randbytes(16384))


def corrupt_by_truncation(db: Path) -> None:
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)


@pytest.mark.parametrize("corrupt", [corrupt_with_random_bytes, corrupt_by_truncation])
async def test_corrupt_store_is_moved_aside(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "influx"
    buf = await open_buffer(path, max_records=1000)
    await buf.append([f"record {i} " + "x" * 100 for i in range(500)])
    buf.store.close()
    corrupt(path / STORE_FILE)

    buf = await open_buffer(path, max_records=1000)
    assert len(buf.store.corrupt_moved) == 1
    aside = buf.store.corrupt_moved[0]
    assert aside.parent == path
    assert aside.name.startswith("buffer.corrupt-")
    assert aside.exists()
    assert buf.count.value == 0
    assert buf.store.file.integrity_check() == "ok"
    await buf.append(["fresh"])
    assert values(await buf.peek(10)) == ["fresh"]
    buf.store.close()


async def test_two_corruptions_in_a_row_get_separate_names(tmp_path: Path) -> None:
    path = tmp_path / "mqtt"
    moved = []
    for _ in range(2):
        buf = await open_buffer(path)
        await buf.append(["a"])
        buf.store.close()
        corrupt_with_random_bytes(path / STORE_FILE)
        buf = await open_buffer(path)
        moved += buf.store.corrupt_moved
        buf.store.close()
    assert len(set(moved)) == 2
    for aside in moved:
        assert aside.exists()
    assert sibling_names(path, "buffer.corrupt-") == sorted(p.name for p in moved)


def pragma(store: BufferStore, name: str) -> object:
    """A pragma of the store's own connection (diskcache sets them per connection)."""
    return store._thread.call(lambda: store.file.cache.reset(f"sqlite_{name}", update=False))


@pytest.mark.parametrize(("durability", "synchronous"), [("normal", 1), ("full", 2)])
async def test_durability(tmp_path: Path, durability: str, synchronous: int) -> None:
    path = tmp_path / "influx"
    buf = await open_buffer(path, durability=durability)
    assert pragma(buf.store, "synchronous") == synchronous
    assert pragma(buf.store, "journal_mode") == "wal"
    con = sqlite3.connect(path / STORE_FILE)
    try:
        assert con.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    finally:
        con.close()
    await buf.append(["a", "b"])
    buf.store.close()
    buf = await open_buffer(path, durability=durability)
    assert values(await buf.peek(10)) == ["a", "b"]
    assert buf.store.file.integrity_check() == "ok"
    buf.store.close()


async def test_count_bound_bytes_and_records(tmp_path: Path) -> None:
    buf = await open_buffer(tmp_path / "influx", max_records=7)
    await buf.append(["a", "b", "c"])
    assert buf.count.value == 3
    assert buf.max_records == 7
    assert store_bytes(buf.store.path) > 0
    assert values(await buf.peek(10)) == ["a", "b", "c"]
    buf.store.close()


def disk_values(directory: Path, table: str) -> list[str]:
    """What a second connection (another process, after a crash) sees on disk."""
    with StoreReader(directory) as reader:
        return [r.value for r in reader.records(table)]


async def test_one_transaction_for_both_sinks_carries_the_acks(tmp_path: Path) -> None:
    store = await BufferStore.open(tmp_path, {"mqtt": 100, "influx": 100}, ack_delay=60)
    mqtt, influx = store.buffers["mqtt"], store.buffers["influx"]
    await store.commit({mqtt: ["m1", "m2"], influx: ["p1"]})
    assert disk_values(tmp_path, "mqtt") == ["m1", "m2"]
    assert disk_values(tmp_path, "influx") == ["p1"]
    await mqtt.ack(await mqtt.peek(10))
    # The ack took effect at once but waits on disk for the next commit ...
    assert mqtt.count.value == 0
    assert disk_values(tmp_path, "mqtt") == ["m1", "m2"]
    transactions = []
    transact = store.file.cache.transact

    def counted() -> object:
        transactions.append(1)
        return transact()

    store.file.cache.transact = counted
    await store.commit({mqtt: ["m3"], influx: ["p2"]})
    # ... which deletes them in the same transaction as the new rows.
    assert disk_values(tmp_path, "mqtt") == ["m3"]
    assert disk_values(tmp_path, "influx") == ["p1", "p2"]
    assert transactions == [1]
    store.close()


async def test_acks_without_a_commit_are_written_after_ack_delay(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await BufferStore.open(tmp_path, {"influx": 100}, ack_delay=1.0)
    buf = store.buffers["influx"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await buf.append(["a", "b", "c"])
        # Caught up (field rate): the ack waits for a commit to ride with ...
        await buf.ack(await buf.peek(3))
        mock_clock.jump(0.9)
        await settled(store)
        assert disk_values(tmp_path, "influx") == ["a", "b", "c"]
        assert buf.unsynced_acks == 3  # what a crash now would deliver again
        # ... but not for longer than ack_delay.
        mock_clock.jump(0.2)
        await settled(store)
        assert disk_values(tmp_path, "influx") == []
        assert buf.unsynced_acks == 0
        nursery.cancel_scope.cancel()
    store.close()


async def test_acks_during_a_drain_are_written_within_the_drain_pacing(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await BufferStore.open(tmp_path, {"influx": 100}, ack_delay=1.0)
    buf = store.buffers["influx"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await buf.append(["a", "b", "c", "d"])
        # Records still wait behind the ack (a drain): written within
        # DRAIN_ACK_DELAY with whatever else lands meanwhile, not ack_delay.
        await buf.ack(await buf.peek(1))
        mock_clock.jump(DRAIN_ACK_DELAY / 2)
        await buf.ack(await buf.peek(1))  # rides with the first one's write
        await settled(store)
        assert buf.unsynced_acks == 2
        mock_clock.jump(DRAIN_ACK_DELAY / 2)
        await settled(store)
        assert buf.unsynced_acks == 0
        assert disk_values(tmp_path, "influx") == ["c", "d"]
        # A sink that needs the room asks: written at once, no clock moving.
        await buf.ack(await buf.peek(1))
        buf.hurry_acks()
        await buf.unsynced.wait_value(0)
        assert disk_values(tmp_path, "influx") == ["d"]
        nursery.cancel_scope.cancel()
    store.close()


def count_wakeups(store: BufferStore) -> dict[str, int]:
    """Count run()'s loop turns (each asks next_due once) and its writes."""
    counts = {"wakeups": 0, "syncs": 0, "transactions": 0}
    next_due, sync, transact = store.schedule.next_due, store.sync, store.file.cache.transact

    def counted_due(degraded: bool) -> float | None:
        counts["wakeups"] += 1
        return next_due(degraded)

    async def counted_sync(**kwargs: bool) -> bool:
        counts["syncs"] += 1
        return await sync(**kwargs)

    def counted_transact() -> object:
        counts["transactions"] += 1
        return transact()

    store.schedule.next_due = counted_due  # type: ignore[method-assign]
    store.sync = counted_sync  # type: ignore[method-assign]
    store.file.cache.transact = counted_transact
    return counts


async def field_rate(store: BufferStore, seconds: float, *, late: int | None = None) -> None:
    """2 packets/s of 9 messages and 9 points, delivered as the sinks do it.

    MQTT reads a packet's messages and acknowledges them as their PUBACKs
    land, a few at a time (the rest still in flight); InfluxDB flushes once
    a second, so every batch straddles two packets, and after each request
    says it delivers (again). Packet ``late`` is acknowledged by InfluxDB
    only after write_delay.
    """
    mqtt, influx = store.buffers["mqtt"], store.buffers["influx"]
    held: list[Record] = []
    for n in range(int(seconds * 2)):
        await store.commit(
            {mqtt: [f"m{n}.{i}" for i in range(9)], influx: [f"p{n}.{i}" for i in range(9)]}
        )
        await trio.sleep(0.002)
        sent = await mqtt.read(20)
        for landed in (sent[:2], sent[2:6], sent[6:]):  # PUBACKs in three reads
            await mqtt.ack(landed)
            await trio.sleep(0.001)
        if held and late is not None and n >= late + 6:
            await influx.ack(held)  # 2.5 s after its request went
            held = []
        if n % 2 and not held:  # (the sink waits for its request's answer)
            batch = await influx.peek(5000)
            if late is not None and n - 1 <= late <= n:
                held = batch
            else:
                await influx.ack(batch)
                influx.set_delivering(True)
        await trio.sleep(0.497)


async def test_the_write_loop_sleeps_when_nothing_is_owed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Write-behind at field rate: every record acked in time, the store never writes.

    With the sinks' real patterns: acks of a packet's messages while others
    are still in flight, InfluxDB batches that straddle two packets, a sink
    saying again and again that it delivers, the dead-letter queues (never
    "delivering") empty beside them. And run() wakes seldom: not once per
    commit and ack, only when a write could be due.
    """
    store = await BufferStore.open(tmp_path, {"mqtt": 1000, "influx": 1000}, write_delay=2.0)
    assert {"mqtt_dead", "influx_dead"} <= set(store.buffers)
    for buf in store.buffers.values():
        buf.set_delivering(not buf.name.endswith("_dead"))
    counts = count_wakeups(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await field_rate(store, 60)
        await trio.sleep(10)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # Nothing was ever due: acked in time, never written, no ack to delete.
    assert counts["syncs"] == counts["transactions"] == 0
    assert disk_values(tmp_path, "mqtt") == disk_values(tmp_path, "influx") == []
    # 120 commits and 480 acks in 70 s: no spin, and not a wake-up for each of them.
    assert counts["wakeups"] <= 70
    store.close()


async def test_a_late_acknowledgement_costs_two_writes_then_the_loop_sleeps(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A batch acknowledged after write_delay: its records written once, their deletion
    once, and no write drags the packets after them along (each would then
    cost a deletion of its own, once a second for ever)."""
    store = await BufferStore.open(tmp_path, {"mqtt": 1000, "influx": 1000}, write_delay=2.0)
    for buf in store.buffers.values():
        buf.set_delivering(not buf.name.endswith("_dead"))
    counts = count_wakeups(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await field_rate(store, 60, late=10)
        await trio.sleep(10)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    # The late points and the rest of their buffer (a timer due while they
    # wait); the late ack's deletion (points wait behind it: at once); the
    # deletion of the rest with the next batch's ack (which, with the autojump
    # clock racing the store's thread, may ride with the one before).
    assert counts["transactions"] == counts["syncs"]
    assert 2 <= counts["transactions"] <= 3
    assert disk_values(tmp_path, "mqtt") == disk_values(tmp_path, "influx") == []
    assert counts["wakeups"] <= 75
    store.close()


async def acked_but_not_written(directory: Path) -> BufferStore:
    """A store holding a, b, c on disk, with a and b acknowledged in memory only."""
    store = await BufferStore.open(directory, {"mqtt": 100}, ack_delay=60)
    buf = store.buffers["mqtt"]
    await buf.append(["a", "b", "c"])
    await buf.ack(await buf.peek(2))
    return store


async def test_a_crash_before_acks_are_written_redelivers_not_loses(tmp_path: Path) -> None:
    store = await acked_but_not_written(tmp_path)
    crash(store)  # a kill -9: nothing more is written
    again = await BufferStore.open(tmp_path, {"mqtt": 100})
    assert values(await again.buffers["mqtt"].peek(10)) == ["a", "b", "c"]
    again.close()


async def test_close_writes_pending_acks(tmp_path: Path) -> None:
    store = await acked_but_not_written(tmp_path)
    store.close()
    assert disk_values(tmp_path, "mqtt") == ["c"]


async def test_a_backlog_beyond_the_memory_cache_is_read_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buffer_module, "CACHE_RECORDS", 50)
    buf = await open_buffer(tmp_path, max_records=10_000)
    sent = [f"r{i}" for i in range(1000)]
    for start in range(0, 1000, 70):
        await buf.append(sent[start : start + 70])
    got: list[str] = []
    while buf.count.value:
        batch = await buf.peek(33)
        assert [r.key for r in batch] == list(range(batch[0].key, batch[0].key + len(batch)))
        got += values(batch)
        await buf.ack(batch)
    assert got == sent
    buf.store.close()


async def test_records_dropped_in_flight_are_not_acknowledged_as_delivered(
    tmp_path: Path,
) -> None:
    """A sink's window overtaken by the bound: its ack counts only what it still held."""
    buf = await open_buffer(tmp_path, max_records=10)
    await buf.append([f"r{i}" for i in range(10)])
    window = await buf.peek(10)
    await buf.append([f"s{i}" for i in range(6)])  # drops r0..r5 while in flight
    assert buf.dropped_total == 6
    assert await buf.ack(window) == 4  # r6..r9: published; r0..r5 were dropped
    assert [r.value for r in await buf.peek(10)] == [f"s{i}" for i in range(6)]
    buf.store.close()


# -- protected records (alert events): the bound counts them, the drop skips them -----


MARK = "!alert"


def alert(n: int) -> str:
    return f"1 p/alerts/a{n} {MARK}{n}"


async def open_store(path: Path, bound: int) -> BufferStore:
    return await BufferStore.open(path, {"mqtt": bound}, ack_delay=0, protect={"mqtt": MARK})


def texts(store: BufferStore) -> list[str]:
    return [r.value for r in on_disk(store, "mqtt")]


async def test_a_full_buffer_drops_unprotected_records_first(tmp_path: Path) -> None:
    store = await open_store(tmp_path, 5)
    buf = store.buffers["mqtt"]
    assert (await store.commit({buf: ["r1", alert(1), "r2"]})).dropped == {"mqtt": 0}
    dropped = 0
    for i in range(3, 13):
        dropped += (await store.commit({buf: [f"r{i}", *([alert(2)] if i == 6 else [])]})).dropped[
            "mqtt"
        ]
    # The bound counts protected records; the drop skips them; the order kept holds.
    assert texts(store) == [alert(1), alert(2), "r10", "r11", "r12"]
    assert dropped == buf.dropped_total == 9
    assert buf.count.value == 5
    # A sink sees them first, in order, and acknowledges them like any record.
    batch = await buf.peek(2)
    assert [r.value for r in batch] == [alert(1), alert(2)]
    await buf.ack(batch)
    assert texts(store) == ["r10", "r11", "r12"]
    store.close()
    # On disk as in memory.
    store = await open_store(tmp_path, 5)
    assert texts(store) == ["r10", "r11", "r12"]
    store.close()


async def test_protection_survives_a_reopen(tmp_path: Path) -> None:
    store = await open_store(tmp_path, 4)
    buf = store.buffers["mqtt"]
    for record in ["r1", alert(1), "r2", "r3", "r4", "r5"]:
        await store.commit({buf: [record]})
    assert texts(store) == [alert(1), "r3", "r4", "r5"]
    store.close()
    store = await open_store(tmp_path, 4)
    buf = store.buffers["mqtt"]
    assert texts(store) == [alert(1), "r3", "r4", "r5"]
    for i in range(6, 20):
        await store.commit({buf: [f"r{i}"]})
    assert texts(store) == [alert(1), "r17", "r18", "r19"]
    store.close()
    with StoreReader(tmp_path) as reader:
        # What `gateway buffer export` reads; the alert state is no buffer.
        assert reader.tables == ["mqtt", "mqtt_dead"]
        assert [r.value for r in reader.records("mqtt")] == [alert(1), "r17", "r18", "r19"]


async def test_a_buffer_of_protected_records_only_drops_the_oldest(tmp_path: Path) -> None:
    store = await open_store(tmp_path, 3)
    buf = store.buffers["mqtt"]
    dropped = (await store.commit({buf: [alert(i) for i in range(5)]})).dropped["mqtt"]
    assert (dropped, texts(store)) == (2, [alert(2), alert(3), alert(4)])
    store.close()


async def test_protected_records_beyond_the_memory_cache(tmp_path: Path) -> None:
    # More than CACHE_RECORDS: the head is read back from disk, where the
    # relocated alert must be found.
    store = await open_store(tmp_path, 5000)
    buf = store.buffers["mqtt"]
    await store.commit({buf: [alert(1)]})
    for start in range(0, 8000, 200):
        await store.commit({buf: [f"r{i}" for i in range(start, start + 200)]})
    head = await buf.peek(3)
    assert [r.value for r in head] == [alert(1), "r3001", "r3002"]
    store.close()
    store = await open_store(tmp_path, 5000)
    assert [r.value for r in await store.buffers["mqtt"].peek(2)] == [alert(1), "r3001"]
    store.close()


def test_a_relocation_during_a_write_is_written_by_the_next_one(tmp_path: Path) -> None:
    store = BufferStore(tmp_path, {"mqtt": 3}, ack_delay=0, protect={"mqtt": MARK})
    buf = store.buffers["mqtt"]
    buf.add(["r1", alert(1), "r2"])
    in_flight = store._plan()  # a write under way, with the slots' old values ...
    buf.add(["r3", "r4"])  # ... while a commit moves the alert up
    store.index.write(store.file.cache, in_flight, None)
    store._wrote(in_flight, {})
    assert buf.pending()
    plan = store._plan()
    store.index.write(store.file.cache, plan, None)
    store._wrote(plan, {})
    assert not buf.pending()
    store.close()
    store = BufferStore(tmp_path, {"mqtt": 3}, ack_delay=0, protect={"mqtt": MARK})
    assert texts(store) == [alert(1), "r3", "r4"]
    store.close()


async def test_alert_state_is_written_with_the_events(tmp_path: Path) -> None:
    store = await open_store(tmp_path, 10)
    buf = store.buffers["mqtt"]
    await store.commit({buf: [alert(1)]}, state={"active:a1": "{}", "group:node1": "1"})
    await store.commit({buf: []}, state={"active:a1": None})
    assert store.alert_state() == {"group:node1": "1"}
    store.close()
    store = await open_store(tmp_path, 10)
    assert store.alert_state() == {"group:node1": "1"}
    assert texts(store) == [alert(1)]
    store.close()


async def test_a_store_of_another_format_is_moved_aside(tmp_path: Path) -> None:
    import diskcache

    buf = await open_buffer(tmp_path)
    await buf.append(["a"])
    buf.store.close()
    with diskcache.Cache(str(tmp_path)) as cache:
        cache.set("format", 99)
    buf = await open_buffer(tmp_path)
    assert len(buf.store.corrupt_moved) == 1
    assert buf.count.value == 0
    buf.store.close()


async def test_a_boot_is_stored_once_not_per_record(tmp_path: Path) -> None:
    store = await BufferStore.open(tmp_path, {"mqtt": 100}, ack_delay=0)
    writes: list[str] = []
    set_ = store.file.cache.set

    def counted(key: str, value: object) -> object:
        writes.append(key)
        return set_(key, value)

    store.file.cache.set = counted
    boot = "0123abcd-0000-0000-0000-000000000000"
    for _ in range(3):
        assert await store.save_boot(boot, None)
        await store.commit({store.buffers["mqtt"]: ["1~0123abcd~5 t 1"]})
    assert await store.save_boot(boot, 42)  # the offset it learned: stored once more
    assert writes.count("boots") == 2
    store.close()
    store = await BufferStore.open(tmp_path, {"mqtt": 100}, ack_delay=0)
    assert store.boot_offsets() == {"0123abcd": (boot, 42)}
    store.close()


# -- write-behind (write_delay > 0): records acked in time never touch the disk -------


async def settled(store: BufferStore) -> None:
    """Let the store's writer finish what it started: real time, not mock."""
    for _ in range(100):
        await trio.testing.wait_all_tasks_blocked()
        if not store._lock.locked():
            return
        await trio.to_thread.run_sync(time.sleep, 0.01)


def count_transactions(store: BufferStore) -> list[int]:
    transactions: list[int] = []
    transact = store.file.cache.transact

    def counted() -> object:
        transactions.append(1)
        return transact()

    store.file.cache.transact = counted
    return transactions


async def write_behind(directory: Path, **kwargs: object) -> BufferStore:
    store = await BufferStore.open(
        directory,
        {"mqtt": 100, "influx": 100},
        ack_delay=1.0,
        write_delay=2.0,
        protect={"mqtt": MARK},
        **kwargs,  # type: ignore[arg-type]
    )
    for buf in store.buffers.values():
        buf.set_delivering(True)
    return store


async def test_write_behind_records_acked_in_time_never_touch_the_disk(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await write_behind(tmp_path)
    mqtt, influx = store.buffers["mqtt"], store.buffers["influx"]
    transactions = count_transactions(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        for n in range(5):
            await store.commit({mqtt: [f"m{n}"], influx: [f"p{n}"]})
            # Deliverable at once, before any write.
            assert values(await mqtt.peek(10)) == [f"m{n}"]
            mock_clock.jump(1.0)
            await mqtt.ack(await mqtt.peek(10))
            await influx.ack(await influx.peek(10))
            mock_clock.jump(0.5)
            await settled(store)
        mock_clock.jump(10)
        await settled(store)
        assert transactions == []
        nursery.cancel_scope.cancel()
    assert store.close() == 0
    assert disk_values(tmp_path, "mqtt") == disk_values(tmp_path, "influx") == []


async def test_write_behind_writes_a_record_not_acked_within_write_delay_with_all_pending(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await write_behind(tmp_path)
    mqtt, influx = store.buffers["mqtt"], store.buffers["influx"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await store.commit({mqtt: ["m1"], influx: ["p1"]})
        mock_clock.jump(1.0)
        await store.commit({mqtt: ["m2"], influx: ["p2"]})
        await influx.ack(await influx.peek(10))  # p1 and p2 delivered in time
        mock_clock.jump(0.9)
        await settled(store)
        assert disk_values(tmp_path, "mqtt") == []
        mock_clock.jump(0.2)  # m1 is 2.1 s old: it and everything pending go to disk
        await settled(store)
        assert disk_values(tmp_path, "mqtt") == ["m1", "m2"]
        assert disk_values(tmp_path, "influx") == []
        # FIFO across disk and memory: what is written and what is not, in order.
        await store.commit({mqtt: ["m3"]})
        assert values(await mqtt.peek(10)) == ["m1", "m2", "m3"]
        nursery.cancel_scope.cancel()
    crash(store)  # kill -9: m3, younger than write_delay, is the only loss
    again = await BufferStore.open(tmp_path, {"mqtt": 100, "influx": 100})
    assert values(await again.buffers["mqtt"].peek(10)) == ["m1", "m2"]
    again.close()


async def test_write_behind_writes_at_once_for_a_sink_that_does_not_deliver(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await write_behind(tmp_path)
    mqtt, influx = store.buffers["mqtt"], store.buffers["influx"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await store.commit({mqtt: ["m1"], influx: ["p1"]})
        await settled(store)
        assert disk_values(tmp_path, "mqtt") == []
        influx.set_delivering(False)  # e.g. the database is down, or points are held
        await settled(store)
        assert disk_values(tmp_path, "influx") == ["p1"]
        # MQTT still delivers: its record is not due, it waits for its ack in memory.
        assert disk_values(tmp_path, "mqtt") == []
        await store.commit({mqtt: ["m2"], influx: ["p2"]})
        assert disk_values(tmp_path, "influx") == ["p1", "p2"]
        nursery.cancel_scope.cancel()
    store.close()


async def test_write_behind_commits_alert_events_at_once(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await write_behind(tmp_path)
    mqtt = store.buffers["mqtt"]
    await store.commit({mqtt: ["r1"]})
    assert disk_values(tmp_path, "mqtt") == []
    await store.commit({mqtt: [alert(1)]})
    assert disk_values(tmp_path, "mqtt") == ["r1", alert(1)]
    await store.commit({mqtt: []}, state={"group:node1": "1"})
    assert store.alert_state() == {"group:node1": "1"}
    crash(store)
    again = await BufferStore.open(tmp_path, {"mqtt": 100}, protect={"mqtt": MARK})
    assert again.alert_state() == {"group:node1": "1"}
    again.close()


async def test_write_behind_close_writes_everything_held(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    store = await write_behind(tmp_path)
    mqtt = store.buffers["mqtt"]
    await store.commit({mqtt: ["a", "b", "c"]})
    await mqtt.ack(await mqtt.peek(1))
    assert disk_values(tmp_path, "mqtt") == []
    assert store.close() == 0  # SIGTERM: nothing is lost
    assert disk_values(tmp_path, "mqtt") == ["b", "c"]


# -- a commit's records are one diskcache item per buffer ------------------------------


async def test_a_partly_acknowledged_item_is_not_delivered_again_after_a_crash(
    tmp_path: Path,
) -> None:
    store = await BufferStore.open(tmp_path, {"mqtt": 100}, ack_delay=0)
    buf = store.buffers["mqtt"]
    await buf.append(["a", "b", "c"])  # one item
    await buf.ack((await buf.peek(2))[-1:])
    assert disk_values(tmp_path, "mqtt") == ["c"]
    crash(store)
    again = await BufferStore.open(tmp_path, {"mqtt": 100})
    assert values(await again.buffers["mqtt"].peek(10)) == ["c"]
    again.close()


async def test_a_large_commit_is_split_into_items_and_read_back_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(buffer_module, "CACHE_RECORDS", 10)
    buf = await open_buffer(tmp_path, max_records=5000)
    sent = [f"r{i}" for i in range(1300)]
    await buf.append(sent)
    assert len(buf.store.index.chunks["buffer"].starts) == 3  # at most MAX_ITEM (512) each
    buf.store.close()
    buf = await open_buffer(tmp_path, max_records=5000)
    got: list[str] = []
    while buf.count.value:
        batch = await buf.peek(333)
        got += values(batch)
        await buf.ack(batch[-1:])
    assert got == sent
    buf.store.close()
    assert disk_values(tmp_path, "buffer") == []
