"""MQTT 5 properties of the sink's own packets, and a refused message's dead letter.

A buffered message's properties are encoded once per packet by
:class:`~gateway.sinks.mqtt.wire.PackedProperties` (it relies on paho's
internals, so it lives with the others).
"""

from __future__ import annotations

from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.records import split_record


def new_properties(packet_type: int) -> Properties:
    """Empty properties of an MQTT 5 packet type (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def refused_letter(record: str, code: ReasonCode) -> str:
    """The dead letter of a message the broker refused: ``topic payload (why)``."""
    try:
        _, topic, payload = split_record(record)
    except ValueError:  # pragma: no cover - only messages are ever sent
        return record
    return f"{topic} {payload} (refused by the broker: PUBACK 0x{code.value:02x} {code})"
