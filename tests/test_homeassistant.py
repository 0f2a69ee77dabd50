"""Home Assistant MQTT discovery: configs checked against Home Assistant's rules, and end to end.

The rules (keys, abbreviations, device classes per unit, templates) are in
:mod:`tests.ha_rules`, transcribed from Home Assistant's documentation; the
templates are rendered with Jinja the way Home Assistant renders them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.clock import Stamp
from gateway.homeassistant import Discovery, config_filter, readable, status_page_url
from gateway.records import json_payload
from gateway.telemetry import format_value, parse_line
from tests.ha_rules import attributes_of, check_all, state_of
from tests.support import DESIGN_EXAMPLE, REPO, base_config, retained, wait_until, write_config

WALL_NS = 1_795_773_905_582_000_000
# The seed's groups and metrics (the design example), and its values.
_PARSED = parse_line(DESIGN_EXAMPLE)
assert _PARSED.packet is not None
SEED = _PARSED.packet


def seed_discovery(gateway_id: str = "gw-north", **options: Any) -> Discovery:
    d = Discovery("homeassistant", "iiot", gateway_id, **options)
    d.observe_metrics((g, m) for g, m, _ in SEED.metrics())
    return d


def seed_configs(gateway_id: str = "gw-north", **options: Any) -> dict[str, dict[str, Any]]:
    return check_all(seed_discovery(gateway_id, **options).all_configs())


def by_unique_id(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["unique_id"]: c for c in configs.values()}


@pytest.mark.parametrize("payload", ["plain", "json"])
def test_every_config_follows_home_assistants_rules(payload: str) -> None:
    configs = seed_configs(
        payload=payload, stale_after=300.0, configuration_url="http://10.0.0.5:9108/"
    )
    # the gateway's, its state's seven and the seed's nine metrics
    assert len(configs) == 1 + 7 + 9
    for config in configs.values():
        assert config["qos"] == 1
        assert config["device"]["configuration_url"] == "http://10.0.0.5:9108/"


def test_devices_and_names_of_the_seeds_groups() -> None:
    configs = by_unique_id(seed_configs())
    seen = {
        (c["device"]["name"], c["name"], c["default_entity_id"], c.get("entity_category"))
        for c in configs.values()
    }
    assert seen == {
        ("Gateway (gw-north)", "Status", "binary_sensor.gw_north_gateway_status", "diagnostic"),
        *(
            (
                "Gateway (gw-north)",
                f"{label} {name}",
                f"sensor.gw_north_gateway_{sink}_{key}",
                "diagnostic",
            )
            for sink, label in (("mqtt", "MQTT"), ("influx", "InfluxDB"))
            for key, name in (
                ("backlog", "backlog"),
                ("oldest_age", "oldest waiting"),
                ("coverage", "outage coverage"),
            )
        ),
        (
            "Gateway (gw-north)",
            "Clock synchronised",
            "binary_sensor.gw_north_gateway_clock",
            "diagnostic",
        ),
        ("Node 1 (gw-north)", "Temperature", "sensor.gw_north_node1_temperature", None),
        ("Node 1 (gw-north)", "Humidity", "sensor.gw_north_node1_humidity", None),
        ("Node 1 (gw-north)", "Gas resistance", "sensor.gw_north_node1_gas_resistance", None),
        ("Node 2 (gw-north)", "Temperature", "sensor.gw_north_node2_temperature", None),
        ("Node 2 (gw-north)", "Pressure", "sensor.gw_north_node2_pressure", None),
        # Node 2's radio link and packet counters: Node 2's, on its diagnostic card.
        ("Node 2 (gw-north)", "RSSI", "sensor.gw_north_signal_rssi", "diagnostic"),
        ("Node 2 (gw-north)", "SNR", "sensor.gw_north_signal_snr", "diagnostic"),
        (
            "Node 2 (gw-north)",
            "Packets received",
            "sensor.gw_north_stats_packets_received",
            "diagnostic",
        ),
        ("Node 2 (gw-north)", "CRC errors", "sensor.gw_north_stats_crc_errors", "diagnostic"),
    }
    gateway = configs["iiot-gw-north-status"]["device"]
    assert gateway["identifiers"] == ["iiot-gw-north"]
    assert gateway["sw_version"] == __version__
    node2 = configs["iiot-gw-north-signal-rssi"]["device"]
    assert node2["identifiers"] == ["iiot-gw-north-node2"]
    assert node2["via_device"] == "iiot-gw-north"
    # No device of its own for a group that is part of Node 2.
    identifiers = {c["device"]["identifiers"][0] for c in configs.values()}
    assert identifiers == {"iiot-gw-north", "iiot-gw-north-node1", "iiot-gw-north-node2"}


def test_unique_ids_and_topics_are_the_ones_earlier_releases_used() -> None:
    # Home Assistant keeps an entity (and its history) by unique id.
    configs = seed_configs("gw-7")
    assert {c["unique_id"] for c in configs.values()} == {
        "iiot-gw-7-status",
        *(f"iiot-gw-7-{g}-{m}" for g, m, _ in SEED.metrics()),
        # New with the state document: their own ids, none an earlier release used.
        *(
            f"iiot-gw-7-state-{sink}_{key}"
            for sink in ("mqtt", "influx")
            for key in ("backlog", "oldest_age", "coverage")
        ),
        "iiot-gw-7-state-clock",
    }
    assert "homeassistant/sensor/iiot-gw-7/signal_rssi/config" in configs
    assert "homeassistant/binary_sensor/iiot-gw-7/status/config" in configs
    assert config_filter("homeassistant", "gw-7") == "homeassistant/+/iiot-gw-7/+/config"


def test_groups_and_metrics_the_gateway_does_not_know_get_readable_names() -> None:
    d = Discovery("homeassistant", "iiot", "gw-north")
    d.observe_metrics([("node3", "wind_speed"), ("weather-station", "co2_ppm")])
    configs = by_unique_id(check_all(d.all_configs()))
    wind = configs["iiot-gw-north-node3-wind_speed"]
    assert (wind["device"]["name"], wind["name"]) == ("Node 3 (gw-north)", "Wind speed")
    assert wind["device"]["identifiers"] == ["iiot-gw-north-node3"]
    assert wind["default_entity_id"] == "sensor.gw_north_node3_wind_speed"
    co2 = configs["iiot-gw-north-weather-station-co2_ppm"]
    assert (co2["device"]["name"], co2["name"]) == ("Weather station (gw-north)", "Co2 ppm")
    assert "unit_of_measurement" not in co2
    assert "device_class" not in co2
    assert readable("node-12") == "Node 12"


def test_two_gateways_give_distinct_device_names_and_entity_ids_in_any_order() -> None:
    north, south = seed_configs("gw-north"), seed_configs("gw-south")
    both = check_all(
        [*seed_discovery("gw-north").all_configs(), *seed_discovery("gw-south").all_configs()]
    )
    assert len(both) == len(north) + len(south)
    names = {c["device"]["name"] for c in both.values()}
    assert {"Node 1 (gw-north)", "Node 1 (gw-south)"} <= names
    entity_ids = {c["default_entity_id"] for c in both.values()}
    assert {"sensor.gw_north_node1_temperature", "sensor.gw_south_node1_temperature"} <= entity_ids
    # What a gateway suggests depends on nothing but itself: not on the order
    # metrics were seen, nor on another gateway.
    reverse = Discovery("homeassistant", "iiot", "gw-north")
    for key in reversed([(g, m) for g, m, _ in SEED.metrics()]):
        reverse.observe_metrics([key])
    assert check_all(reverse.all_configs()) == north


@pytest.mark.parametrize("synced", [True, False])
def test_json_template_on_a_real_payload_yields_the_number(synced: bool) -> None:
    configs = by_unique_id(seed_configs(payload="json"))
    stamp = Stamp(WALL_NS) if synced else Stamp(WALL_NS, 5_000_000_000, "0a1b2c3d", synced=False)
    for group, metric, value in SEED.metrics():
        config = configs[f"iiot-gw-north-{group}-{metric}"]
        topic = f"iiot/{group}/{metric}"
        payload = json_payload(topic, format_value(value), stamp)
        assert float(state_of(config, payload)) == value, (topic, payload)
        attributes = attributes_of(config, payload)
        assert attributes is not None
        assert attributes["ts"] == "2026-11-27T10:05:05.582Z"
        assert "value" not in attributes
        assert ("clock" in attributes) is not synced
        if metric in ("temperature", "rssi"):
            assert attributes["unit"] in ("celsius", "dbm")


def test_plain_payload_is_the_state_and_has_no_templates() -> None:
    configs = by_unique_id(seed_configs(payload="plain"))
    for group, metric, value in SEED.metrics():
        config = configs[f"iiot-gw-north-{group}-{metric}"]
        assert "value_template" not in config
        assert "json_attributes_topic" not in config
        assert float(state_of(config, format_value(value))) == value


def test_expire_after_equals_stale_after() -> None:
    configs = by_unique_id(seed_configs(stale_after=300.0))
    gateway = ("iiot/gateway/status", "iiot/gateway/state")  # about the gateway, not a group
    sensors = [c for c in configs.values() if c["state_topic"] not in gateway]
    assert {c["expire_after"] for c in sensors} == {300}
    assert "expire_after" not in configs["iiot-gw-north-status"]
    # Only the groups whose stale alert is on; a fraction rounds up, never before the alert.
    only = by_unique_id(seed_configs(stale_after=90.2, stale_groups=("node1",)))
    assert only["iiot-gw-north-node1-temperature"]["expire_after"] == 91
    assert "expire_after" not in only["iiot-gw-north-node2-temperature"]
    off = seed_configs(stale_after=0.0)
    assert not any("expire_after" in c for c in off.values())


def test_the_status_page_is_linked_only_where_another_host_can_open_it() -> None:
    assert status_page_url("192.168.1.20:9108") == "http://192.168.1.20:9108/"
    assert status_page_url("[fd00::5]:9108") == "http://[fd00::5]:9108/"
    assert status_page_url("gw-north.local:9108") == "http://gw-north.local:9108/"
    for unreachable in ("", "0.0.0.0:9108", "[::]:9108", "127.0.0.1:9108", "[::1]:9108"):
        assert status_page_url(unreachable) == "", unreachable
    assert status_page_url("localhost:9108") == ""
    assert status_page_url("192.168.1.20:0") == ""  # the port is known only once bound
    configs = seed_configs()
    assert not any("configuration_url" in c["device"] for c in configs.values())


def test_discovery_publishes_new_metrics_once_and_everything_after_a_connect() -> None:
    d = Discovery("homeassistant", "iiot", "gw")
    assert d.observe_metrics([("node1", "temperature"), ("node1", "humidity")])
    assert not d.observe_metrics([("node1", "temperature")])
    assert len(d.take_new()) == 2
    assert d.take_new() == []
    assert d.observe_metrics([("node3", "battery")])
    # the gateway's, its state's (3 per sink, the clock) and every metric seen
    assert len(d.all_configs()) == 1 + 7 + 3
    assert d.take_new() == []  # a connect publishes everything, pending ones included


# --- end to end -------------------------------------------------------------------


def _ha_config(tmp_path: Path, test_id: str, broker, tsdb, payload: str) -> dict[str, Any]:
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(DESIGN_EXAMPLE + b"\n")
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, [sys.executable, "-V"])
    cfg["source"] = {"kind": "file", "path": str(capture)}
    cfg["mqtt"]["homeassistant"] = {"enabled": True, "discovery_prefix": "homeassistant"}
    cfg["mqtt"]["payload"] = payload
    cfg["alerts"] = {"stale_after": 120.0}
    return cfg


def _configs_when(broker, test_id: str, done, gw) -> dict[str, str]:
    found: dict[str, str] = {}

    def ready() -> bool:
        found.update(retained(broker.port, f"homeassistant/+/iiot-{test_id}/+/config"))
        return len(found) >= 10 and done(found)

    assert wait_until(ready, 30), (sorted(found), gw.log_text()[-2000:])
    return found


def _remove(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "homeassistant",
            "--remove",
            "--config",
            str(config),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_configs_are_retained_and_remove_is_refused_while_the_gateway_runs(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg = _ha_config(tmp_path, test_id, broker, tsdb, "json")
    cfg["status"] = {"listen": f"127.0.0.1:{_free_port()}"}
    gw = gateway_factory(cfg)
    gw_config = write_config(tmp_path / "ha.toml", cfg)
    node = f"iiot-{test_id}"
    try:
        found = _configs_when(broker, test_id, lambda f: True, gw)
        configs = check_all(found.items())
        sensors = {
            t: c
            for t, c in configs.items()
            if "/sensor/" in t and not c["state_topic"].endswith("/gateway/state")
        }
        assert len(sensors) == 9  # the design example's nine metrics
        assert {c["expire_after"] for c in sensors.values()} == {120}
        # Home Assistant's view of the retained readings: every one a number.
        states = retained(broker.port, f"{test_id}/#")
        values = {f"{test_id}/{g}/{m}": v for g, m, v in SEED.metrics()}
        for config in sensors.values():
            assert (
                float(state_of(config, states[config["state_topic"]]))
                == values[config["state_topic"]]
            )
        assert f"homeassistant/binary_sensor/{node}/status/config" in found
        # The gateway's diagnostic entities read the retained state document.
        state = states[f"{test_id}/gateway/state"]
        diagnostics = {
            c["unique_id"]: state_of(c, state)
            for c in configs.values()
            if c["state_topic"] == f"{test_id}/gateway/state"
        }
        assert diagnostics[f"{node}-state-clock"] == "ON"  # clock_sync "none": always right
        assert float(diagnostics[f"{node}-state-mqtt_backlog"]) >= 0
        assert len(diagnostics) == 7
        # Beside the running gateway --remove refuses: the configs would come back.
        out = _remove(gw_config)
        assert out.returncode == 1, out.stdout
        assert "answers on its status endpoint" in out.stderr
        assert "publishes its Home Assistant configs again" in out.stderr
        assert len(retained(broker.port, f"homeassistant/+/{node}/+/config")) == 17
        # Without the status endpoint, the lock on its buffer store tells.
        no_status = {**cfg, "status": {"listen": ""}}
        out = _remove(write_config(tmp_path / "ha-nostatus.toml", no_status))
        assert out.returncode == 1
        assert "holds the lock on" in out.stderr
        # --force removes, and warns that they come back.
        out = _remove(gw_config, "--force")
        assert out.returncode == 0, out.stderr
        assert "removed 17 Home Assistant discovery config(s)" in out.stdout
        assert "publishes them again at its next connect" in out.stderr
    finally:
        assert gw.terminate() == 0
    # Once it is stopped, --remove does it: every config goes.
    out = _remove(gw_config)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr
    assert retained(broker.port, f"homeassistant/+/{node}/+/config") == {}


def _templated(found: dict[str, str]) -> set[bool]:
    # The readings' sensors: the gateway's state entities always have a template.
    configs = [json.loads(p) for t, p in found.items() if "/sensor/" in t]
    return {
        "value_template" in c for c in configs if not c["state_topic"].endswith("/gateway/state")
    }


def test_changing_the_payload_mode_republishes_every_config(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    for payload, templated in (("plain", False), ("json", True), ("plain", False)):
        gw = gateway_factory(_ha_config(tmp_path, test_id, broker, tsdb, payload))
        try:
            found = _configs_when(broker, test_id, lambda f, t=templated: _templated(f) == {t}, gw)
        finally:
            assert gw.terminate() == 0
        configs = check_all(found.items())
        states = retained(broker.port, f"{test_id}/#")
        for config in configs.values():
            if "state_class" in config:
                value = state_of(config, states[config["state_topic"]])
                if config["state_topic"].endswith("/gateway/state") and value == "None":
                    continue  # a figure the state has as null: unknown in Home Assistant
                float(value)  # a number


def test_the_gateway_state_entities_read_the_state_document() -> None:
    configs = by_unique_id(seed_configs())
    doc = {
        "sinks": {
            "mqtt": {"backlog": 12, "oldest_age_s": 3.5, "coverage_h": 0.31},
            "influx": {"backlog": 0, "oldest_age_s": None, "coverage_h": None},
        },
        "clock": {"synchronized": False},
    }
    payload = json.dumps(doc)
    node = "iiot-gw-north"
    read = {uid.removeprefix(f"{node}-state-"): state_of(c, payload) for uid, c in configs.items()}
    assert read["mqtt_backlog"] == "12"
    assert read["mqtt_oldest_age"] == "3.5"
    assert read["mqtt_coverage"] == "0.31"
    # null: Home Assistant's "None" payload, an unknown state, not a zero
    assert read["influx_coverage"] == "None"
    assert read["clock"] == "OFF"
    for key in ("mqtt_backlog", "mqtt_oldest_age", "mqtt_coverage", "clock"):
        assert configs[f"{node}-state-{key}"]["entity_category"] == "diagnostic"
