"""Dead-letter files: bounded, never fatal on a refusing disk."""

from __future__ import annotations

from pathlib import Path

from gateway.deadletter import DeadLetterFile


async def test_the_file_is_bounded_and_drops_its_oldest_half(tmp_path: Path) -> None:
    dead = DeadLetterFile(tmp_path / "dead" / "influx.lp", max_bytes=1000)
    for i in range(100):
        assert await dead.append([f"point-{i:03d} " + "x" * 40])
    lines = (tmp_path / "dead" / "influx.lp").read_text().splitlines()
    assert (tmp_path / "dead" / "influx.lp").stat().st_size <= 1000
    assert lines[-1].startswith("point-099")  # the newest are kept
    assert dead.dropped == 100 - len(lines)  # and what went is counted
    assert dead.count() == len(lines)


async def test_a_disk_that_refuses_holds_them_and_writes_them_later(tmp_path: Path) -> None:
    blocker = tmp_path / "dead"
    blocker.write_text("a file where the directory should be")
    dead = DeadLetterFile(blocker / "mqtt.txt", max_held=3)
    assert not await dead.append(["a", "b", "c", "d"])  # no exception, held instead
    assert list(dead.held) == ["b", "c", "d"]
    assert dead.dropped == 1
    assert dead.write_errors == 1
    blocker.unlink()
    assert await dead.flush()
    assert (blocker / "mqtt.txt").read_text() == "b\nc\nd\n"
    assert not dead.held
