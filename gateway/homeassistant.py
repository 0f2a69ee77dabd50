"""Home Assistant MQTT discovery: a retained config per metric, so readings appear by themselves.

Home Assistant subscribes to ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``;
each retained JSON config there describes one entity: where its state is
(the gateway's existing topic ``{prefix}/{group}/{metric}``), its unit,
``device_class`` and ``state_class`` where Home Assistant defines one, the
device it belongs to (one device per node, reached ``via_device`` the
gateway), and its availability (the gateway's retained online/offline status
topic). The gateway itself is a device with one ``connectivity`` binary sensor.

Configs are published on each connect and when a new metric first appears.
A metric that stops appearing keeps its entity (nothing is removed silently);
``gateway homeassistant --remove`` clears every retained config of this
gateway (:func:`config_filter`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.records import status_topic
from gateway.telemetry import UNIT_SYMBOLS as HA_UNITS
from gateway.telemetry import UNITS

# Device classes Home Assistant defines for these metrics (none for gas
# resistance or SNR: Home Assistant has no class that means them).
DEVICE_CLASSES = {
    "temperature": "temperature",
    "humidity": "humidity",
    "pressure": "atmospheric_pressure",
    "rssi": "signal_strength",
}
# Counters only ever grow (until Node 2 restarts): Home Assistant's statistics
# treat a drop as a reset.
TOTAL_INCREASING = {"packets_received", "crc_errors"}
MANUFACTURER = "iiot-gateway"


def node_id(gateway_id: str) -> str:
    """The discovery node id of this gateway's entities."""
    return f"iiot-{gateway_id}"


def config_filter(discovery_prefix: str, gateway_id: str) -> str:
    """The topic filter that matches every discovery config of this gateway."""
    return f"{discovery_prefix}/+/{node_id(gateway_id)}/+/config"


def gateway_config(discovery_prefix: str, topic_prefix: str, gateway_id: str) -> tuple[str, str]:
    """The gateway's own device: a connectivity binary sensor on the status topic."""
    node = node_id(gateway_id)
    config = {
        "name": "Status",
        "unique_id": f"{node}-status",
        "state_topic": status_topic(topic_prefix),
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": {
            "identifiers": [node],
            "name": f"iiot-gateway {gateway_id}",
            "manufacturer": MANUFACTURER,
            "model": "LoRa gateway",
        },
    }
    return f"{discovery_prefix}/binary_sensor/{node}/status/config", _json(config)


def metric_config(
    discovery_prefix: str, topic_prefix: str, gateway_id: str, group: str, metric: str
) -> tuple[str, str]:
    """The discovery config of one metric's sensor: (topic, JSON payload)."""
    node = node_id(gateway_id)
    object_id = f"{group}_{metric}"
    config: dict[str, object] = {
        "name": metric.replace("_", " ").capitalize(),
        "unique_id": f"{node}-{group}-{metric}",
        "state_topic": f"{topic_prefix}/{group}/{metric}",
        "availability_topic": status_topic(topic_prefix),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [f"{node}-{group}"],
            "name": group,
            "manufacturer": MANUFACTURER,
            "via_device": node,
        },
    }
    unit = HA_UNITS.get(UNITS.get(metric, ""))
    if unit is not None:
        config["unit_of_measurement"] = unit
    if metric in DEVICE_CLASSES:
        config["device_class"] = DEVICE_CLASSES[metric]
    if metric in TOTAL_INCREASING:
        config["state_class"] = "total_increasing"
    else:
        config["state_class"] = "measurement"
    return f"{discovery_prefix}/sensor/{node}/{object_id}/config", _json(config)


def _json(doc: Mapping[str, object]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Discovery:
    """The metrics seen so far, and the configs still to be published.

    Register :meth:`observe` as a pipeline observer; the MQTT sink publishes
    :meth:`all_configs` after each connect and :meth:`take_new` as metrics
    appear.
    """

    discovery_prefix: str
    topic_prefix: str
    gateway_id: str
    seen: set[tuple[str, str]] = field(default_factory=set)
    new: list[tuple[str, str]] = field(default_factory=list)

    def observe_metrics(self, metrics: Iterable[tuple[str, str]]) -> bool:
        """Note metrics of a packet; True if any was new."""
        added = False
        for key in metrics:
            if key not in self.seen:
                self.seen.add(key)
                self.new.append(key)
                added = True
        return added

    def all_configs(self) -> list[tuple[str, str]]:
        """Every config: the gateway's and each metric seen (after a connect)."""
        self.new.clear()
        return [
            gateway_config(self.discovery_prefix, self.topic_prefix, self.gateway_id),
            *(self._config(g, m) for g, m in sorted(self.seen)),
        ]

    def take_new(self) -> list[tuple[str, str]]:
        """The configs of metrics seen since the last call."""
        new, self.new = self.new, []
        return [self._config(g, m) for g, m in new]

    def _config(self, group: str, metric: str) -> tuple[str, str]:
        return metric_config(
            self.discovery_prefix, self.topic_prefix, self.gateway_id, group, metric
        )
