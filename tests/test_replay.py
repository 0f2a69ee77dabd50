"""Data with its own time: export → import, dead letters sent again, `gateway replay`.

The commands run as processes, as an operator runs them; replays go to a real
Mosquitto and a real TSDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway.buffer import BufferStore, Record, read_store
from gateway.capture import CaptureError, decode_record, read_capture, read_export
from gateway.clock import boot_key
from gateway.records import point_line
from gateway.simulate import NodeSimulator
from tests.services import Broker, Tsdb, free_port
from tests.support import (
    StubHttp,
    Subscriber,
    base_config,
    json_response,
    retained,
    wait_until,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent
GATEWAY = [sys.executable, "-m", "gateway"]

# Within the TSDB's retention and well in the past: a replay carries history.
T0 = (time.time_ns() // 1_000_000_000 - 3600) * 1_000_000_000
SEC = 1_000_000_000
BOOT_KNOWN = "0123abcd-0000-4000-8000-000000000001"  # its offset is in the store
BOOT_LOST = "fedc9876-0000-4000-8000-000000000002"  # it never saw a right clock
OFFSET = T0 - 5 * SEC  # wall − boottime of BOOT_KNOWN


def on_disk(store: BufferStore, name: str) -> list[Record]:
    """Every record waiting in buffer ``name``, read from the file (all of them are written)."""
    buf = store.buffers[name]
    return store.read_sync(buf, buf.head, buf.tail)


def run(
    *argv: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A ``gateway`` command as its own process."""
    return subprocess.run(
        [*GATEWAY, *argv],
        cwd=REPO,
        capture_output=True,
        input=None if stdin is None else stdin.decode(),
        text=True,
        timeout=timeout,
    )


def unsynced(wall_ns: int, boot_id: str, boottime_ns: int) -> str:
    """A stamp taken while the clock was not known right."""
    return f"{wall_ns}~{boot_key(boot_id)}~{boottime_ns}"


def sample_records(prefix: str, tag: str) -> dict[str, list[str]]:
    """Records of every kind of stamp, for both sinks, in the buffer formats.

    Per sink: two with a right clock, one of a boot whose offset is known, one
    of a boot that never learned one.
    """
    stamps = [
        str(T0),
        str(T0 + SEC),
        # Wall clock 100 s behind; right time = boottime + OFFSET = T0 + 2 s.
        unsynced(T0 - 100 * SEC, BOOT_KNOWN, 7 * SEC),
        unsynced(T0 + 3 * SEC, BOOT_LOST, 9 * SEC),
    ]
    return {
        "mqtt": [f"{s} {prefix}/node1/temperature {20 + i}" for i, s in enumerate(stamps)],
        "influx": [
            f"{s} temperature,node=node1,unit=celsius,testid={tag} value={20.0 + i!r}"
            for i, s in enumerate(stamps)
        ],
    }


def write_store(directory: Path, batches: dict[str, list[str]], boots: dict[str, int]) -> None:
    """A store holding ``batches`` and ``boots`` (id → offset), written by the gateway's code."""
    store = BufferStore(directory, {"mqtt": 10_000, "influx": 10_000}, ack_delay=0)

    async def fill() -> None:
        await store.commit({store.buffers[name]: values for name, values in batches.items()})
        for boot_id, offset in boots.items():
            assert await store.save_boot(boot_id, offset)

    trio.run(fill)
    store.close()


def export(buffer_dir: Path, *extra: str) -> list[dict[str, Any]]:
    result = run("buffer", "export", "--buffer-dir", str(buffer_dir), *extra)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def without_seq(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in doc.items() if k != "seq"} for doc in docs]


def write_lines(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return path


def stored(buffer_dir: Path) -> dict[str, list[str]]:
    return {sink: [r.value for r in recs] for sink, recs in read_store(buffer_dir).items()}


# -- export → import -------------------------------------------------------------------


def test_export_import_round_trip_keeps_stamps_and_boots(tmp_path: Path) -> None:
    batches = sample_records("iiot", "x")
    batches["mqtt"].append("garbage")  # a record that does not parse travels as it is
    write_store(tmp_path / "a", batches, {BOOT_KNOWN: OFFSET, BOOT_LOST: None})  # type: ignore[dict-item]
    first = export(tmp_path / "a")
    # The boot with an offset comes first; the one without has nothing to tell.
    assert first[0] == {"boot": boot_key(BOOT_KNOWN), "boot_id": BOOT_KNOWN, "offset_ns": OFFSET}
    assert [d.get("sink") for d in first[1:]] == ["mqtt"] * 5 + ["influx"] * 4
    capture = write_lines(tmp_path / "export.jsonl", first)

    result = run("buffer", "import", str(capture), "--buffer-dir", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    assert "imported 5 MQTT message(s) and 4 point(s)" in result.stdout
    assert without_seq(export(tmp_path / "b")) == without_seq(first)
    assert stored(tmp_path / "b") == batches
    # As a gateway starting on it sees it: the records to deliver, the boot to correct with.
    store = BufferStore(tmp_path / "b", {"mqtt": 100, "influx": 100}, ack_delay=0)
    try:
        assert [r.value for r in on_disk(store, "influx")] == batches["influx"]
        assert store.buffers["mqtt"].count.value == 5
        assert store.boot_offsets() == {boot_key(BOOT_KNOWN): (BOOT_KNOWN, OFFSET)}
    finally:
        store.close()

    # Into a store that holds records already: appended after them, in order
    # (the same file needs --force: see the test below).
    result = run("buffer", "import", str(capture), "--force", "--buffer-dir", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr
    again = stored(tmp_path / "b")
    assert again == {sink: values * 2 for sink, values in batches.items()}


def test_importing_the_same_export_twice_is_refused_unless_forced(tmp_path: Path) -> None:
    batches = sample_records("iiot", "x")
    write_store(tmp_path / "a", batches, {})
    capture = write_lines(tmp_path / "export.jsonl", export(tmp_path / "a"))
    target = ["--buffer-dir", str(tmp_path / "b")]
    assert run("buffer", "import", str(capture), *target).returncode == 0

    refused = run("buffer", "import", str(capture), *target)
    assert refused.returncode == 1
    assert "this file was imported into influx, mqtt before" in refused.stderr
    assert "nothing was imported" in refused.stderr
    assert "--force" in refused.stderr
    assert stored(tmp_path / "b") == batches  # not doubled
    # The same bytes through stdin are the same file.
    data = capture.read_bytes()
    assert run("buffer", "import", "-", *target, stdin=data).returncode == 1

    forced = run("buffer", "import", str(capture), "--force", *target)
    assert forced.returncode == 0, forced.stderr
    assert stored(tmp_path / "b") == {sink: values * 2 for sink, values in batches.items()}


def test_one_sink_of_an_export_then_the_other_is_not_a_second_import(tmp_path: Path) -> None:
    batches = sample_records("iiot", "x")
    write_store(tmp_path / "a", batches, {})
    capture = write_lines(tmp_path / "export.jsonl", export(tmp_path / "a"))
    target = ["--buffer-dir", str(tmp_path / "b")]
    assert run("buffer", "import", str(capture), "--sink", "mqtt", *target).returncode == 0
    assert run("buffer", "import", str(capture), "--sink", "influx", *target).returncode == 0
    assert stored(tmp_path / "b") == batches
    assert run("buffer", "import", str(capture), "--sink", "influx", *target).returncode == 1


def test_import_from_stdin_and_one_sink(tmp_path: Path) -> None:
    write_store(tmp_path / "a", sample_records("iiot", "x"), {})
    data = run("buffer", "export", "--buffer-dir", str(tmp_path / "a")).stdout.encode()
    result = run(
        "buffer", "import", "-", "--sink", "influx", "--buffer-dir", str(tmp_path / "b"), stdin=data
    )
    assert result.returncode == 0, result.stderr
    assert stored(tmp_path / "b") == {"mqtt": [], "influx": sample_records("iiot", "x")["influx"]}


def test_a_bad_line_imports_nothing_and_is_named(tmp_path: Path) -> None:
    write_store(tmp_path / "a", sample_records("iiot", "x"), {})
    docs = export(tmp_path / "a")
    docs[5]["line"] = docs[5]["line"].rsplit(" ", 1)[0]  # a point without its time
    capture = write_lines(tmp_path / "bad.jsonl", docs)
    target = tmp_path / "b"
    write_store(target, {"mqtt": ["1 kept/a 1"]}, {})
    before = stored(target)

    result = run("buffer", "import", str(capture), "--buffer-dir", str(target))
    assert result.returncode == 1
    assert f"{capture}:6:" in result.stderr
    assert "nothing was imported" in result.stderr
    assert stored(target) == before


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"sink": "kafka", "stamp": "1", "topic": "a", "payload": "1"}, '"sink"'),
        ({"sink": "mqtt", "stamp": "1 2", "topic": "a", "payload": "1"}, "not a stamp"),
        ({"sink": "mqtt", "stamp": "12~ab", "topic": "a", "payload": "1"}, "not a stamp"),
        ({"sink": "mqtt", "topic": "a", "payload": "1"}, '"stamp"'),
        ({"sink": "mqtt", "stamp": "1", "topic": "a b", "payload": "1"}, "without spaces"),
        ({"sink": "mqtt", "stamp": "1", "topic": "a", "payload": "1\n2"}, "line break"),
        ({"sink": "mqtt", "stamp": "1", "topic": "a", "payload": 1}, "string"),
        ({"sink": "influx", "stamp": "5", "line": "m,t=1 value=1 6"}, "not the stamp's time"),
        ({"sink": "influx", "stamp": "5", "line": "m,t=1 5"}, "a point and its time"),
    ],
)
def test_what_an_export_line_must_be(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_record(doc)


def test_an_export_line_decodes_to_the_buffered_record() -> None:
    stamp = unsynced(T0, BOOT_KNOWN, 7)
    assert decode_record({"sink": "mqtt", "stamp": stamp, "topic": "a/b", "payload": "2 3"}) == (
        "mqtt",
        f"{stamp} a/b 2 3",
        True,
    )
    line = {"sink": "influx", "stamp": stamp, "line": f"m,t=a\\ b value=1.0 {T0}"}
    assert decode_record(line) == ("influx", f"{stamp} m,t=a\\ b value=1.0", True)
    assert decode_record({"sink": "influx", "record": "x"}) == ("influx", "x", False)
    with pytest.raises(CaptureError, match=r"<t>:2: not a line of an export"):
        read_export(
            b'{"boot": "0123abcd", "boot_id": "' + BOOT_KNOWN.encode() + b'", '
            b'"offset_ns": 1}\n{"v": 1, "seq": 1}\n',
            "<t>",
        )


def test_import_refuses_a_store_a_gateway_holds_open(tmp_path: Path) -> None:
    write_store(tmp_path / "a", sample_records("iiot", "x"), {})
    capture = write_lines(tmp_path / "export.jsonl", export(tmp_path / "a"))
    target = tmp_path / "b"
    store = BufferStore(target, {"mqtt": 100, "influx": 100}, ack_delay=0)
    try:
        result = run("buffer", "import", str(capture), "--buffer-dir", str(target))
        assert result.returncode == 1
        assert "open in another process" in result.stderr
        assert "stop it first" in result.stderr
    finally:
        store.close()
    assert stored(target) == {"mqtt": [], "influx": []}


def test_import_names_the_pid_of_the_gateway_holding_the_store(tmp_path: Path) -> None:
    from gateway.buffer import lock_dir

    write_store(tmp_path / "a", sample_records("iiot", "x"), {})
    capture = write_lines(tmp_path / "export.jsonl", export(tmp_path / "a"))
    target = tmp_path / "b"
    dead = target / "dead-letter" / "influx.lp"
    dead.parent.mkdir(parents=True)
    dead.write_text(f"m,t=1 value=1 {T0}\n")
    # What `gateway run` holds: the directory's lock, then the store.
    with lock_dir(target):
        store = BufferStore(target, {"mqtt": 100, "influx": 100}, ack_delay=0)
        try:
            result = run("buffer", "import", str(capture), "--buffer-dir", str(target))
            resend = run("buffer", "resend-dead", "--buffer-dir", str(target))
        finally:
            store.close()
    assert result.returncode == 1
    assert f"open in another process (a running gateway, pid {os.getpid()}); stop it first" in (
        result.stderr
    )
    assert resend.returncode == 1
    assert f"(a running gateway, pid {os.getpid()}); stop it first" in resend.stderr
    assert stored(target) == {"mqtt": [], "influx": []}
    assert dead.exists()  # not set aside: it was not sent again


def test_import_never_makes_a_buffer_drop_records(tmp_path: Path) -> None:
    docs = [
        {"sink": "mqtt", "stamp": str(T0 + i), "topic": "a/b", "payload": str(i)} for i in range(5)
    ]
    capture = write_lines(tmp_path / "export.jsonl", docs)
    config = write_config(
        tmp_path / "config.toml",
        {"gateway": {"buffer_dir": str(tmp_path / "b")}, "mqtt": {"buffer_max_messages": 4}},
    )
    result = run("buffer", "import", str(capture), "--config", str(config))
    assert result.returncode == 1
    assert "exceed the buffer's bound of 4" in result.stderr
    assert stored(tmp_path / "b") == {"mqtt": [], "influx": []}


# -- dead letters ----------------------------------------------------------------------


def test_dead_letters_go_back_into_the_buffer_with_their_time(tmp_path: Path) -> None:
    from gateway.deadletter import DEAD_LETTER_DIR

    buffer_dir = tmp_path / "buffer"
    dead = buffer_dir / DEAD_LETTER_DIR
    dead.mkdir(parents=True)
    # As the sinks write them: InfluxDB's line protocol as sent, with its time
    # (and the clock=unsynced tag when that time was not right); MQTT's
    # "topic payload (why)"; and a record that never parsed, which cannot be sent.
    body = "temperature,node=node1,unit=celsius value=21.5"
    lines = [
        point_line(body, T0),
        point_line(body, T0 + SEC, unsynced=True),
        "no-time-stamp",
    ]
    (dead / "influx.lp").write_text("".join(line + "\n" for line in lines))
    (dead / "mqtt.txt").write_text("iiot/node1/temperature 21.5 (Invalid topic.)\n")

    before = time.time_ns()
    result = run("buffer", "resend-dead", "--buffer-dir", str(buffer_dir))
    after = time.time_ns()
    assert result.returncode == 0, result.stderr
    assert f"{dead / 'influx.lp'}:3: not line protocol with a timestamp" in result.stderr
    records = stored(buffer_dir)
    assert records["influx"] == [
        f"{T0} {body}",
        f"{T0 + SEC} temperature,node=node1,unit=celsius,clock=unsynced value=21.5",
    ]
    # An MQTT dead letter has no time: it is stamped when it is sent again.
    [message] = records["mqtt"]
    stamp, topic, payload = message.split(" ")
    assert before <= int(stamp) <= after
    assert (topic, payload) == ("iiot/node1/temperature", "21.5")
    # The files are set aside: a second run sends nothing twice.
    names = sorted(p.name for p in dead.iterdir())
    assert [n.split(".resent-")[0] for n in names] == ["influx.lp", "mqtt.txt"]
    result = run("buffer", "resend-dead", "--buffer-dir", str(buffer_dir))
    assert result.returncode == 0, result.stderr
    assert "no dead letters" in result.stdout
    assert stored(buffer_dir) == records


def test_resend_dead_refuses_while_a_gateway_holds_the_store(tmp_path: Path) -> None:
    buffer_dir = tmp_path / "buffer"
    (buffer_dir / "dead-letter").mkdir(parents=True)
    dead = buffer_dir / "dead-letter" / "influx.lp"
    dead.write_text(point_line("m,node=a value=1.0", T0) + "\n")
    store = BufferStore(buffer_dir, {"mqtt": 100, "influx": 100}, ack_delay=0)
    try:
        result = run("buffer", "resend-dead", "--sink", "influx", "--buffer-dir", str(buffer_dir))
    finally:
        store.close()
    assert result.returncode == 1
    assert "stop it first" in result.stderr
    assert dead.exists()
    assert stored(buffer_dir)["influx"] == []


# -- replay ----------------------------------------------------------------------------


def replay_config(tmp_path: Path, test_id: str, mqtt_port: int, tsdb: Tsdb) -> Path:
    cfg = base_config(tmp_path, test_id, mqtt_port, tsdb.url, ["true"])
    return write_config(tmp_path / "config.toml", cfg)


def pub_retained(port: int, topic: str, payload: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-m", payload, "-r"],
        check=True,
        timeout=10,
    )


def by_ts(points: list[tuple[str, str, str, float, int]]) -> dict[float, int]:
    """Value → timestamp (ms)."""
    return {value: ts for _, _, _, value, ts in points}


def test_replay_of_an_export_keeps_time_and_never_retains(
    tmp_path: Path, broker: Broker, tsdb: Tsdb, test_id: str
) -> None:
    batches = sample_records(test_id, test_id)
    write_store(tmp_path / "site", batches, {BOOT_KNOWN: OFFSET})
    capture = write_lines(tmp_path / "usb-stick.jsonl", export(tmp_path / "site"))
    config = replay_config(tmp_path, test_id, broker.port, tsdb)
    # The site's gateway is online on this broker; a replay must leave it so.
    pub_retained(broker.port, f"{test_id}/gateway/status", "online")
    sub = Subscriber(broker.port, f"{test_id}/#")
    try:
        result = run("replay", str(capture), "--config", str(config), "--timeout", "30")
        assert result.returncode == 0, result.stderr
        assert "mqtt: 4 of 4 MQTT message(s) delivered" in result.stdout
        assert "influx: 4 of 4 point(s) delivered (1 with their best-known time" in result.stdout
        expected = [(f"{test_id}/node1/temperature", str(20 + i)) for i in range(4)]
        assert sub.wait_for(lambda m: len(m) >= 5, 30), sub.snapshot()
        messages = [m for m in sub.snapshot() if m[0] != f"{test_id}/gateway/status"]
        assert messages == expected
    finally:
        sub.close()
    # Nothing of the history is retained, the gateway's presence is untouched,
    # and the replay's own presence topic is cleared.
    assert retained(broker.port, f"{test_id}/#") == {f"{test_id}/gateway/status": "online"}
    assert retained(broker.port, f"{test_id}-replay/#") == {}

    assert wait_until(lambda: len(tsdb.points(testid=test_id)) == 4, 30)
    assert by_ts(tsdb.points(testid=test_id)) == {
        20.0: T0 // 1_000_000,
        21.0: (T0 + SEC) // 1_000_000,
        22.0: (7 * SEC + OFFSET) // 1_000_000,  # corrected with the boot's offset
        23.0: (T0 + 3 * SEC) // 1_000_000,  # best known, and said so
    }
    clocks = {
        value: series["metric"].get("clock")  # type: ignore[attr-defined]
        for series in tsdb.export(testid=test_id)
        for value in series["values"]  # type: ignore[attr-defined]
    }
    assert clocks == {20.0: None, 21.0: None, 22.0: None, 23.0: "unsynced"}


def test_replay_of_raw_lines_needs_now(
    tmp_path: Path, broker: Broker, tsdb: Tsdb, test_id: str
) -> None:
    sim = NodeSimulator(seed=3)
    lines = [json.dumps(sim.packet(uptime_ms=1000 * i)) for i in range(3)]
    capture = tmp_path / "capture.txt"
    capture.write_text("probe-rs: attached\n" + "".join(line + "\n" for line in lines))
    config = replay_config(tmp_path, test_id, broker.port, tsdb)

    refused = run("replay", str(capture), "--config", str(config))
    assert refused.returncode == 1
    assert f"{capture}:1: neither a record of an export" in refused.stderr
    assert "nor a firmware line" in refused.stderr
    assert "--now" in refused.stderr
    capture.write_text("".join(line + "\n" for line in lines))
    refused = run("replay", str(capture), "--config", str(config))
    assert refused.returncode == 1
    assert f"{capture}:1: a firmware line without a stamp" in refused.stderr
    assert retained(broker.port, f"{test_id}/#") == {}

    per_packet = sum(len(v) for v in sim.packet(uptime_ms=0).values() if isinstance(v, dict))
    sub = Subscriber(broker.port, f"{test_id}/#")
    before_ms = time.time_ns() // 1_000_000
    try:
        result = run("replay", str(capture), "--now", "--config", str(config), "--timeout", "30")
        after_ms = time.time_ns() // 1_000_000
        assert result.returncode == 0, result.stderr
        assert sub.wait_for(lambda m: len(m) >= 3 * per_packet, 30), sub.snapshot()
    finally:
        sub.close()
    assert wait_until(lambda: len(tsdb.points(testid=test_id)) >= 3 * per_packet, 30)
    # Stamped at replay time (the TSDB keeps milliseconds: they may coincide).
    assert all(before_ms <= ts <= after_ms for *_, ts in tsdb.points(testid=test_id))


def test_raw_lines_get_one_increasing_stamp_each(tmp_path: Path) -> None:
    from gateway.config import load_config

    config = write_config(tmp_path / "config.toml", {"mqtt": {"topic_prefix": "p"}})
    cfg = load_config(config)
    sim = NodeSimulator(seed=3)
    lines = [json.dumps(sim.packet(uptime_ms=1000 * i)).encode() for i in range(3)]
    data = b"\n".join([b"a log line", *lines, b'{"v": 99}'])
    capture = read_capture(data, "<t>", cfg, now=True)
    assert (capture.stamped_now, capture.ignored, capture.rejected) == (3, 1, 1)
    stamps = [int(r.split(" ", 1)[0]) for r in capture.records["influx"]]
    per_line = sorted(set(stamps))
    assert len(per_line) == 3
    assert stamps == sorted(stamps)
    assert all(r.split(" ")[1].startswith("p/") for r in capture.records["mqtt"])
    # An export's records among them keep their stamps.
    doc = {"sink": "mqtt", "stamp": str(T0), "topic": "p/a/b", "payload": "1"}
    mixed = read_capture(json.dumps(doc).encode() + b"\n" + lines[0], "<t>", cfg, now=True)
    assert mixed.records["mqtt"][0] == f"{T0} p/a/b 1"


def test_replay_fails_when_the_broker_is_down(tmp_path: Path, tsdb: Tsdb, test_id: str) -> None:
    write_store(tmp_path / "site", sample_records(test_id, test_id), {})
    capture = write_lines(tmp_path / "export.jsonl", export(tmp_path / "site"))
    config = replay_config(tmp_path, test_id, free_port(), tsdb)
    dead_letters = tmp_path / "replay-dead-letter"
    result = run(
        "replay",
        str(capture),
        "--config",
        str(config),
        "--timeout",
        "2",
        "--dead-letter-dir",
        str(dead_letters),
    )
    assert result.returncode == 1
    assert "mqtt: 4 of 4 MQTT message(s) not acknowledged by 127.0.0.1:" in result.stderr
    assert "within --timeout 2 s" in result.stderr
    assert "refused" in result.stderr.lower() or "connect" in result.stderr.lower()
    # The database was up: its points are in.
    assert "influx: 4 of 4 point(s) delivered" in result.stdout
    assert not dead_letters.exists()


def test_replay_of_nothing_or_garbage(tmp_path: Path, tsdb: Tsdb, test_id: str) -> None:
    config = replay_config(tmp_path, test_id, free_port(), tsdb)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = run("replay", str(empty), "--config", str(config))
    assert result.returncode == 1
    assert "nothing to replay" in result.stderr
    unparsed = write_lines(tmp_path / "u.jsonl", [{"sink": "mqtt", "seq": 1, "record": "x"}])
    result = run("replay", str(unparsed), "--config", str(config))
    assert result.returncode == 1
    assert f"{unparsed}:1: a record that did not parse" in result.stderr


def test_replay_says_what_the_database_refused_for_good(tmp_path: Path, test_id: str) -> None:
    # No real server refuses a point for good on demand (the TSDB takes
    # anything): this one answers every write as InfluxDB answers a bad point.
    refuse = {"code": "invalid", "message": "field type conflict"}
    server = StubHttp({"/api/v2/write": lambda request: json_response(400, refuse)})
    try:
        write_store(tmp_path / "site", sample_records(test_id, test_id), {})
        capture = write_lines(tmp_path / "export.jsonl", export(tmp_path / "site"))
        cfg = base_config(tmp_path, test_id, free_port(), server.url, ["true"])
        config = write_config(tmp_path / "config.toml", cfg)
        dead_letters = tmp_path / "refused"
        result = run(
            "replay",
            str(capture),
            "--sink",
            "influx",
            "--config",
            str(config),
            "--dead-letter-dir",
            str(dead_letters),
        )
    finally:
        server.close()
    assert result.returncode == 1
    assert f"influx: 4 record(s) refused for good, written to {dead_letters}" in result.stderr
    assert "mqtt" not in result.stdout  # --sink influx: the broker is never asked
    lines = (dead_letters / "influx.lp").read_text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [
        str(T0),
        str(T0 + SEC),
        str(T0 - 100 * SEC),  # no offset for its boot in this export: best known
        str(T0 + 3 * SEC),
    ]
