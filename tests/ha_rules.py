"""Home Assistant's rules for MQTT discovery configs of sensors and binary sensors.

Transcribed from Home Assistant's documentation of MQTT discovery (topics,
abbreviations, the shared device block), of the MQTT sensor and binary sensor
platforms (their options and types), and of sensor device classes (the units
each accepts), as of the releases that know ``default_entity_id`` (2025.10 on).
The ``homeassistant`` package itself stays out of the test path: it is large
and needs a newer Python than the gateway.

:func:`check_config` raises ``AssertionError`` naming what breaks a rule;
:func:`state_of` computes an entity's state from a payload as Home Assistant
does (the ``value_template`` rendered with Jinja over ``value`` and
``value_json``).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

# The documented abbreviations of the keys these platforms use.
ABBREVIATIONS = {
    "avty": "availability",
    "avty_mode": "availability_mode",
    "avty_t": "availability_topic",
    "avty_tpl": "availability_template",
    "dev": "device",
    "dev_cla": "device_class",
    "en": "enabled_by_default",
    "enc": "encoding",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "exp_aft": "expire_after",
    "frc_upd": "force_update",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "lrst_val_tpl": "last_reset_value_template",
    "o": "origin",
    "obj_id": "object_id",
    "off_dly": "off_delay",
    "ops": "options",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cns": "connections",
    "cu": "configuration_url",
    "hw": "hw_version",
    "ids": "identifiers",
    "mdl": "model",
    "mdl_id": "model_id",
    "mf": "manufacturer",
    "sa": "suggested_area",
    "sn": "serial_number",
    "sw": "sw_version",
}
DEVICE_KEYS = {*DEVICE_ABBREVIATIONS.values(), "name", "via_device"}
COMMON_KEYS = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "default_entity_id",
    "device",
    "device_class",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "expire_after",
    "force_update",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "origin",
    "payload_available",
    "payload_not_available",
    "qos",
    "state_topic",
    "unique_id",
    "value_template",
}
KEYS = {
    "sensor": COMMON_KEYS
    | {
        "last_reset_value_template",
        "options",
        "state_class",
        "suggested_display_precision",
        "unit_of_measurement",
    },
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
}
# object_id still works, with a warning per entity, until 2026.4.
DEPRECATED_KEYS = {"object_id"}
# Units each sensor device class accepts (the sensor documentation's table, for
# the classes a gateway metric could have).
UNITS_BY_CLASS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "signal_strength": {"dB", "dBm"},
    "duration": {"d", "h", "min", "s", "ms", "µs"},
}
BINARY_SENSOR_CLASSES = {"connectivity", "problem", "running", "power"}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
# A sensor can't be a "config" entity: it changes nothing.
ENTITY_CATEGORIES = {"sensor": {"diagnostic"}, "binary_sensor": {"diagnostic"}}
# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config
ID_RE = re.compile(r"[a-zA-Z0-9_-]+")
# homeassistant.core.valid_entity_id
ENTITY_ID_RE = re.compile(r"(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)")

_JINJA = ImmutableSandboxedEnvironment()


def expand(config: dict[str, Any]) -> dict[str, Any]:
    """A config with every abbreviation written out, as Home Assistant reads it."""
    out = {ABBREVIATIONS.get(k, k): v for k, v in config.items()}
    if isinstance(out.get("device"), dict):
        out["device"] = {DEVICE_ABBREVIATIONS.get(k, k): v for k, v in out["device"].items()}
    return out


def _topic_ok(topic: object) -> bool:
    return isinstance(topic, str) and bool(topic) and not set(topic) & {"+", "#"}


def check_config(topic: str, payload: str) -> tuple[str, dict[str, Any]]:
    """Check one discovery message; return (component, the config expanded)."""
    parts = topic.split("/")
    assert parts[-1] == "config", topic
    assert len(parts) in (4, 5), topic
    component = parts[-4] if len(parts) == 5 else parts[-3]
    assert component in KEYS, component
    assert all(ID_RE.fullmatch(p) for p in parts[-3:-1]), topic
    config = expand(json.loads(payload))
    unknown = set(config) - KEYS[component]
    assert not unknown, f"{topic}: keys Home Assistant does not know: {unknown}"
    assert not set(config) & DEPRECATED_KEYS, f"{topic}: deprecated {set(config) & DEPRECATED_KEYS}"
    assert _topic_ok(config["state_topic"]), topic  # the one required key
    for key in ("availability_topic", "json_attributes_topic"):
        if key in config:
            assert _topic_ok(config[key]), (topic, key)
    assert config.get("qos", 0) in (0, 1, 2)
    if "expire_after" in config:
        assert isinstance(config["expire_after"], int), config["expire_after"]
        assert config["expire_after"] > 0
    if "entity_category" in config:
        assert config["entity_category"] in ENTITY_CATEGORIES[component]
    if "default_entity_id" in config:
        entity_id = config["default_entity_id"]
        assert ENTITY_ID_RE.fullmatch(entity_id), entity_id
        assert entity_id.startswith(f"{component}."), entity_id
    for key in ("value_template", "json_attributes_template"):
        if key in config:
            _JINJA.from_string(config[key])  # compiles
    if "json_attributes_template" in config:
        assert "json_attributes_topic" in config
    cls = config.get("device_class")
    if component == "sensor":
        if cls is not None:
            assert cls in UNITS_BY_CLASS, cls
            assert config.get("unit_of_measurement") in UNITS_BY_CLASS[cls], (topic, cls)
        if "state_class" in config:
            assert config["state_class"] in STATE_CLASSES
    elif cls is not None:
        assert cls in BINARY_SENSOR_CLASSES, cls
    if "device" in config:
        # A device's entities need unique ids; a device needs identifiers and a name.
        assert isinstance(config.get("unique_id"), str)
        assert config["unique_id"]
        device = config["device"]
        assert set(device) <= DEVICE_KEYS, set(device) - DEVICE_KEYS
        assert device.get("identifiers") or device.get("connections")
        assert isinstance(device.get("name"), str)
        assert device["name"]
        if "configuration_url" in device:
            assert re.match(r"(https?|homeassistant)://", device["configuration_url"])
        # An entity name that starts with its device's name is stripped, with a warning.
        name = config.get("name")
        if isinstance(name, str):
            assert not name.lower().startswith(device["name"].lower()), (name, device["name"])
    return component, config


def check_all(messages: Iterable[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Check every config and what they share; the configs by topic.

    Unique ids are unique, and so are suggested entity ids; configs of one
    device agree on the device block (else the device's details flip with
    every config Home Assistant reads).
    """
    configs = {topic: check_config(topic, payload)[1] for topic, payload in messages}
    unique = [c["unique_id"] for c in configs.values()]
    assert len(unique) == len(set(unique)), unique
    entity_ids = [c["default_entity_id"] for c in configs.values() if "default_entity_id" in c]
    assert len(entity_ids) == len(set(entity_ids)), entity_ids
    devices: dict[str, dict[str, Any]] = {}
    for c in configs.values():
        device = c["device"]
        for ident in device["identifiers"]:
            assert devices.setdefault(ident, device) == device, (ident, device)
    return configs


def state_of(config: dict[str, Any], payload: str) -> str:
    """The state Home Assistant takes from ``payload`` with this config.

    Without a ``value_template`` the payload is the state; with one, the
    template is rendered over ``value`` (the payload) and ``value_json`` (the
    payload parsed as JSON, when it is JSON).
    """
    template = config.get("value_template")
    if template is None:
        return payload
    variables: dict[str, Any] = {"value": payload}
    with contextlib.suppress(ValueError):  # value_json exists only for a JSON payload
        variables["value_json"] = json.loads(payload)
    return _JINJA.from_string(template).render(**variables)


def attributes_of(config: dict[str, Any], payload: str) -> dict[str, Any] | None:
    """The attributes Home Assistant takes from ``payload`` (None without a topic)."""
    if "json_attributes_topic" not in config:
        return None
    text = payload
    if "json_attributes_template" in config:
        text = _JINJA.from_string(config["json_attributes_template"]).render(
            value=payload, value_json=json.loads(payload)
        )
    doc = json.loads(text)
    assert isinstance(doc, dict), "JSON result was not a dictionary"
    return doc
