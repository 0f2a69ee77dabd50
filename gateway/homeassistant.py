"""Home Assistant MQTT discovery: a retained config per metric, so readings appear by themselves.

Home Assistant subscribes to ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``;
each retained JSON config there describes one entity: where its state is
(the gateway's existing topic ``{prefix}/{group}/{metric}``), how to read it
(a ``value_template`` with ``mqtt.payload = "json"``), its unit,
``device_class`` and ``state_class`` where Home Assistant defines one, and the
device it belongs to. Devices follow the hardware: Node 1, Node 2 (which also
owns the radio link's ``signal`` and its packet counters in ``stats``), any
other group as a device of its own, and the gateway, whose one entity is a
``connectivity`` binary sensor on the retained online/offline status topic
(also every entity's availability).

Names carry the gateway id ("Node 1 (gw-north)") and every entity suggests an
entity id that starts with it (``sensor.gw_north_node1_temperature``), so
several gateways in one Home Assistant never depend on discovery order.

Configs are published on each connect and when a new metric first appears.
They depend on the payload mode, so a restart after changing it republishes
every one. A metric that stops appearing keeps its entity (nothing is removed
silently); ``gateway homeassistant --remove`` clears every retained config of
this gateway (:func:`config_filter`).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway import __version__
from gateway.records import state_topic, status_topic
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
# Entity names as a person writes them; other metrics get :func:`readable`.
METRIC_NAMES = {
    "temperature": "Temperature",
    "humidity": "Humidity",
    "gas_resistance": "Gas resistance",
    "pressure": "Pressure",
    "rssi": "RSSI",
    "snr": "SNR",
    "packets_received": "Packets received",
    "crc_errors": "CRC errors",
}


# The gateway's diagnostic entities on gateway/state: per sink, these figures.
STATE_SINKS = {"mqtt": "MQTT", "influx": "InfluxDB"}
STATE_FIELDS = {"backlog": "backlog", "oldest_age": "oldest_age_s", "coverage": "coverage_h"}
STATE_FIGURES: dict[str, tuple[str, dict[str, object]]] = {
    "backlog": ("backlog", {"unit_of_measurement": "records"}),
    "oldest_age": ("oldest waiting", {"device_class": "duration", "unit_of_measurement": "s"}),
    "coverage": ("outage coverage", {"device_class": "duration", "unit_of_measurement": "h"}),
}


@dataclass(frozen=True)
class DeviceKind:
    """Which physical device a group's metrics belong to, and how it shows."""

    key: str  # the group whose name the device's identifier carries
    name: str
    model: str = ""
    diagnostic: bool = False  # the group is about the link, not the sensors


# Node 2 is the LoRa receiver: the RSSI and SNR of the frames it receives and
# its packet counters are its own, not devices of their own. The keys keep the
# identifiers the node devices always had (``iiot-<id>-node1``, ``-node2``).
GROUP_DEVICES = {
    "node1": DeviceKind("node1", "Node 1", "LoRa sensor node"),
    "node2": DeviceKind("node2", "Node 2", "LoRa receiver"),
    "signal": DeviceKind("node2", "Node 2", "LoRa receiver", diagnostic=True),
    "stats": DeviceKind("node2", "Node 2", "LoRa receiver", diagnostic=True),
}
GATEWAY_DEVICE_NAME = "Gateway"
# Home Assistant renders these with Jinja over ``value_json`` (the payload
# parsed as JSON). The attributes are every key of the payload but the value
# itself: ``ts`` and ``unit`` always, ``clock`` only while it is unsynced.
JSON_VALUE_TEMPLATE = "{{ value_json.value }}"
JSON_ATTRIBUTES_TEMPLATE = "{{ dict(value_json.items() | rejectattr(0, 'eq', 'value')) | tojson }}"
_NUMBERED = re.compile(r"([A-Za-z]+)[_-]?([0-9]+)")
_SLUG_RUN = re.compile(r"[^a-z0-9]+")
# Addresses a Home Assistant on another host cannot open: a wildcard is not an
# address at all, and loopback is the gateway's own host only.
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def node_id(gateway_id: str) -> str:
    """The discovery node id of this gateway's entities."""
    return f"iiot-{gateway_id}"


def config_filter(discovery_prefix: str, gateway_id: str) -> str:
    """The topic filter that matches every discovery config of this gateway."""
    return f"{discovery_prefix}/+/{node_id(gateway_id)}/+/config"


def readable(name: str) -> str:
    """A name as a person would write it: ``node3`` → "Node 3", ``wind_speed`` → "Wind speed"."""
    numbered = _NUMBERED.fullmatch(name)
    if numbered is not None:
        return f"{readable(numbered[1])} {numbered[2]}"
    words = name.replace("_", " ").replace("-", " ").split()
    text = " ".join(words) or name
    # Only the first letter: an acronym in the rest (``co2_ppm``) keeps its case.
    return text[:1].upper() + text[1:]


def slug(text: str) -> str:
    """An entity-id part as Home Assistant's ``slugify`` makes it: ``gw-North`` → ``gw_north``."""
    return _SLUG_RUN.sub("_", text.lower()).strip("_")


def group_device(group: str) -> DeviceKind:
    """The device a group's metrics belong to (a group the gateway doesn't know is its own)."""
    return GROUP_DEVICES.get(group) or DeviceKind(group, readable(group))


def status_page_url(listen: str) -> str:
    """The status page's URL for ``configuration_url``, or "" when no other host can open it.

    ``[status] listen`` gives a URL only for a concrete address another host can
    reach: not when the page is off (""), on a wildcard (``0.0.0.0``, ``[::]``:
    the gateway can't know which of its addresses Home Assistant reaches), on
    loopback (Home Assistant usually runs on another host or in a container,
    where 127.0.0.1 is itself), or on port 0 (the port is only known later).
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or port in ("", "0"):
        return ""
    bare = host[1:-1] if host.startswith("[") else host
    if bare.lower() in _LOOPBACK_NAMES:
        return ""
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return f"http://{host}:{port}/"  # a host name: Home Assistant resolves it
    if address.is_unspecified or address.is_loopback:
        return ""
    return f"http://{host}:{port}/"


def _json(doc: Mapping[str, object]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Discovery:
    """The metrics seen so far, the configs still to be published, and how configs look.

    Register :meth:`observe_metrics` through the MQTT sink's observer; the sink
    publishes :meth:`all_configs` after each connect and :meth:`take_new` as
    metrics appear.

    Attributes:
        payload: ``mqtt.payload``; ``"json"`` adds the value and attribute templates.
        stale_after: ``alerts.stale_after`` (0 = off): a watched group's sensors
            expire (go unavailable) when its stale alert fires.
        stale_groups: ``alerts.stale_groups``; empty: every group is watched.
        configuration_url: the status page (:func:`status_page_url`), or "".
    """

    discovery_prefix: str
    topic_prefix: str
    gateway_id: str
    payload: str = "plain"
    stale_after: float = 0.0
    stale_groups: tuple[str, ...] = ()
    configuration_url: str = ""
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
        """Every config: the gateway's, its state's and each metric seen (after a connect)."""
        self.new.clear()
        return [
            self.gateway_config(),
            *self.state_configs(),
            *(self.metric_config(g, m) for g, m in sorted(self.seen)),
        ]

    def take_new(self) -> list[tuple[str, str]]:
        """The configs of metrics seen since the last call."""
        new, self.new = self.new, []
        return [self.metric_config(g, m) for g, m in new]

    @property
    def _node(self) -> str:
        return node_id(self.gateway_id)

    def _device_name(self, name: str) -> str:
        # The gateway id in every device name: two gateways' "Node 1" differ,
        # and so do the entity ids Home Assistant derives from the names.
        return f"{name} ({self.gateway_id})"

    def _entity_id(self, component: str, *parts: str) -> str:
        return f"{component}." + "_".join(slug(p) for p in (self.gateway_id, *parts))

    def _device_links(self, device: dict[str, object]) -> dict[str, object]:
        if self.configuration_url:
            device["configuration_url"] = self.configuration_url
        return device

    def expire_after(self, group: str) -> int | None:
        """``expire_after`` of a group's sensors: its stale alert's delay, None when unwatched.

        Home Assistant wants whole seconds; rounded up, a sensor never expires
        before its group's alert fires.
        """
        if self.stale_after <= 0 or (self.stale_groups and group not in self.stale_groups):
            return None
        return math.ceil(self.stale_after)

    def gateway_config(self) -> tuple[str, str]:
        """The gateway's own device: a connectivity binary sensor on the status topic."""
        node = self._node
        config = {
            "name": "Status",
            "unique_id": f"{node}-status",
            "default_entity_id": self._entity_id("binary_sensor", "gateway", "status"),
            "state_topic": status_topic(self.topic_prefix),
            "payload_on": "online",
            "payload_off": "offline",
            "qos": 1,
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": self._gateway_device(),
        }
        return f"{self.discovery_prefix}/binary_sensor/{node}/status/config", _json(config)

    def _gateway_device(self) -> dict[str, object]:
        # One block for every entity of the gateway's device: Home Assistant
        # takes a device's details from whichever config it reads last.
        return self._device_links(
            {
                "identifiers": [self._node],
                "name": self._device_name(GATEWAY_DEVICE_NAME),
                "manufacturer": MANUFACTURER,
                "model": "LoRa gateway",
                "sw_version": __version__,
            }
        )

    def state_configs(self) -> list[tuple[str, str]]:
        """The gateway device's diagnostic entities, read from the ``gateway/state`` JSON.

        Per sink its backlog, oldest record's age and outage coverage, and the
        clock's verdict as a binary sensor. A figure the state has as null (no
        rate yet, nothing waiting) renders "None", which Home Assistant shows
        as unknown rather than a false zero.
        """
        node = self._node
        common = {
            "state_topic": state_topic(self.topic_prefix),
            "qos": 1,
            "entity_category": "diagnostic",
            "availability_topic": status_topic(self.topic_prefix),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self._gateway_device(),
        }
        out: list[tuple[str, str]] = []
        for sink, label in STATE_SINKS.items():
            for key, (name, extra) in STATE_FIGURES.items():
                object_id = f"{sink}_{key}"
                config = {
                    "name": f"{label} {name}",
                    "unique_id": f"{node}-state-{object_id}",
                    "default_entity_id": self._entity_id("sensor", "gateway", object_id),
                    "value_template": f"{{{{ value_json.sinks.{sink}.{STATE_FIELDS[key]} }}}}",
                    "state_class": "measurement",
                    **extra,
                    **common,
                }
                out.append(
                    (f"{self.discovery_prefix}/sensor/{node}/{object_id}/config", _json(config))
                )
        clock = {
            "name": "Clock synchronised",
            "unique_id": f"{node}-state-clock",
            "default_entity_id": self._entity_id("binary_sensor", "gateway", "clock"),
            "value_template": "{{ 'ON' if value_json.clock.synchronized else 'OFF' }}",
            **common,
        }
        out.append((f"{self.discovery_prefix}/binary_sensor/{node}/clock/config", _json(clock)))
        return out

    def metric_config(self, group: str, metric: str) -> tuple[str, str]:
        """The discovery config of one metric's sensor: (topic, JSON payload).

        The unique id (``iiot-<id>-<group>-<metric>``) and the topic are the
        ones every earlier release used, so Home Assistant keeps the entity
        and its history across an upgrade.
        """
        node = self._node
        kind = group_device(group)
        state_topic = f"{self.topic_prefix}/{group}/{metric}"
        device: dict[str, object] = {
            "identifiers": [f"{node}-{kind.key}"],
            "name": self._device_name(kind.name),
            "manufacturer": MANUFACTURER,
            "via_device": node,
        }
        if kind.model:
            device["model"] = kind.model
        config: dict[str, object] = {
            "name": METRIC_NAMES.get(metric) or readable(metric),
            "unique_id": f"{node}-{group}-{metric}",
            "default_entity_id": self._entity_id("sensor", group, metric),
            "state_topic": state_topic,
            "qos": 1,
            "availability_topic": status_topic(self.topic_prefix),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": self._device_links(device),
        }
        if self.payload == "json":
            config["value_template"] = JSON_VALUE_TEMPLATE
            config["json_attributes_topic"] = state_topic
            config["json_attributes_template"] = JSON_ATTRIBUTES_TEMPLATE
        unit = HA_UNITS.get(UNITS.get(metric, ""))
        if unit is not None:
            config["unit_of_measurement"] = unit
        if metric in DEVICE_CLASSES:
            config["device_class"] = DEVICE_CLASSES[metric]
        config["state_class"] = "total_increasing" if metric in TOTAL_INCREASING else "measurement"
        if kind.diagnostic:
            config["entity_category"] = "diagnostic"
        expire = self.expire_after(group)
        if expire is not None:
            config["expire_after"] = expire
        return f"{self.discovery_prefix}/sensor/{node}/{group}_{metric}/config", _json(config)
