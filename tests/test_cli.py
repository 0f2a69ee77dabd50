"""The ``gateway`` command line: buffer inspection, status, errors, options and help."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.buffer import STORE_FILE, BufferStore
from gateway.records import point_time_ns, split_record
from tests.support import StubHttp, json_response

REPO = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]

NS = 1_795_773_905_582_000_000
MQTT = [f"{NS + i} iiot/node1/temperature {20 + i}" for i in range(3)]
INFLUX = [f"{NS + i} temperature,node=node1,unit=celsius value={20.0 + i!r}" for i in range(2)]


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


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and modification time."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
    }


def stats(capsys: pytest.CaptureFixture[str], directory: Path, *extra: str) -> dict[str, Any]:
    assert cli("buffer", "stats", "--json", "--buffer-dir", str(directory), *extra) == 0
    return dict(json.loads(capsys.readouterr().out))


def export(capsys: pytest.CaptureFixture[str], directory: Path, *extra: str) -> list[Any]:
    assert cli("buffer", "export", "--buffer-dir", str(directory), *extra) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# -- buffer stats|export: read-only ----------------------------------------------------


def test_stats_of_a_closed_store_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_store(tmp_path, MQTT, INFLUX)
    before = listing(tmp_path)
    assert list(before) == [STORE_FILE]
    report = stats(capsys, tmp_path)
    assert report["mqtt"]["records"] == 3
    assert report["influx"]["records"] == 2
    assert report["mqtt"]["bytes"] == before[STORE_FILE][0]
    assert report["mqtt"]["oldest_age_seconds"] > 0
    assert report["dead_letter"] == {"mqtt": 0, "influx": 0}
    assert report["dead_waiting"] == {"mqtt": 0, "influx": 0}
    export(capsys, tmp_path)
    assert listing(tmp_path) == before  # no -wal, no -shm, nothing rewritten


def test_stats_of_a_store_a_gateway_holds_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = write_store(tmp_path, MQTT, INFLUX, close=False)
    try:
        names = set(listing(tmp_path))
        assert {f"{STORE_FILE}-wal", f"{STORE_FILE}-shm"} <= names
        report = stats(capsys, tmp_path)
        assert (report["mqtt"]["records"], report["influx"]["records"]) == (3, 2)
        assert len(export(capsys, tmp_path)) == 5
        # The same from another process, as an operator would run it.
        result = run("buffer", "stats", "--json", "--buffer-dir", str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["mqtt"]["records"] == 3
        assert set(listing(tmp_path)) == names
    finally:
        store.close()


def test_stats_of_a_store_left_by_a_killed_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The files as kill -9 leaves them: the WAL and its index, no checkpoint.
    live = tmp_path / "live"
    store = write_store(live, MQTT, INFLUX, close=False)
    left = tmp_path / "left"
    shutil.copytree(live, left)
    store.close()
    assert {f"{STORE_FILE}-wal", f"{STORE_FILE}-shm"} <= set(listing(left))
    report = stats(capsys, left)
    assert (report["mqtt"]["records"], report["influx"]["records"]) == (3, 2)


def test_a_wal_without_its_index_is_reported_not_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = tmp_path / "live"
    store = write_store(live, MQTT, INFLUX, close=False)
    left = tmp_path / "left"
    shutil.copytree(live, left)
    store.close()
    (left / f"{STORE_FILE}-shm").unlink()
    before = listing(left)
    assert cli("buffer", "stats", "--buffer-dir", str(left)) == 1
    err = capsys.readouterr().err
    assert "-shm" in err
    assert listing(left) == before


@pytest.mark.parametrize("damage", ["random_bytes", "truncated"])
@pytest.mark.parametrize("action", ["stats", "export"])
def test_a_corrupt_store_is_reported_and_left_where_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, action: str
) -> None:
    write_store(tmp_path, [f"{NS + i} iiot/a/n {i}" for i in range(3000)], INFLUX)
    db = tmp_path / STORE_FILE
    if damage == "random_bytes":
        db.write_bytes(os.urandom(64 * 1024))
    else:
        with open(db, "r+b") as f:
            f.truncate(4096)
    before = listing(tmp_path)
    assert cli("buffer", action, "--buffer-dir", str(tmp_path)) == 1
    out, err = capsys.readouterr()
    assert "corrupt" in err
    assert str(db) in err
    assert out == ""
    assert listing(tmp_path) == before  # not moved aside, not replaced


def test_an_unreadable_store_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / STORE_FILE).mkdir()  # there, but not a file SQLite can open
    assert cli("buffer", "stats", "--buffer-dir", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_buffer_dir_is_an_error_and_stays_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    for action in ("stats", "export"):
        assert cli("buffer", action, "--buffer-dir", str(missing)) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert "does not exist" in err
        assert str(missing) in err
    assert not missing.exists()


def test_an_empty_buffer_dir_holds_no_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = stats(capsys, tmp_path)
    assert report["mqtt"] == {"records": 0, "bytes": 0, "oldest_age_seconds": None}
    assert report["influx"]["records"] == 0
    assert report["store_bytes"] == 0
    # In text, an age that does not exist is "-", not Python's None.
    assert cli("buffer", "stats", "--buffer-dir", str(tmp_path)) == 0
    text = capsys.readouterr().out
    assert "oldest_age_seconds=-" in text
    assert "None" not in text
    assert export(capsys, tmp_path) == []
    assert listing(tmp_path) == {}


def test_stats_counts_both_dead_letter_files_and_those_waiting_in_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_store(tmp_path, MQTT, INFLUX)
    (tmp_path / "dead-letter").mkdir()
    (tmp_path / "dead-letter" / "mqtt.txt").write_text("t/x 1 (Invalid topic.)\n")
    report = stats(capsys, tmp_path)
    assert report["dead_letter"] == {"mqtt": 1, "influx": 0}


def test_stats_text_and_sink_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_store(tmp_path, MQTT, INFLUX)
    report = stats(capsys, tmp_path, "--sink", "influx")
    assert set(report) == {"influx", "dead_letter", "dead_waiting", "store_bytes"}
    assert report["influx"]["records"] == 2
    # JSON keeps the per-sink "bytes" (the whole store's size) for old readers.
    assert report["influx"]["bytes"] == report["store_bytes"] > 0
    assert cli("buffer", "stats", "--buffer-dir", str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["mqtt", "records=3"]
    assert lines[1].split()[:2] == ["influx", "records=2"]
    # The store's size once, on its own line, not repeated for every sink.
    assert not any("bytes=" in line for line in lines)
    assert lines[-1].split() == ["store_bytes", str(report["store_bytes"])]


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


# -- buffer export: one format ---------------------------------------------------------


def test_export_is_json_lines_naming_the_sink(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_store(tmp_path, MQTT, INFLUX)
    docs = export(capsys, tmp_path)
    assert [d["sink"] for d in docs] == ["mqtt"] * 3 + ["influx"] * 2
    for doc, value in zip(docs[:3], MQTT, strict=True):
        stamp, topic, payload = split_record(value)
        assert doc == {
            "sink": "mqtt",
            "seq": doc["seq"],
            "received_ns": stamp.wall_ns,
            "stamp": str(stamp.wall_ns),
            "topic": topic,
            "payload": payload,
        }
    for doc, value in zip(docs[3:], INFLUX, strict=True):
        ns = point_time_ns(value)
        assert doc == {
            "sink": "influx",
            "seq": doc["seq"],
            "received_ns": ns,
            "stamp": str(ns),
            "line": f"{value.split(' ', 1)[1]} {ns}",
        }
    assert [d["seq"] for d in docs] == [1, 2, 3, 1, 2]
    assert [d["sink"] for d in export(capsys, tmp_path, "--sink", "influx")] == ["influx"] * 2


def test_export_a_record_that_does_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_store(tmp_path, ["garbage"], ["no-time-stamp"])
    assert export(capsys, tmp_path) == [
        {"sink": "mqtt", "seq": 1, "received_ns": None, "record": "garbage"},
        {"sink": "influx", "seq": 1, "received_ns": None, "record": "no-time-stamp"},
    ]
    report = stats(capsys, tmp_path)
    assert report["mqtt"]["records"] == 1
    assert report["mqtt"]["oldest_age_seconds"] is None


def test_export_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    # Far more than a pipe holds, so the command is still writing when the reader goes.
    write_store(tmp_path, [f"{NS + i} iiot/node1/temperature {i}" for i in range(20_000)], [])
    proc = subprocess.Popen(
        [*GATEWAY, "buffer", "export", "--buffer-dir", str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""
    assert json.loads(first)["sink"] == "mqtt"


def test_simulate_into_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen(
        [*GATEWAY, "simulate", "--interval", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert err == b""


# -- status ----------------------------------------------------------------------------


def status_doc(gateway_id: str = "gw-1", last_error: str = "") -> dict[str, Any]:
    sink = {
        "backlog": 0,
        "oldest_age_s": None,
        "delivered": 5,
        "dropped": 0,
        "dead_letters": 0,
        "last_error": last_error,
    }
    return {
        "gateway": {"id": gateway_id, "uptime_s": 12.0},
        "healthy": False,
        "reasons": ["mqtt [bold]not[/bold] delivering"],
        "source": {
            "kind": "serial",
            "state": "running",
            "packets": 5,
            "last_packet_age_s": 1.5,
            "restarts": {},
        },
        "sinks": {
            "mqtt": {**sink, "target": "broker:1883", "connected": False},
            "influx": {**sink, "target": "http://db:8086 (o/[b])", "healthy": True},
        },
        "values": {"node1": {"temperature": {"value": 24.5, "unit": "[celsius]", "age_s": 1.5}}},
    }


@pytest.fixture
def serve_status() -> Iterator[Callable[[dict[str, Any]], int]]:
    """Serve a document at /api/status; returns the port."""
    servers: list[StubHttp] = []

    def start(doc: dict[str, Any]) -> int:
        servers.append(StubHttp({"/api/status": lambda request: json_response(200, doc)}))
        return servers[-1].port

    yield start
    for server in servers:
        server.close()


def test_status_prints_the_documents_text_literally(
    serve_status: Callable[[dict[str, Any]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # room for every cell on one line
    port = serve_status(status_doc("gw[/]x", "[code:135] not authorised"))
    assert cli("status", "--url", f"http://127.0.0.1:{port}") == 0
    out = capsys.readouterr().out
    assert "gw[/]x" in out
    assert "[code:135]" in out
    assert "mqtt [bold]not[/bold] delivering" in out
    assert "(o/[b])" in out
    assert "[celsius]" in out


def test_status_says_when_the_clock_is_not_known_right(
    serve_status: Callable[[dict[str, Any]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    doc = status_doc()
    doc["clock"] = {
        "synchronized": False,
        "policy": "auto",
        "since": "2026-12-01T10:00:00.000Z",
        "how": "kernel NTP status: not synchronised",
        "points_held": 42,
    }
    port = serve_status(doc)
    assert cli("status", "--url", f"http://127.0.0.1:{port}") == 0
    out = capsys.readouterr().out
    assert "clock NOT known right since 2026-12-01T10:00:00.000Z" in out
    assert "42 InfluxDB point(s) held" in out


@pytest.mark.parametrize(
    "form", ["127.0.0.1:{port}", "http://127.0.0.1:{port}/", "{port}", ":{port}"]
)
def test_status_url_may_be_host_and_port(
    serve_status: Callable[[dict[str, Any]], int],
    capsys: pytest.CaptureFixture[str],
    form: str,
) -> None:
    port = serve_status(status_doc())
    assert cli("status", "--url", form.format(port=port)) == 0
    assert "gw-1" in capsys.readouterr().out


def test_status_of_nothing_listening(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("status", "--url", "127.0.0.1:1") == 1
    err = capsys.readouterr().err
    assert "cannot read http://127.0.0.1:1/api/status" in err


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


def test_run_on_a_buffer_dir_in_use_is_one_line_and_exit_4(tmp_path: Path) -> None:
    from gateway.buffer import lock_dir

    config = tmp_path / "config.toml"
    config.write_text(f"[gateway]\nbuffer_dir = {str(tmp_path / 'buffer')!r}\n")
    # This process holds it, as a running gateway would.
    with lock_dir(tmp_path / "buffer"):
        text = run("run", "--config", str(config))
        as_json = run("--log-format", "json", "run", "--config", str(config))
    assert text.returncode == as_json.returncode == 4
    assert text.stderr == (
        f"gateway: buffer directory {tmp_path / 'buffer'} is in use by another gateway "
        f"(pid {os.getpid()}): stop that one first, or give this one a buffer directory "
        "of its own\n"
    )
    (line,) = as_json.stderr.splitlines()
    assert json.loads(line)["msg"] == text.stderr.removeprefix("gateway: ").rstrip("\n")
    assert sorted(p.name for p in (tmp_path / "buffer").iterdir()) == ["gateway.lock"]


def test_the_unit_does_not_restart_a_gateway_whose_buffer_dir_is_in_use() -> None:
    from gateway.cli.common import EXIT_IN_USE

    unit = (REPO / "ops" / "iiot-gateway.service").read_text().splitlines()
    assert f"RestartPreventExitStatus={EXIT_IN_USE}" in unit


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


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--interval", "-1"),
        ("--interval", "nan"),
        ("--interval", "inf"),
        ("--interval", "-inf"),
        ("--interval", "soon"),
        ("--count", "-1"),
        ("--count", "1.5"),
    ],
)
def test_simulate_refuses_bad_numbers(
    capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    argv = ["simulate", "--count", "1", "--interval", "0", f"{option}={value}"]
    with pytest.raises(SystemExit) as exit_info:
        cli(*argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"argument {option}" in err
    assert repr(value) in err or value in err


def test_simulate_accepts_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("simulate", "--interval", "0", "--count", "0") == 0
    assert capsys.readouterr().out == ""
    assert cli("simulate", "--interval", "0", "--count", "2", "--seed", "1") == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize(
    "kwargs", [{"interval": -1.0}, {"interval": float("nan")}, {"interval": 1e999}, {"count": -1}]
)
def test_simulate_run_refuses_bad_numbers(kwargs: dict[str, Any]) -> None:
    from gateway import simulate

    with pytest.raises(ValueError, match="must be"):
        simulate.run(**{"interval": 0.0, "count": 1, **kwargs})


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help() -> None:
    from gateway.cli import build_parser

    missing = []
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                missing += [
                    f"{parser.prog} {name}" for name in action.choices if not helps.get(name)
                ]
            if not action.help:
                missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_help_is_plain_text() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "``" not in result.stdout
    assert ":class:" not in result.stdout
    for command in ("run", "simulate", "check", "status", "buffer"):
        assert command in result.stdout
    for command in ("buffer", "status", "simulate"):
        sub = run(command, "--help")
        assert sub.returncode == 0
        assert "``" not in sub.stdout


def test_homeassistant_remove_sees_a_running_gateway_by_its_locks(tmp_path: Path) -> None:
    import fcntl

    from gateway.cli.homeassistant import RUN_LOCK_FILE, running_gateway
    from gateway.config import Config
    from gateway.config.sections import GatewaySection, StatusSection

    cfg = Config(
        gateway=GatewaySection(id="gw-lock", buffer_dir=str(tmp_path)),
        status=StatusSection(listen=""),
    )
    assert running_gateway(cfg) == ""  # no files: nothing runs (and nothing is created)
    assert list(tmp_path.iterdir()) == []
    for name in (STORE_FILE, RUN_LOCK_FILE):
        path = tmp_path / name
        path.write_bytes(b"")
        assert running_gateway(cfg) == ""  # a file nobody holds
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # as `gateway run` holds its store
            assert running_gateway(cfg) == f"a process holds the lock on {path}"
        finally:
            os.close(fd)
        path.unlink()


# -- a closed stdout: every command that prints ends quietly ----------------------------


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command with stdout a pipe whose reader is gone before it starts.

    Its first write fails (EPIPE), every time: no race with a reader.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*GATEWAY, *argv],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)


def assert_quiet(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert "failed" not in result.stderr


def offline_config(tmp_path: Path) -> Path:
    """A config whose servers are not there (the commands still print their lines)."""
    from tests.support import base_config, write_config

    cfg = base_config(tmp_path, "pipe", 1, "http://127.0.0.1:1", ["true"])
    return write_config(tmp_path / "c.toml", cfg)


@pytest.mark.parametrize(
    "argv",
    [
        ["simulate", "--count", "3", "--interval", "0"],
        ["buffer", "stats", "--buffer-dir", "{dir}"],
        ["buffer", "stats", "--json", "--buffer-dir", "{dir}"],
        ["buffer", "export", "--buffer-dir", "{dir}"],
        ["buffer", "import", "{export}", "--buffer-dir", "{other}"],
        ["buffer", "resend-dead", "--buffer-dir", "{dir}"],
        ["check", "--config", "{config}"],
        ["--help"],
    ],
    ids=lambda argv: " ".join(a for a in argv if not a.startswith(("{", "-"))),
)
def test_a_command_into_a_closed_pipe_ends_quietly(tmp_path: Path, argv: list[str]) -> None:
    store_dir, other = tmp_path / "buffer", tmp_path / "other"
    write_store(store_dir, MQTT, INFLUX)
    exported = run("buffer", "export", "--buffer-dir", str(store_dir))
    (tmp_path / "export.jsonl").write_text(exported.stdout)
    values = {
        "{dir}": str(store_dir),
        "{other}": str(other),
        "{export}": str(tmp_path / "export.jsonl"),
        "{config}": str(offline_config(tmp_path)),
    }
    assert_quiet(run_into_closed_pipe(*(values.get(a, a) for a in argv)))


def test_status_into_a_closed_pipe_ends_quietly(
    serve_status: Callable[[dict[str, Any]], int],
) -> None:
    port = serve_status(status_doc())
    assert_quiet(run_into_closed_pipe("status", "--url", str(port)))


def test_status_fits_80_columns_without_losing_text() -> None:
    from rich.console import Console

    from gateway.cli.status import _status_tables

    doc = status_doc(last_error="cannot connect to broker.example.internal:8883: timed out")
    doc["sinks"]["influx"]["target"] = "http://influxdb.example.internal:8086 (factory/telemetry)"
    doc["source"]["last_error"] = "cannot start probe-rs: No such file or directory"
    doc["source"]["last_error_since"] = "2026-12-01T10:00:00.000Z"
    doc["alerts"] = [
        {
            "name": "node2_silent",
            "metric": "node2.age",
            "value": 312.0,
            "since": "2026-12-01T10:00:00.000Z",
            "at": "2026-12-01T10:05:00.000Z",
            "firing_for_s": 12.5,
        }
    ]
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, highlight=False)
    for part in _status_tables(doc):
        console.print(part)
    out = buffer.getvalue()
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, out
    assert "…" not in out  # nothing cut off: long text folds instead
    # Each sink's figures are labelled rows, whole words on one line each.
    for label in ("backlog", "delivered", "dead letters", "last error"):
        assert any(line.strip("│ ").startswith(label) for line in lines), label
    words = " ".join(out.split())  # a line of text wraps at word breaks
    assert "cannot start probe-rs: No such file or directory (since 2026-12-01T10:00" in words
    assert "node2_silent" in out
    # A document without unit_symbol (an older gateway): the tag as it is.
    assert "°C" not in out
    assert "[celsius]" in out


def test_status_shows_unit_symbols_and_the_summary(
    serve_status: Callable[[dict[str, Any]], int],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    doc = status_doc()
    doc["healthy"], doc["reasons"] = True, []
    doc["summary"] = "healthy · 1 alert firing"
    doc["gateway"]["version"] = "1.2.3"
    doc["values"]["node1"]["temperature"]["unit_symbol"] = "°C"
    port = serve_status(doc)
    assert cli("status", "--url", str(port)) == 0
    out = capsys.readouterr().out
    assert "healthy · 1 alert firing" in out
    assert "v1.2.3" in out
    assert "°C" in out
