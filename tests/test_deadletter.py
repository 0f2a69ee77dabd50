"""Dead-letter files: bounded, never fatal on a refusing disk."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from gateway.buffer import BufferStore
from gateway.deadletter import DeadLetterFile, DeadLetterMover
from gateway.metrics import SinkMetrics
from tests.test_buffer import crash


async def test_the_file_is_bounded_and_drops_its_oldest_half(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "dead" / "influx.lp", max_bytes=1000)
    for i in range(100):
        assert await dead.append([f"point-{i:03d} " + "x" * 40])
    lines = (tmp_path / "dead" / "influx.lp").read_text().splitlines()
    assert (tmp_path / "dead" / "influx.lp").stat().st_size <= 1000
    assert lines[-1].startswith("point-099")  # the newest are kept
    assert dead.dropped == 100 - len(lines)  # and what went is counted
    assert dead.count() == len(lines)


async def test_a_disk_that_refuses_keeps_nothing_and_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "dead"
    blocker.write_text("a file where the directory should be")
    dead = DeadLetterFile(blocker / "mqtt.txt")
    assert not await dead.append(["a", "b"])  # no exception: the caller still has them
    assert dead.write_errors == 1
    blocker.unlink()
    assert await dead.append(["c"])
    assert (blocker / "mqtt.txt").read_text() == "c\n"


async def test_the_mover_keeps_refused_records_in_the_store_until_the_file_takes_them(
    tmp_path: Path,
) -> None:
    store = await BufferStore.open(tmp_path / "buffer", {"mqtt": 100}, ack_delay=0)
    buf = store.buffers["mqtt"]
    assert buf.dead is not None
    await buf.append(["1 t/a 1", "2 t/b x"])
    records = await buf.peek(10)
    await buf.ack(records, dead=["2 t/b x (refused)"])
    blocker = tmp_path / "dead"
    blocker.write_text("a file where the directory should be")
    figures = SinkMetrics("mqtt")
    mover = DeadLetterMover(buf.dead, DeadLetterFile(blocker / "mqtt.txt"), figures)
    assert not await mover.flush()
    assert figures.dead_letters_waiting == 1
    crash(store)  # a kill -9 now: the dead letter is in the store, not in memory
    store = await BufferStore.open(tmp_path / "buffer", {"mqtt": 100}, ack_delay=0)
    buf = store.buffers["mqtt"]
    assert buf.count.value == 0  # acknowledged out of the buffer ...
    assert buf.dead is not None
    assert buf.dead.count.value == 1  # ... into its dead-letter queue
    blocker.unlink()
    mover = DeadLetterMover(buf.dead, DeadLetterFile(blocker / "mqtt.txt"), figures)
    assert await mover.flush()
    assert (blocker / "mqtt.txt").read_text() == "2 t/b x (refused)\n"
    assert figures.dead_letters_waiting == 0
    assert buf.dead.count.value == 0
    store.close()


async def test_the_waiting_figure_follows_the_queue_while_the_file_refuses(
    tmp_path: Path,
) -> None:
    store = await BufferStore.open(tmp_path / "buffer", {"mqtt": 100}, ack_delay=0)
    buf = store.buffers["mqtt"]
    assert buf.dead is not None
    blocker = tmp_path / "dead"
    blocker.write_text("a file where the directory should be")
    figures = SinkMetrics("mqtt")
    # Real time (the store's thread is real): the next attempt is a minute away,
    # so a figure that moves before it follows the queue, not a retry.
    mover = DeadLetterMover(
        buf.dead, DeadLetterFile(blocker / "mqtt.txt"), figures, retry_interval=60.0
    )

    async def waiting(n: int) -> None:
        with trio.fail_after(10):
            while figures.dead_letters_waiting != n:  # noqa: ASYNC110 (a figure: no event)
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(mover.run)
        await buf.append(["1 t/a 1"])
        await buf.ack(await buf.peek(10), dead=["1 t/a 1 (refused)"])
        await waiting(1)  # the file refused it
        await buf.append(["2 t/a 2"])
        await buf.ack(await buf.peek(10), dead=["2 t/a 2 (refused)"])
        await waiting(2)  # long before the next attempt
        nursery.cancel_scope.cancel()
    store.close()
