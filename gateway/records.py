"""The buffered record formats: what each sink's buffer holds, encoded and decoded.

A packet becomes one record per metric for each sink (the pipeline encodes,
the sinks and ``gateway buffer export`` decode). Every record starts with the
reading's *stamp*:

- ``<wall_ns>`` when the wall clock was known right at receipt, or
- ``<wall_ns>~<boot>~<boottime_ns>`` when it was not: the best-known wall
  time, the boot's key (:func:`gateway.clock.boot_key`: 8 hex digits of the boot id; the
  store keeps each boot's id and learned offset once) and ``CLOCK_BOOTTIME``
  at receipt, from which the right time is computed once the clock is right
  (:class:`StampResolver`). Both forms are read back as a :class:`gateway.clock.Stamp`.

Then, separated by single spaces (names never contain spaces):

- MQTT: ``<stamp> <topic> <payload>``
- InfluxDB: ``<stamp> <measurement>,<tags> value=<float>``; the timestamp is
  added when the point is sent: ``temperature,node=node1,unit=celsius value=26.7
  1795773905582000000``.

Alert events use the same two formats (:mod:`gateway.alerts`): topic
``{prefix}/alerts/{name}`` with a JSON payload, measurement ``alerts`` with
tags ``name`` and ``state``.

:data:`FORMAT_VERSION` is the version of these formats (the store records it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from gateway.clock import ClockTracker, Stamp
from gateway.telemetry import UNITS, Packet, format_value

FORMAT_VERSION = 2
UNSYNCED_TAG = ",clock=unsynced"
# The first space that is not escaped ends a point's measurement and tags.
_TAGS_END = re.compile(r"(?<!\\) ")


def stamp_text(stamp: Stamp) -> str:
    """The stored form of ``stamp``."""
    if stamp.synced:
        return str(stamp.wall_ns)
    return f"{stamp.wall_ns}~{stamp.boot}~{stamp.boottime_ns}"


def parse_stamp(text: str) -> Stamp:
    """Inverse of :func:`stamp_text`; a synced stamp comes back with its wall time only.

    Raises:
        ValueError: not a stamp.
    """
    if "~" not in text:
        return Stamp(int(text))
    wall, boot, boottime = text.split("~")
    return Stamp(int(wall), int(boottime), boot, synced=False)


def stamp_age_s(text: str, now_ns: int, boot: str, boottime_now_ns: int) -> float:
    """Seconds since the record stamped ``text`` was received, as best this boot knows.

    A stamp of this boot that carries a boottime is aged on ``CLOCK_BOOTTIME``
    (a wall clock that jumps cannot make it young again); any other by wall
    time. Never negative.

    Raises:
        ValueError: ``text`` is not a stamp.
    """
    stamp = parse_stamp(text)
    if stamp.boot == boot and stamp.boottime_ns is not None:
        return max(0.0, (boottime_now_ns - stamp.boottime_ns) / 1e9)
    return max(0.0, (now_ns - stamp.wall_ns) / 1e9)


def rfc3339_ms(ns: int) -> str:
    """``ns`` since the epoch as RFC 3339 UTC with milliseconds: ``2026-12-01T10:00:00.123Z``."""
    seconds, rest = divmod(ns, 1_000_000_000)
    t = time.gmtime(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{rest // 1_000_000:03d}Z"


def json_payload(topic: str, payload: str, stamp: Stamp) -> str:
    """The ``mqtt.payload = "json"`` form of a reading: value, unit and the reading's time.

    ``{"value":26.7,"unit":"celsius","ts":"2026-…Z"}``; no ``unit`` where none
    is known; ``"clock":"unsynced"`` while the time is only the best known.
    A payload that is not a number (an alert's JSON) is sent as it is.
    """
    try:
        float(payload)
    except ValueError:
        return payload
    unit = UNITS.get(topic.rsplit("/", 1)[-1])
    parts = [f'"value":{payload}']
    if unit is not None:
        parts.append(f'"unit":"{unit}"')
    parts.append(f'"ts":"{rfc3339_ms(stamp.wall_ns)}"')
    if not stamp.synced:
        parts.append('"clock":"unsynced"')
    return "{" + ",".join(parts) + "}"


def status_topic(prefix: str) -> str:
    """The retained presence topic."""
    return f"{prefix}/gateway/status"


def state_topic(prefix: str) -> str:
    """The retained JSON state document's topic (gateway.status.state)."""
    return f"{prefix}/gateway/state"


def alerts_topic(prefix: str, name: str = "") -> str:
    """An alert's retained topic, ``{prefix}/alerts/{name}`` (with no name: the level's prefix)."""
    return f"{prefix}/alerts/{name}"


def packet_records(packet: Packet, prefix: str, stamp: str) -> list[str]:
    """A packet's MQTT records: ``"<stamp> <topic> <payload>"``."""
    return [
        f"{stamp} {prefix}/{group}/{metric} {format_value(value)}"
        for group, metric, value in packet.metrics()
    ]


def split_record(value: str) -> tuple[Stamp, str, str]:
    """Inverse of :func:`packet_records` for one record: (stamp, topic, payload).

    Raises:
        ValueError: the record is not in this format.
    """
    stamp, topic, payload = value.split(" ", 2)
    return parse_stamp(stamp), topic, payload


def _escape_tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def tag_suffix(tags: Mapping[str, str]) -> str:
    """Static tags as a line-protocol suffix (sorted, escaped): ``,site=north``."""
    return "".join(f",{_escape_tag(k)}={_escape_tag(v)}" for k, v in sorted(tags.items()) if v)


def packet_points(packet: Packet, static_tags: str, stamp: str) -> list[str]:
    """A packet's InfluxDB records: ``"<stamp> <measurement>,<tags> value=<float>"``."""
    out = []
    for group, metric, value in packet.metrics():
        unit = UNITS.get(metric)
        tags = f",node={group},unit={unit}" if unit else f",node={group}"
        out.append(f"{stamp} {metric}{tags}{static_tags} value={float(value)!r}")
    return out


def gateway_points(values: Mapping[str, float], static_tags: str, stamp: str) -> list[str]:
    """The gateway's own health as records: ``<stamp> mqtt_backlog,node=gateway value=12``."""
    return [
        f"{stamp} {name},node=gateway{static_tags} value={float(v)!r}" for name, v in values.items()
    ]


def split_point(value: str) -> tuple[Stamp, str]:
    """An InfluxDB record's stamp and its point without a timestamp.

    Raises:
        ValueError: the record is not in this format.
    """
    stamp, body = value.split(" ", 1)
    if " " not in body:
        raise ValueError(f"not a point: {body[:80]!r}")
    return parse_stamp(stamp), body


def point_line(body: str, ns: int, *, unsynced: bool = False) -> str:
    """The line protocol to send: ``body`` with its timestamp (and ``clock=unsynced``)."""
    if unsynced:
        match = _TAGS_END.search(body)
        if match is not None:
            body = body[: match.start()] + UNSYNCED_TAG + body[match.start() :]
    return f"{body} {ns}"


def point_time_ns(value: str) -> int:
    """The best-known wall time of an InfluxDB record.

    Raises:
        ValueError: the record is not in this format.
    """
    return split_point(value)[0].wall_ns


class StampResolver:
    """Decides the time a buffered record is delivered with.

    Args:
        clock: the running gateway's clock tracker (knows this boot's offset).
        offsets: earlier boots' key → the offset (wall − boottime) they learned,
            from the store.
    """

    def __init__(self, clock: ClockTracker, offsets: Mapping[str, int]) -> None:
        self.clock = clock
        self.offsets = offsets

    def resolve(self, stamp: Stamp, *, force: bool = False) -> tuple[int, bool] | None:
        """``(ns, right)`` to deliver with, or None to hold the record.

        A stamp taken while the clock was right is final. One taken while it
        was not is corrected once an offset of its boot is known. Otherwise a
        record of this boot is held (the clock may still become right), unless
        ``force``; one of an earlier boot that never saw a right clock can never
        be corrected: its best-known time, not right.
        """
        if stamp.synced:
            return stamp.wall_ns, True
        assert stamp.boottime_ns is not None
        if stamp.boot == self.clock.boot_key:
            corrected = self.clock.correct(stamp)
            if corrected is not None:
                return corrected, True
            return None if not force else (stamp.wall_ns, False)
        offset = self.offsets.get(stamp.boot or "")
        if offset is not None:
            return stamp.boottime_ns + offset, True
        return stamp.wall_ns, False
