"""The ``gateway`` command line: buffer inspection, status, errors, options and help."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import BufferStore

REPO = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]

NS = 1_795_773_905_582_000_000
MQTT = [f"{NS + i} iiot/node1/temperature {20 + i}" for i in range(3)]
INFLUX = [f"temperature,node=node1,unit=celsius value={20.0 + i!r} {NS + i}" for i in range(2)]


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """`gateway.cli` sets a SIGTERM handler on import and main() sets up logging: undo both."""
    sigterm = signal.getsignal(signal.SIGTERM)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    signal.signal(signal.SIGTERM, sigterm)
    root.handlers[:] = handlers
    root.setLevel(level)


def cli(*argv: str) -> int:
    """main(argv) in this process (output captured with capsys)."""
    from gateway.cli import main

    return main(list(argv))


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """The command as its own process."""
    return subprocess.run(
        [*GATEWAY, *argv], cwd=REPO, capture_output=True, text=True, timeout=60, **kwargs
    )


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


# -- errors and --log-format json ------------------------------------------------------


def test_a_config_error_is_one_json_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[mqtt]\nport = 'x'\n")
    result = run("--log-format", "json", "check", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    doc = json.loads(lines[0])
    assert doc["level"] == "error"
    assert "config error" in doc["msg"]
    assert "mqtt.port" in doc["msg"]


def test_a_config_error_in_text_is_one_plain_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[mqtt]\nport = 'x'\n")
    result = run("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("gateway: config error: mqtt.port")
    assert len(result.stderr.splitlines()) == 1


def _crash(**kwargs: Any) -> int:
    raise RuntimeError("boom")


def test_a_crash_is_logged_as_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway import simulate

    monkeypatch.setattr(simulate, "run", _crash)
    assert cli("--log-format", "json", "simulate", "--count", "1") == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["level"] == "error"
    assert "simulate" in doc["msg"]
    assert "RuntimeError: boom" in doc["exc"]


def test_a_crash_in_text_is_logged_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway import simulate

    monkeypatch.setattr(simulate, "run", _crash)
    assert cli("simulate", "--count", "1") == 1
    err = capsys.readouterr().err
    assert "ERROR" in err
    assert "Traceback" in err
    assert "RuntimeError: boom" in err
