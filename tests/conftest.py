"""Shared fixtures: real brokers and a real TSDB, and `gateway run` as a process.

Fixtures and hooks only; the helpers tests import live in tests/support.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import Broker, Tsdb
from tests.support import GatewayProcess, write_config


@pytest.fixture(scope="session")
def tsdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tsdb]:
    """One VictoriaMetrics for the session; tests isolate by a unique static tag."""
    server = Tsdb(tmp_path_factory.mktemp("tsdb")).start()
    yield server
    server.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto on a free port, stoppable by the test."""
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def test_id() -> str:
    """A unique id for topic prefixes and the static `testid` tag."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Start `gateway run` processes; all are killed at the end of the test."""
    procs: list[GatewayProcess] = []

    def start(
        config: dict[str, dict[str, Any]], env: dict[str, str] | None = None
    ) -> GatewayProcess:
        n = len(procs)
        path = write_config(tmp_path / f"config-{n}.toml", config)
        gp = GatewayProcess(path, tmp_path / f"gateway-{n}.log", env)
        procs.append(gp)
        return gp

    yield start
    for gp in procs:
        gp.kill()


# -- markers ------------------------------------------------------------------------------
# e2e: `gateway run` (or the installed gateway) as a process; integration: real
# servers, real child processes or an emulator. `make test-fast` runs neither.
E2E_FIXTURES = {"gateway_factory"}
INTEGRATION_FIXTURES = {"broker", "tsdb", "influx"}
INTEGRATION_MODULES = {
    "test_bench_alone",
    "test_firmware",
    "test_firmware_loop",
    "test_install",
    "test_status_page",
    "test_security",
    "test_source",
    "test_deploy",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test by what it needs (see pyproject.toml's markers)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if fixtures & E2E_FIXTURES or item.path.parent.name == "faults":
            item.add_marker(pytest.mark.e2e)
        elif fixtures & INTEGRATION_FIXTURES or module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
