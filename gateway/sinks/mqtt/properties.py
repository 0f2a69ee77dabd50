"""MQTT 5 properties of the gateway's messages, and a refused message's dead letter.

A buffered message's properties are encoded once per packet by
:class:`~gateway.sinks.mqtt.wire.PackedProperties` (it relies on paho's
internals, so it lives with the others).
"""

from __future__ import annotations

import time

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.clock import Stamp
from gateway.records import rfc3339_ms, split_record
from gateway.sinks.mqtt.wire import PackedProperties


def new_properties(packet_type: int) -> Properties:
    """Empty properties of an MQTT 5 packet type (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


class MessageProperties:
    """The MQTT 5 properties of the gateway's messages: ``ts``, ``gw``, and expiry.

    Args:
        gateway_id: the ``gw`` user property.
        message_expiry: ``mqtt.message_expiry``, for non-retained messages.
    """

    def __init__(self, gateway_id: str, message_expiry: int) -> None:
        self.gateway_id = gateway_id
        self.message_expiry = message_expiry
        # The last message's properties: the messages of one packet share them.
        self._key: tuple[int, bool, bool] | None = None
        self._props: Properties | None = None

    def will(self) -> Properties:
        """The Last Will's: ``gw`` only."""
        props = new_properties(PacketTypes.WILLMESSAGE)
        props.UserProperty = [("gw", self.gateway_id)]
        return props

    def live(self) -> Properties:
        """A message about now (presence, discovery): ``ts`` now, ``gw``."""
        props = new_properties(PacketTypes.PUBLISH)
        props.UserProperty = [("ts", rfc3339_ms(time.time_ns())), ("gw", self.gateway_id)]
        return props

    def of(self, stamp: Stamp, retained: bool) -> Properties:
        """A buffered message's, encoded once per packet.

        ``ts`` is the reading's receive time as stamped; while the clock was
        not known right that is the best-known time, and ``clock=unsynced``
        says so. ``mqtt.message_expiry`` applies to non-retained messages only:
        on a retained one it would delete the topic's value.
        """
        key = (stamp.wall_ns, stamp.synced, retained)
        if key != self._key or self._props is None:  # a packet's messages share a stamp
            user = [("ts", rfc3339_ms(stamp.wall_ns)), ("gw", self.gateway_id)]
            if not stamp.synced:
                user.append(("clock", "unsynced"))
            expiry = self.message_expiry if not retained else 0
            self._key, self._props = key, PackedProperties(user, expiry)
        return self._props


def refused_letter(record: str, code: ReasonCode) -> str:
    """The dead letter of a message the broker refused: ``topic payload (why)``."""
    try:
        _, topic, payload = split_record(record)
    except ValueError:  # pragma: no cover - only messages are ever sent
        return record
    return f"{topic} {payload} (refused by the broker: PUBACK 0x{code.value:02x} {code})"
