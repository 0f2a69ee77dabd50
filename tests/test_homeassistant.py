"""Home Assistant MQTT discovery: payloads checked against the documented schema, and end to end.

Home Assistant publishes no machine-readable schema (and needs a newer Python
than this project), so the rules below are taken from its documentation of
MQTT discovery and of the sensor and binary sensor platforms.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gateway.homeassistant import Discovery, config_filter, gateway_config, metric_config
from tests.conftest import DESIGN_EXAMPLE, REPO, base_config, retained, wait_until, write_config

# Units Home Assistant accepts per device class (SensorDeviceClass documentation).
UNITS_BY_CLASS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "atmospheric_pressure": {"cbar", "bar", "hPa", "mmHg", "inHg", "kPa", "mbar", "Pa", "psi"},
    "signal_strength": {"dB", "dBm"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
SENSOR_KEYS = {
    "name",
    "unique_id",
    "state_topic",
    "availability_topic",
    "payload_available",
    "payload_not_available",
    "device",
    "unit_of_measurement",
    "device_class",
    "state_class",
}
DEVICE_KEYS = {"identifiers", "name", "manufacturer", "model", "via_device"}
# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-].
ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def check_sensor(topic: str, payload: str) -> dict[str, object]:
    parts = topic.split("/")
    assert parts[0] == "homeassistant"
    assert parts[-1] == "config"
    assert len(parts) == 5
    assert parts[1] == "sensor"
    assert set(parts[2]) <= ID_CHARS
    assert set(parts[3]) <= ID_CHARS
    config = json.loads(payload)
    assert set(config) <= SENSOR_KEYS, set(config) - SENSOR_KEYS
    assert isinstance(config["state_topic"], str)  # the only required key
    # A device needs a unique_id on the entity and identifiers on the device.
    assert isinstance(config["unique_id"], str)
    device = config["device"]
    assert set(device) <= DEVICE_KEYS
    assert device["identifiers"]
    cls = config.get("device_class")
    if cls is not None:
        assert config["unit_of_measurement"] in UNITS_BY_CLASS[cls]
    assert config["state_class"] in STATE_CLASSES
    return dict(config)


def test_each_metric_of_the_design_example_is_a_valid_sensor() -> None:
    expected = {
        "temperature": ("°C", "temperature"),
        "humidity": ("%", "humidity"),
        "pressure": ("hPa", "atmospheric_pressure"),
        "gas_resistance": ("Ω", None),
        "rssi": ("dBm", "signal_strength"),
        "snr": ("dB", None),
        "packets_received": (None, None),
    }
    group = {"pressure": "node2", "rssi": "signal", "snr": "signal"}
    for metric, (unit, cls) in expected.items():
        g = group.get(metric, "stats" if metric == "packets_received" else "node1")
        topic, payload = metric_config("homeassistant", "iiot", "gw-7", g, metric)
        config = check_sensor(topic, payload)
        assert topic == f"homeassistant/sensor/iiot-gw-7/{g}_{metric}/config"
        assert config["state_topic"] == f"iiot/{g}/{metric}"
        assert config.get("unit_of_measurement") == unit
        assert config.get("device_class") == cls
        assert config["availability_topic"] == "iiot/gateway/status"
        assert config["device"]["via_device"] == "iiot-gw-7"  # type: ignore[index]
    assert (
        check_sensor(*metric_config("homeassistant", "iiot", "g", "stats", "crc_errors"))[
            "state_class"
        ]
        == "total_increasing"
    )


def test_the_gateway_is_a_device_with_a_connectivity_sensor() -> None:
    topic, payload = gateway_config("homeassistant", "iiot", "gw-7")
    assert topic == "homeassistant/binary_sensor/iiot-gw-7/status/config"
    config = json.loads(payload)
    assert config["device_class"] == "connectivity"
    assert (config["payload_on"], config["payload_off"]) == ("online", "offline")
    assert config["device"]["identifiers"] == ["iiot-gw-7"]
    assert config["state_topic"] == "iiot/gateway/status"


def test_discovery_publishes_new_metrics_once_and_everything_after_a_connect() -> None:
    d = Discovery("homeassistant", "iiot", "gw")
    assert d.observe_metrics([("node1", "temperature"), ("node1", "humidity")])
    assert not d.observe_metrics([("node1", "temperature")])
    assert len(d.take_new()) == 2
    assert d.take_new() == []
    assert d.observe_metrics([("node3", "battery")])
    assert len(d.all_configs()) == 1 + 3  # the gateway's and every metric seen
    assert d.take_new() == []  # a connect publishes everything, pending ones included
    assert config_filter("homeassistant", "gw") == "homeassistant/+/iiot-gw/+/config"


def test_configs_are_retained_on_the_broker_end_to_end(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(DESIGN_EXAMPLE + b"\n")
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, [sys.executable, "-V"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    cfg["mqtt"]["homeassistant"] = {"enabled": True, "discovery_prefix": "homeassistant"}
    gw = gateway_factory(cfg)
    gw_config = write_config(tmp_path / "ha.toml", cfg)
    node = f"iiot-{test_id}"
    try:
        found: dict[str, str] = {}

        def all_configs() -> bool:
            found.update(retained(broker.port, f"homeassistant/+/{node}/+/config", 1.0))
            return len(found) >= 10

        assert wait_until(all_configs, 30), (sorted(found), gw.log_text()[-2000:])
    finally:
        assert gw.terminate() == 0
    sensors = {t: p for t, p in found.items() if "/sensor/" in t}
    assert len(sensors) == 9  # the design example's nine metrics
    for topic, payload in sensors.items():
        config = check_sensor(topic, payload)
        assert str(config["state_topic"]).startswith(f"{test_id}/")
    assert f"homeassistant/binary_sensor/{node}/status/config" in found
    # The operator takes the gateway out of Home Assistant: every config goes.
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "homeassistant", "--remove", "--config", str(gw_config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "removed 10 Home Assistant discovery config(s)" in out.stdout
    assert retained(broker.port, f"homeassistant/+/{node}/+/config", 1.0) == {}
