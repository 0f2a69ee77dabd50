"""The buffered record formats: what each sink's buffer holds, encoded and decoded.

A packet becomes one record per metric for each sink (the pipeline encodes,
the sinks and ``gateway buffer export`` decode):

- MQTT: ``"<received_ns> <topic> <payload>"``; topic and payload never contain
  spaces (group and metric names are ``[A-Za-z0-9_-]``).
- InfluxDB: one line-protocol point,
  ``temperature,node=node1,unit=celsius value=26.7 1795773905582000000``.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.telemetry import UNITS, Packet, format_value


def status_topic(prefix: str) -> str:
    """The retained presence topic."""
    return f"{prefix}/gateway/status"


def packet_records(packet: Packet, prefix: str) -> list[str]:
    """A packet's MQTT records: ``"<received_ns> <topic> <payload>"``."""
    ns = packet.received_ns
    return [
        f"{ns} {prefix}/{group}/{metric} {format_value(value)}"
        for group, metric, value in packet.metrics()
    ]


def split_record(value: str) -> tuple[int, str, str]:
    """Inverse of :func:`packet_records` for one record: (ns, topic, payload).

    Raises:
        ValueError: the record is not in this format.
    """
    ns, topic, payload = value.split(" ", 2)
    return int(ns), topic, payload


def _escape_tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def tag_suffix(tags: Mapping[str, str]) -> str:
    """Static tags as a line-protocol suffix (sorted, escaped): ``,site=north``."""
    return "".join(f",{_escape_tag(k)}={_escape_tag(v)}" for k, v in sorted(tags.items()) if v)


def packet_points(packet: Packet, static_tags: str = "") -> list[str]:
    """A packet's line-protocol points (names are pre-validated, no escaping)."""
    ns = packet.received_ns
    out = []
    for group, metric, value in packet.metrics():
        unit = UNITS.get(metric)
        tags = f",node={group},unit={unit}" if unit else f",node={group}"
        out.append(f"{metric}{tags}{static_tags} value={float(value)!r} {ns}")
    return out


def gateway_points(values: Mapping[str, float], ns: int, static_tags: str = "") -> list[str]:
    """The gateway's own health as points: ``mqtt_backlog,node=gateway value=12 <ns>``."""
    return [
        f"{name},node=gateway{static_tags} value={float(v)!r} {ns}" for name, v in values.items()
    ]


def point_time_ns(line: str) -> int:
    """The timestamp of a point this module produced.

    Raises:
        ValueError: the line has no trailing integer timestamp.
    """
    return int(line.rsplit(" ", 1)[1])
