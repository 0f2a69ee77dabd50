"""Telemetry lines → packets: the v1 line protocol, plausibility, sequence gaps.

A line may carry a probe-rs/defmt prefix and suffix and ANSI colours; the JSON
object is the text from the first ``{`` to the last ``}``. Lines without an
object (logs, flashing progress) are ignored. Nothing here raises on bad input:
a bad line yields a rejection reason, a bad metric is skipped with a reason.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

Number = int | float
Scalar = int | float | str | bool | None

PROTOCOL_VERSION = 1
# Units of the metrics Node 1 and Node 2 send (the InfluxDB `unit` tag, the page).
UNITS: dict[str, str] = {
    "temperature": "celsius",
    "humidity": "percent",
    "gas_resistance": "ohms",
    "pressure": "hpa",
    "rssi": "dbm",
    "snr": "db",
}
# How each unit is written for people (the status page, Home Assistant's
# unit_of_measurement); the tags above stay as they are in the data.
UNIT_SYMBOLS: dict[str, str] = {
    "celsius": "°C",
    "percent": "%",
    "hpa": "hPa",
    "ohms": "Ω",
    "dbm": "dBm",
    "db": "dB",
}
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# CSI and other escape sequences that probe-rs/defmt colouring emits.
_ANSI_RE = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_])")
_BOM = "\ufeff"

# Line rejection reasons (the `reason` label of gateway_lines_rejected_total).
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"
TOO_DEEP = "too_deep"
TOO_LONG = "too_long"
BAD_VERSION = "unsupported_version"
NO_METRICS = "no_metrics"

# Metric rejection reasons (gateway_metrics_rejected_total).
NOT_A_NUMBER = "not_a_number"
NOT_FINITE = "not_finite"
BAD_NAME = "bad_name"
IMPLAUSIBLE = "implausible"


@dataclass(frozen=True, slots=True)
class Packet:
    """One telemetry line, parsed.

    Attributes:
        received_ns: receive time, ns since the Unix epoch (UTC); the firmware
            has no clock, so this is the reading's timestamp everywhere.
        meta: top-level scalars (``v``, ``seq``, ``uptime_ms`` …).
        groups: group → metric → finite number.
    """

    received_ns: int
    meta: Mapping[str, Scalar]
    groups: Mapping[str, Mapping[str, Number]]

    def metrics(self) -> Iterator[tuple[str, str, Number]]:
        """Yield ``(group, metric, value)`` in line order."""
        for group, values in self.groups.items():
            for metric, value in values.items():
                yield group, metric, value

    def count(self) -> int:
        """Number of metrics in the packet."""
        return sum(len(v) for v in self.groups.values())


@dataclass(slots=True)
class Parsed:
    """The outcome of parsing one line.

    ``packet`` is None when the whole line was rejected (``line_reason`` says
    why). ``rejected`` lists ``(group, metric, reason)`` for skipped metrics.
    """

    packet: Packet | None
    line_reason: str | None = None
    rejected: list[tuple[str, str, str]] = field(default_factory=list)


def format_value(value: Number) -> str:
    """The MQTT payload text of a metric: ``26.7``, ``101169``, ``-33``."""
    if isinstance(value, int):
        return str(value)
    return repr(value)


def _finite_number(value: object) -> tuple[Number | None, str | None]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, NOT_A_NUMBER
    if isinstance(value, int):
        try:
            if not math.isfinite(float(value)):
                return None, NOT_FINITE
        except OverflowError:
            return None, NOT_FINITE
        return value, None
    if not math.isfinite(value):
        return None, NOT_FINITE
    return value, None


def _reject_constant(name: str) -> float:
    # NaN/Infinity are not JSON; keep them as non-finite floats so the metric
    # (not the whole line) is rejected, as the contract asks.
    return float(name.replace("Infinity", "inf"))


def extract_object(line: bytes) -> bytes | None:
    """Return the bytes from the first ``{`` to the last ``}`` (or to the end of
    a line whose object never closes); None when the line has no ``{``."""
    start = line.find(b"{")
    if start < 0:
        return None
    end = line.rfind(b"}")
    if end < start:
        # An object that never closes is a truncated packet, not a log line:
        # hand it on so it is counted as invalid JSON rather than ignored.
        return line[start:]
    return line[start : end + 1]


def parse_line(line: bytes, received_ns: int | None = None) -> Parsed | None:
    """Parse one line of the v1 line protocol.

    Returns None for a line that carries no JSON object (a log line, flashing
    progress): those are ignored, not errors. Never raises.
    """
    if b"\x1b" in line:
        line = _ANSI_RE.sub(b"", line)
    raw = extract_object(line)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Parsed(None, INVALID_UTF8)
    text = text.replace(_BOM, "")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return Parsed(None, TOO_DEEP)
    except ValueError:  # JSONDecodeError, and int() beyond the digit limit
        return Parsed(None, INVALID_JSON)
    if not isinstance(obj, dict):
        return Parsed(None, NOT_OBJECT)
    version = obj.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        return Parsed(None, BAD_VERSION)
    meta: dict[str, Scalar] = {}
    groups: dict[str, dict[str, Number]] = {}
    rejected: list[tuple[str, str, str]] = []
    for key, value in obj.items():
        if isinstance(value, dict):
            if not NAME_RE.fullmatch(key):
                rejected.append((_label(key), "*", BAD_NAME))
                continue
            metrics: dict[str, Number] = {}
            for metric, v in value.items():
                if not NAME_RE.fullmatch(metric):
                    rejected.append((key, _label(metric), BAD_NAME))
                    continue
                number, reason = _finite_number(v)
                if reason is not None or number is None:
                    rejected.append((key, metric, reason or NOT_A_NUMBER))
                    continue
                metrics[metric] = number
            if metrics:
                groups[key] = metrics
        elif isinstance(value, list):
            rejected.append((_label(key), "*", NOT_A_NUMBER))
        else:
            meta[key] = value
    if not groups:
        return Parsed(None, NO_METRICS, rejected)
    stamp = time.time_ns() if received_ns is None else received_ns
    return Parsed(Packet(stamp, meta, groups), None, rejected)


def _label(name: str) -> str:
    """A bounded, printable version of a rejected name for logs and labels."""
    return name[:64].encode("unicode_escape").decode("ascii")


def check_plausibility(
    packet: Packet, ranges: Mapping[str, tuple[float, float]]
) -> tuple[Packet | None, list[tuple[str, str, str]]]:
    """Drop metrics outside their ``[min, max]`` range.

    Returns the packet without those metrics (None if nothing is left) and the
    ``(group, metric, IMPLAUSIBLE)`` list. Ranges are by metric name, for every
    group (a temperature is a temperature on either node).
    """
    if not ranges:
        return packet, []
    rejected: list[tuple[str, str, str]] = []
    groups: dict[str, dict[str, Number]] = {}
    for group, values in packet.groups.items():
        kept: dict[str, Number] = {}
        for metric, value in values.items():
            bounds = ranges.get(metric)
            if bounds is not None and not bounds[0] <= value <= bounds[1]:
                rejected.append((group, metric, IMPLAUSIBLE))
            else:
                kept[metric] = value
        if kept:
            groups[group] = kept
    if not rejected:
        return packet, []
    if not groups:
        return None, rejected
    return Packet(packet.received_ns, packet.meta, groups), rejected


class LineSplitter:
    """Split a byte stream into lines, capped at ``max_line_bytes``.

    A longer line is dropped while it streams in (never held in memory) and
    counted in :attr:`too_long`. ``\\n``, ``\\r\\n`` and ``\\r`` end a line.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = bytearray()
        self._discarding = False
        self._after_cr = False  # the last chunk ended with CR: a LF next is its pair
        self.too_long = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add a chunk; return the complete lines it finished.

        ``\n``, ``\r\n`` and a lone ``\r`` (some serial terminals and RTT
        bridges) all end a line, also when a ``\r\n`` is split across chunks.
        """
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines: list[bytes] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            piece = chunk[start:nl]
            if self._discarding:
                self._discarding = False
            elif len(self._buf) + len(piece) > self.max_line_bytes:
                self.too_long += 1
                self._buf.clear()
            else:
                self._buf += piece
                lines.append(bytes(self._buf.rstrip(b"\r")))
                self._buf.clear()
            start = nl + 1
        rest = chunk[start:]
        if rest and not self._discarding:
            if len(self._buf) + len(rest) > self.max_line_bytes:
                self.too_long += 1
                self._buf.clear()
                self._discarding = True
            else:
                self._buf += rest
        return lines

    def flush(self) -> bytes | None:
        """At end of stream: the partial last line, if any."""
        self._discarding = False
        if not self._buf:
            return None
        line = bytes(self._buf.rstrip(b"\r"))
        self._buf.clear()
        return line


@dataclass(slots=True)
class SequenceTracker:
    """Spot missed packets and Node 2 resets from ``stats.packets_received``/``seq``."""

    last_received: int | None = None
    last_seq: int | None = None

    def observe(self, packet: Packet) -> tuple[int, bool]:
        """Return ``(missed_packets, node_reset)`` for this packet."""
        missed = 0
        reset = False
        seq = packet.meta.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            if self.last_seq is not None and seq < self.last_seq:
                reset = True
            self.last_seq = seq
        received = packet.groups.get("stats", {}).get("packets_received")
        if isinstance(received, int):
            if self.last_received is not None and not reset:
                if received < self.last_received:
                    reset = True
                elif received > self.last_received + 1:
                    missed = received - self.last_received - 1
            self.last_received = received
        return missed, reset
