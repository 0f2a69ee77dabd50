"""The deploy stack: docker-compose.yml, its mounted files, the Grafana provisioning."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import load_config
from gateway.pipeline import STATS_MEASUREMENTS

REPO = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services_and_mounts_exist() -> None:
    doc = compose()
    assert set(doc["services"]) == {"mosquitto", "influxdb", "gateway", "grafana"}
    for name, service in doc["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), (name, source)
    env = doc["services"]["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_ORG"] == "my-org"
    assert env["DOCKER_INFLUXDB_INIT_BUCKET"] == "telemetry"


def has_compose() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    version = subprocess.run([docker, "compose", "version"], capture_output=True, check=False)
    return version.returncode == 0


@pytest.mark.skipif(not has_compose(), reason="no `docker compose` here (plugin not installed)")
def test_compose_config_when_the_client_has_compose() -> None:
    docker = shutil.which("docker")
    assert docker is not None
    result = subprocess.run(
        [docker, "compose", "--profile", "simulated", "config", "--quiet"],
        cwd=REPO,
        env={"INFLUXDB_TOKEN": "t", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against the compose specification's schema (shipped with it)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_compose_schema(REPO / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_catches_a_typo(tmp_path: Path) -> None:
    doc = compose()
    gateway = doc["services"]["gateway"]
    gateway["prots"] = gateway.pop("ports")
    typo = tmp_path / "docker-compose.yml"
    typo.write_text(yaml.safe_dump(doc))
    result = check_compose_schema(typo)
    assert result.returncode != 0
    assert "prots" in result.stdout


def test_compose_gateway_is_opt_in_and_servers_are_not() -> None:
    services = compose()["services"]
    assert services["gateway"]["profiles"] == ["simulated"]
    for name in ("mosquitto", "influxdb", "grafana"):
        assert "profiles" not in services[name], name


def test_retention_is_90_days_by_default_and_overridable() -> None:
    env = compose()["services"]["influxdb"]["environment"]
    assert env["DOCKER_INFLUXDB_INIT_RETENTION"] == "${INFLUXDB_RETENTION:-90d}"
    services_sh = (REPO / "ops/services.sh").read_text()
    assert '-retentionPeriod "${TSDB_RETENTION:-90d}"' in services_sh


def published_host_ports(service: dict[str, Any]) -> set[int]:
    """Host ports a compose service publishes (short and long syntax)."""
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            if "published" in entry:
                ports.add(int(entry["published"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) >= 2:
            ports.add(int(parts[-2]))
    return ports


def listen_port(listen: str) -> int | None:
    return int(listen.rsplit(":", 1)[1]) if listen else None


def test_simulated_gateway_never_collides_with_a_host_gateway() -> None:
    doc = compose()
    sim_raw = tomllib.loads((REPO / "ops/docker/gateway.toml").read_text())
    # Both set here: the host's defaults (gateway.id, mqtt.client_id) follow its host name.
    assert "id" in sim_raw["gateway"]
    assert "client_id" in sim_raw["mqtt"]
    sim = load_config(REPO / "ops/docker/gateway.toml", environ={})
    hosts = [load_config(REPO / name, environ={}) for name in ("config.toml", "ops/local.toml")]
    published = {
        port for service in doc["services"].values() for port in published_host_ports(service)
    }
    for host in hosts:
        assert sim.mqtt.client_id != host.mqtt.client_id
        assert sim.gateway.id != host.gateway.id
        assert sim.mqtt.topic_prefix != host.mqtt.topic_prefix
        assert listen_port(host.status.listen) not in published
    # ops/install.sh writes client id iiot-gateway-<host name>.
    assert sim.mqtt.client_id == f"iiot-gateway-{sim.gateway.id}"
    assert sim.gateway.id == "docker-sim"
    assert sim.influxdb.tags.get("site") == "docker-sim"
    assert published_host_ports(doc["services"]["gateway"]) == {9109}


def test_container_config_matches_compose_names() -> None:
    cfg = load_config(REPO / "ops/docker/gateway.toml", environ={})
    assert cfg.mqtt.host == "mosquitto"
    assert cfg.influxdb.url == "http://influxdb:8086"
    assert (cfg.influxdb.org, cfg.influxdb.bucket) == ("my-org", "telemetry")


def test_default_config_points_at_the_compose_stack() -> None:
    cfg = load_config(REPO / "config.toml", environ={})
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("localhost", 1883)
    assert cfg.influxdb.url == "http://localhost:8086"
    assert (cfg.influxdb.org, cfg.influxdb.bucket) == ("my-org", "telemetry")


def test_grafana_provisioning_parses_and_covers_every_metric() -> None:
    for path in (REPO / "ops/grafana/provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text()), path
    dashboard = json.loads((REPO / "ops/grafana/dashboards/iiot-telemetry.json").read_text())
    text = json.dumps(dashboard)
    for metric in ("temperature", "humidity", "gas_resistance", "pressure", "rssi", "snr"):
        assert metric in text, metric


def flux_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every Flux query of a dashboard: its panels' targets and its template variables'."""
    queries = [t["query"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return queries + [v["query"] for v in dashboard["templating"]["list"]]


def test_grafana_fleet_dashboard_draws_a_row_per_gateway_from_the_self_stats() -> None:
    provider = yaml.safe_load((REPO / "ops/grafana/provisioning/dashboards/iiot.yaml").read_text())
    mounts = compose()["services"]["grafana"]["volumes"]
    # The provider loads every JSON file of the directory compose mounts: no entry per dashboard.
    assert f"./ops/grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    dashboards = {
        p.name: json.loads(p.read_text()) for p in (REPO / "ops/grafana/dashboards").glob("*.json")
    }
    assert {"iiot-telemetry.json", "iiot-fleet.json"} <= set(dashboards)
    assert len({d["uid"] for d in dashboards.values()}) == len(dashboards)
    fleet = dashboards["iiot-fleet.json"]
    (variable,) = fleet["templating"]["list"]
    assert variable["name"] == "gateway"
    assert 'tag: "gateway"' in variable["query"]
    rows = [p for p in fleet["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == ["gateway"]
    measurements: set[str] = set()
    for query in flux_queries(fleet):
        assert query.count('bucket: "telemetry"') == 1, query
        assert 'r.node == "gateway"' in query, query
        measurements |= set(re.findall(r'r\._measurement == "(\w+)"', query))
    for panel in fleet["panels"][1:]:
        assert panel["datasource"]["uid"] == "iiot-influxdb"
        assert all('r.gateway == "${gateway}"' in t["query"] for t in panel["targets"])
    # What it draws is what the gateway writes, and every figure the gateway writes is drawn.
    assert measurements <= set(STATS_MEASUREMENTS)
    assert set(STATS_MEASUREMENTS) - measurements == {
        "mqtt_dropped",
        "influx_dropped",
        "packets",
    }
    # The telemetry dashboard's gateway panel keeps to the figures it names.
    telemetry = flux_queries(dashboards["iiot-telemetry.json"])
    gateway_panel = [q for q in telemetry if 'r.node == "gateway"' in q]
    assert len(gateway_panel) == 1
    assert "oldest_age" not in gateway_panel[0]


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a document's headings."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", ["docs/operations.md", "README.md"])
def test_relative_links_resolve(doc: str) -> None:
    path = REPO / doc
    text = path.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        assert file.exists(), link
        if anchor:
            assert anchor in heading_anchors(file.read_text()), link
