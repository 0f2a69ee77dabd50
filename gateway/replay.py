"""Data replayed with its own time: the capture format, imports, dead letters sent again, replay.

One format carries buffered records between machines and tools: what
``gateway buffer export`` writes, ``gateway buffer import`` reads back into a
store, and ``gateway replay`` delivers. It is JSON lines (README, "Captures and
exports"):

- a record: ``{"sink": "mqtt", "stamp": "<stamp>", "topic": …, "payload": …}``
  or ``{"sink": "influx", "stamp": "<stamp>", "line": "<line protocol> <ns>"}``,
  the stamp as stored (:mod:`gateway.records`: ``<wall_ns>``, or
  ``<wall_ns>~<boot>~<boottime_ns>`` while the clock was not known right);
  ``seq`` and ``received_ns`` are informative and never read back;
- a record that did not parse in the store it came from: ``{"sink": …,
  "record": "<text as stored>"}`` (imported as it was; never replayed);
- a boot whose clock offset the store had learned: ``{"boot": "<key>",
  "boot_id": "<id>", "offset_ns": N}``, so that a stamp taken while the clock
  was wrong can still be put right where the records go.

``gateway replay --now`` also takes raw firmware lines (what ``gateway
simulate`` prints, or a serial capture): they carry no time, so they are
stamped when they are read.

:func:`replay` delivers through the gateway's own sinks over a temporary
store; :func:`read_dead_letters` turns the dead-letter files back into records.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import json
import logging
import operator
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import trio
import trio_asyncio

from gateway.buffer import BufferStore, DiskBuffer
from gateway.clock import ClockTracker, SyncVerdict
from gateway.config import Config, MqttSection
from gateway.deadletter import DEAD_LETTER_DIR, DeadLetterFile
from gateway.errors import leaf
from gateway.metrics import Metrics
from gateway.records import (
    StampResolver,
    boot_key,
    packet_points,
    packet_records,
    parse_stamp,
    split_point,
    stamp_text,
    status_topic,
    tag_suffix,
)
from gateway.sinks import influx, mqtt
from gateway.telemetry import check_plausibility, parse_line

log = logging.getLogger(__name__)

SINKS = ("mqtt", "influx")
DEAD_LETTER_FILES = {"mqtt": mqtt.DEAD_LETTER_FILE, "influx": influx.DEAD_LETTER_FILE}
# The clock tracker of a replay belongs to no real boot: no stamp of a capture
# can be mistaken for one of this machine's boot and "corrected" with the
# offset of the machine that replays it. "replay" has letters no boot key has.
REPLAY_BOOT = "replay-0000-0000-0000-000000000000"
DEFAULT_TIMEOUT = 60.0
SHUTDOWN_GRACE = 5.0
# The MQTT sink announces itself retained under {topic_prefix}/gateway/status.
# A replay must not touch the gateway's own presence, so its sink gets this
# prefix instead, and the replay clears what it left there when it is done.
PRESENCE_SUFFIX = "-replay"
_STAMP = re.compile(r"[0-9]+(?:~[0-9a-z]+~[0-9]+)?")
_DIGITS = re.compile(r"[0-9]+")


class CaptureError(Exception):
    """A line of a capture or export that cannot be used; nothing of the file is."""

    def __init__(self, source: str, lineno: int, message: str) -> None:
        super().__init__(f"{source}:{lineno}: {message}")
        self.source = source
        self.lineno = lineno
        self.message = message


@dataclass(frozen=True, slots=True)
class Boot:
    """A boot named by stamps, and the clock offset (wall − boottime) it learned."""

    key: str
    boot_id: str
    offset_ns: int


@dataclass
class Capture:
    """What a capture or export holds, ready for a buffer.

    Attributes:
        records: sink → its records in the buffer formats of :mod:`gateway.records`.
        boots: the boots whose offsets came with the records.
        unparsed: records that did not parse where they were exported from.
        stamped_now: raw firmware lines stamped at reading (``--now``).
        ignored: raw lines without a JSON object (log lines), skipped as the
            gateway skips them.
        rejected: raw lines the gateway would reject (bad JSON, bad version).
    """

    records: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SINKS})
    boots: list[Boot] = field(default_factory=list)
    unparsed: int = 0
    stamped_now: int = 0
    ignored: int = 0
    rejected: int = 0

    def count(self) -> int:
        """Records for every sink."""
        return sum(len(v) for v in self.records.values())


# -- the format -------------------------------------------------------------------------


def _text(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise ValueError(f'"{key}" must be a string')
    if "\n" in value or "\r" in value:
        raise ValueError(f'"{key}" must not contain a line break')
    return value


def _stamp(doc: Mapping[str, Any]) -> str:
    text = _text(doc, "stamp")
    # The stamp is the first space-separated field of the record: exactly the
    # forms stamp_text writes, so that the record parses as it did.
    if not _STAMP.fullmatch(text):
        raise ValueError(f'"stamp" is not a stamp: {text[:80]!r}')
    return text


def decode_record(doc: Mapping[str, Any]) -> tuple[str, str, bool]:
    """One record of an export: ``(sink, buffered record, parsed)``.

    ``parsed`` is False for a ``"record"`` line (kept verbatim).

    Raises:
        ValueError: the object is not a record of this format (the message says why).
    """
    sink = doc.get("sink")
    if sink not in SINKS:
        raise ValueError(f'"sink" must be "mqtt" or "influx", not {sink!r}')
    if "record" in doc:
        return sink, _text(doc, "record"), False
    stamp = _stamp(doc)
    if sink == "mqtt":
        topic = _text(doc, "topic")
        if not topic or any(c.isspace() for c in topic):
            raise ValueError('"topic" must be non-empty and without spaces')
        return sink, f"{stamp} {topic} {_text(doc, 'payload')}", True
    line = _text(doc, "line")
    body, _, ns = line.rpartition(" ")
    if not _DIGITS.fullmatch(ns) or " " not in body:
        raise ValueError('"line" must be a point and its time: "<measurement,tags> <fields> <ns>"')
    if int(ns) != parse_stamp(stamp).wall_ns:
        raise ValueError(f'the timestamp of "line" ({ns}) is not the stamp\'s time ({stamp})')
    record = f"{stamp} {body}"
    split_point(record)  # the sink's own check; cannot fail after the above
    return sink, record, True


def decode_boot(doc: Mapping[str, Any]) -> Boot:
    """A boot line of an export.

    Raises:
        ValueError: not a boot line of this format.
    """
    key, boot_id, offset = doc.get("boot"), doc.get("boot_id"), doc.get("offset_ns")
    if not isinstance(boot_id, str) or not isinstance(key, str) or boot_key(boot_id) != key:
        raise ValueError('"boot" must be the key of "boot_id" (its first 8 hex digits)')
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise ValueError('"offset_ns" must be an integer')
    return Boot(key, boot_id, offset)


def boot_line(key: str, boot_id: str, offset_ns: int) -> str:
    """A boot's line in an export (see the module doc)."""
    return json.dumps({"boot": key, "boot_id": boot_id, "offset_ns": offset_ns})


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    for lineno, raw in enumerate(data.splitlines(), start=1):
        if raw.strip():
            yield lineno, raw


def _export_doc(raw: bytes) -> dict[str, Any] | None:
    """The line as an export object, or None if it is not one (e.g. a firmware line)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(doc, dict) and ("sink" in doc or "boot" in doc):
        return doc
    return None


def _add(capture: Capture, doc: dict[str, Any], sinks: Iterable[str]) -> bool:
    """Add an export object; False for a record of ``sinks`` that did not parse where it came from.

    Raises:
        ValueError: not an object of the format.
    """
    if "boot" in doc:
        capture.boots.append(decode_boot(doc))
        return True
    sink, record, parsed = decode_record(doc)
    if sink not in sinks:
        return True
    capture.records[sink].append(record)
    if not parsed:
        capture.unparsed += 1
    return parsed


def read_export(data: bytes, source: str) -> Capture:
    """Every record of an export, for ``gateway buffer import`` (validated in full).

    Raises:
        CaptureError: the first line that is not of the format, with its number.
    """
    capture = Capture()
    for lineno, raw in _lines(data):
        doc = _export_doc(raw)
        if doc is None:
            raise CaptureError(source, lineno, "not a line of an export (JSON with a sink)")
        try:
            _add(capture, doc, SINKS)
        except ValueError as exc:
            raise CaptureError(source, lineno, str(exc)) from None
    return capture


def read_capture(
    data: bytes,
    source: str,
    cfg: Config,
    *,
    now: bool,
    sinks: Iterable[str] = SINKS,
    clock: ClockTracker | None = None,
) -> Capture:
    """A capture or an export, for ``gateway replay`` (validated in full).

    Export lines keep their stamps. Raw firmware lines carry no time: without
    ``now`` they are refused; with it each is stamped as it is read (the wall
    clock of this machine, trusted), parsed and checked like the gateway does
    and encoded for both sinks with ``cfg``'s topic prefix and tags.

    Raises:
        CaptureError: the first line that cannot be replayed, with its number.
    """
    wanted = tuple(sinks)
    capture = Capture()
    tags = tag_suffix(cfg.influxdb.tags)
    for lineno, raw in _lines(data):
        doc = _export_doc(raw)
        if doc is not None:
            try:
                parsed = _add(capture, doc, wanted)
            except ValueError as exc:
                raise CaptureError(source, lineno, str(exc)) from None
            if not parsed:
                raise CaptureError(
                    source,
                    lineno,
                    "a record that did not parse where it was exported cannot be replayed "
                    "(remove the line, or import the export to keep it)",
                )
            continue
        if not now:
            what = "a firmware line" if parse_line(raw) is not None else "not a record"
            raise CaptureError(
                source,
                lineno,
                f"{what} without a stamp: a capture to replay must be an export "
                "(gateway buffer export), or give --now to stamp raw lines at replay time",
            )
        if clock is None:
            clock = replay_clock()
        stamp = clock.stamp()
        result = parse_line(raw, stamp.wall_ns)
        if result is None:
            capture.ignored += 1
            continue
        if result.line_reason is not None or result.packet is None:
            capture.rejected += 1
            continue
        packet, _ = check_plausibility(result.packet, cfg.plausibility)
        if packet is None:
            continue
        text = stamp_text(stamp)
        capture.stamped_now += 1
        if "mqtt" in wanted:
            capture.records["mqtt"] += packet_records(packet, cfg.mqtt.topic_prefix, text)
        if "influx" in wanted:
            capture.records["influx"] += packet_points(packet, tags, text)
    return capture


def replay_clock(wall: Callable[[], int] = time.time_ns) -> ClockTracker:
    """A clock tracker that trusts this machine's clock, of a boot no stamp names."""
    verdict = SyncVerdict(True, "raw lines are stamped with this machine's clock (replay --now)")
    clock = ClockTracker("none", boot=REPLAY_BOOT, wall=wall, check=lambda: verdict)
    clock.refresh()
    return clock


# -- dead letters -----------------------------------------------------------------------


@dataclass
class DeadLetters:
    """A dead-letter file read back as records.

    Attributes:
        path: the file.
        records: the records to buffer again.
        skipped: (line number, why) of the lines that cannot be sent again.
    """

    path: Path
    records: list[str] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def dead_letter_path(buffer_dir: Path, sink: str) -> Path:
    """Where the gateway writes ``sink``'s dead letters."""
    return Path(buffer_dir) / DEAD_LETTER_DIR / DEAD_LETTER_FILES[sink]


def _dead_influx(line: str) -> str:
    # The line protocol as it was sent, with the time it was sent with (the
    # resolved one, and ",clock=unsynced" when it was not right): that time is
    # final, so the record's stamp is the plain time.
    body, _, ns = line.rpartition(" ")
    if not _DIGITS.fullmatch(ns) or " " not in body:
        raise ValueError("not line protocol with a timestamp")
    return f"{ns} {body}"


def _dead_mqtt(line: str, now_ns: int) -> str:
    # "<topic> <payload> (<why paho refused it>)", or one JSON object with a
    # topic and a payload. A message carries no time (the payload is the
    # value alone), and neither does its dead letter: it is stamped now.
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("topic"), str):
            topic, payload = doc["topic"], doc.get("payload")
            if topic and " " not in topic and isinstance(payload, str):
                return f"{now_ns} {topic} {payload}"
    head, sep, reason = line.rpartition(" (")
    topic, space, payload = head.partition(" ")
    if not sep or not reason.endswith(")") or not space or not topic:
        raise ValueError('not "<topic> <payload> (<reason>)"')
    return f"{now_ns} {topic} {payload}"


def read_dead_letters(path: Path, sink: str, *, now_ns: int | None = None) -> DeadLetters:
    """The records of a dead-letter file, as the sink's buffer holds them.

    InfluxDB's keep the time they were sent with; MQTT's have none and are
    stamped ``now_ns`` (default: now). Lines that are not what the sink writes
    for a refused record (e.g. a record that never parsed) are skipped.

    Raises:
        OSError: the file cannot be read.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    out = DeadLetters(Path(path))
    for lineno, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            out.records.append(_dead_influx(line) if sink == "influx" else _dead_mqtt(line, now_ns))
        except ValueError as exc:
            out.skipped.append((lineno, str(exc)))
    return out


def set_aside(path: Path, now: float | None = None) -> Path:
    """Rename a dead-letter file that was sent again: ``<name>.resent-<time>``."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    n = 0
    while True:
        aside = path.with_name(f"{path.name}.resent-{stamp}" + (f"-{n}" if n else ""))
        if not aside.exists():
            break
        n += 1
    path.rename(aside)
    return aside


# -- replay -----------------------------------------------------------------------------


@dataclass
class SinkOutcome:
    """How a replay went for one sink.

    Attributes:
        records: records to deliver.
        left: records not acknowledged when the replay ended.
        dead_letters: records the server refused for good (in the dead-letter dir).
        unsynced: InfluxDB points whose stamp cannot be put right (their boot's
            offset is not in the capture): sent with their best-known time,
            tagged ``clock=unsynced``.
        error: the sink's last error, when it did not finish.
    """

    records: int
    left: int = 0
    dead_letters: int = 0
    unsynced: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        """Every record acknowledged, none refused."""
        return self.left == 0 and self.dead_letters == 0


def unsynced_points(values: Iterable[str], offsets: Mapping[str, int]) -> int:
    """Points whose right time cannot be known: stamped while the clock was wrong, no offset."""
    n = 0
    for value in values:
        stamp = parse_stamp(value.split(" ", 1)[0])
        n += not stamp.synced and stamp.boot not in offsets
    return n


async def _drain(buffer: DiskBuffer, stall_after: float, stop: Callable[[], None]) -> None:
    """Wait until ``buffer`` is empty, or until it made no progress for ``stall_after`` s; stop.

    A bound on progress, not on the whole replay: a long capture over a slow
    link may take far longer than that while records keep being acknowledged,
    but a server that is unreachable ends it after ``stall_after``.
    """
    try:
        while (left := buffer.count.value) > 0:
            with trio.move_on_after(stall_after) as waiting:
                await buffer.count.wait_value(functools.partial(operator.gt, left))
            if waiting.cancelled_caught:
                return
    finally:
        stop()


async def _clear_presence(cfg: MqttSection) -> None:
    """Delete the retained presence the replay's MQTT sink left (an empty retained message)."""

    async def clear() -> None:
        async with aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id,
            username=cfg.username or None,
            password=cfg.password or None,
            timeout=cfg.connect_timeout,
            tls_context=mqtt.tls_context(cfg),
        ) as client:
            await client.publish(status_topic(cfg.topic_prefix), b"", qos=1, retain=True)

    try:
        with trio.fail_after(cfg.connect_timeout + mqtt.STATUS_TIMEOUT):
            await trio_asyncio.aio_as_trio(clear)()
    except* (aiomqtt.MqttError, OSError, trio.TooSlowError) as group:
        log.warning(
            "replay: could not clear its presence topic %s (%s)",
            status_topic(cfg.topic_prefix),
            mqtt.describe_error(leaf(group)),
        )


def replay_mqtt_section(cfg: MqttSection) -> MqttSection:
    """``[mqtt]`` as a replay uses it: not retained, its own client id and presence topic.

    History must never become the retained "current" value; a client id of its
    own keeps a running gateway connected (a broker drops the older of two
    sessions with one id).
    """
    return dataclasses.replace(
        cfg,
        retain=False,
        client_id=f"{cfg.client_id}-replay",
        topic_prefix=cfg.topic_prefix + PRESENCE_SUFFIX,
    )


def _asyncio_exception(loop: Any, context: dict[str, Any]) -> None:
    # As the daemon's handler: a broker socket that died under aiomqtt's
    # add_writer (EBADF) while the sink reconnects is harmless; the rest is said.
    exc = context.get("exception")
    if isinstance(exc, asyncio.CancelledError):
        return
    if isinstance(exc, OSError) and exc.errno == errno.EBADF:
        log.debug("asyncio: %s (%r)", context.get("message"), exc)
        return
    log.warning("asyncio: %s (%r)", context.get("message"), exc)


async def replay(
    cfg: Config,
    capture: Capture,
    *,
    stall_after: float = DEFAULT_TIMEOUT,
    dead_letter_dir: Path,
) -> dict[str, SinkOutcome]:
    """Deliver ``capture`` to the broker and the database with the stamps it carries.

    The records go into a temporary store and out through the gateway's own
    sinks, so delivery is what the daemon does (windows, retries, splitting a
    refused batch, dead letters), with these differences: MQTT messages are
    not retained, under a client id of their own (:func:`replay_mqtt_section`);
    InfluxDB points get the time of their stamp, corrected with the capture's
    boot offsets where a stamp was taken while the clock was wrong, else their
    best-known time tagged ``clock=unsynced``; nothing is held for a clock.
    Only sinks with records connect.

    Args:
        cfg: the configuration naming broker, database, tags.
        capture: what to deliver (:func:`read_capture`).
        stall_after: seconds a sink may go without an acknowledgement before
            the replay gives up on it (``--timeout``).
        dead_letter_dir: where records refused for good are written (created
            only when there are some).

    Returns:
        Each sink's outcome (only sinks with records).
    """
    wanted = [s for s in SINKS if capture.records[s]]
    if not wanted:
        return {}
    outcome = {s: SinkOutcome(len(capture.records[s])) for s in wanted}
    mqtt_cfg = replay_mqtt_section(cfg.mqtt)
    # Everything is in the buffer already: waiting for a fuller batch gains nothing.
    influx_cfg = dataclasses.replace(cfg.influxdb, flush_interval=0.0)
    metrics = Metrics()
    offsets = {b.key: b.offset_ns for b in capture.boots}
    # Its boot is no stamp's: only the capture's offsets correct a stamp.
    resolver = StampResolver(ClockTracker("none", boot=REPLAY_BOOT), offsets)
    if "influx" in outcome:
        outcome["influx"].unsynced = unsynced_points(capture.records["influx"], offsets)
    with tempfile.TemporaryDirectory(prefix="gateway-replay-") as tmp:
        # Bounds that hold the whole capture: a replay drops nothing.
        bounds = {s: max(1, len(capture.records[s])) for s in SINKS}
        store = await BufferStore.open(Path(tmp), bounds, durability="normal", ack_delay=0)
        try:
            buffers = store.buffers
            await store.commit({buffers[s]: capture.records[s] for s in wanted})
            sinks: dict[str, mqtt.MqttSink | influx.InfluxSink] = {}
            for name in wanted:
                dead = DeadLetterFile(dead_letter_dir / DEAD_LETTER_FILES[name])
                if name == "mqtt":
                    sinks[name] = mqtt.MqttSink(mqtt_cfg, buffers[name], metrics, dead)
                else:
                    sinks[name] = influx.InfluxSink(
                        influx_cfg, buffers[name], metrics, dead, resolver=resolver
                    )
            async with trio_asyncio.open_loop() as loop:
                loop.set_exception_handler(_asyncio_exception)
                async with trio.open_nursery() as nursery:
                    for name in wanted:
                        await nursery.start(sinks[name].run)
                    async with trio.open_nursery() as drains:
                        for name in wanted:
                            drains.start_soon(_drain, buffers[name], stall_after, sinks[name].stop)
                    # Stopped: the sinks land what is in flight, then return.
                    nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
                if metrics.mqtt.connects:
                    await _clear_presence(mqtt_cfg)
            for name in wanted:
                figures = metrics.sink(name)
                outcome[name].left = buffers[name].count.value
                outcome[name].dead_letters = figures.dead_letters
                outcome[name].error = sinks[name].last_error
        finally:
            store.close()
    return outcome
