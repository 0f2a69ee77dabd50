"""The ``gateway`` command line: buffer inspection, status, errors, options and help."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import BufferStore

REPO = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]

NS = 1_795_773_905_582_000_000
MQTT = [f"{NS + i} iiot/node1/temperature {20 + i}" for i in range(3)]
INFLUX = [f"temperature,node=node1,unit=celsius value={20.0 + i!r} {NS + i}" for i in range(2)]


def write_store(directory: Path, mqtt: list[str], influx: list[str], *, close: bool = True) -> Any:
    """A store with these records, written by the gateway's own BufferStore."""
    import trio

    store = BufferStore(directory, {"mqtt": 10_000, "influx": 10_000}, ack_delay=0)

    async def commit() -> None:
        await store.commit({store.buffers["mqtt"]: mqtt, store.buffers["influx"]: influx})

    trio.run(commit)
    if close:
        store.close()
    return store


def test_read_store_returns_every_sinks_records(tmp_path: Path) -> None:
    from gateway.buffer import read_store

    assert read_store(tmp_path) == {}
    write_store(tmp_path, MQTT, INFLUX)
    records = read_store(tmp_path)
    assert {sink: [r.value for r in recs] for sink, recs in records.items()} == {
        "mqtt": MQTT,
        "influx": INFLUX,
    }
    with pytest.raises(FileNotFoundError):
        read_store(tmp_path / "nope")
