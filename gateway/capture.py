"""The capture format (exports, imports, replays) and dead letters read back as records.

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

:func:`read_capture` reads the format; :func:`read_dead_letters` turns the
dead-letter files back into records; :mod:`gateway.replay` delivers them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.clock import ClockTracker, SyncVerdict, boot_key
from gateway.config import Config
from gateway.deadletter import DEAD_LETTER_DIR
from gateway.records import (
    packet_points,
    packet_records,
    parse_stamp,
    split_point,
    stamp_text,
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
            if parse_line(raw) is not None:
                why = (
                    "a firmware line without a stamp: a capture to replay must be an export "
                    "(gateway buffer export), or give --now to stamp raw lines at replay time"
                )
            else:
                # Neither kind of line replay knows: say what it expected, not
                # a sentence built from the two cases.
                why = (
                    "neither a record of an export (gateway buffer export) nor a firmware "
                    "line; give an export, or a firmware capture with --now"
                )
            raise CaptureError(source, lineno, why)
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
