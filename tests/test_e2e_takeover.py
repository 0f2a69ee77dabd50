"""End to end: two gateways forced onto one MQTT client id against a real Mosquitto.

The broker throws the older connection off each time the other gateway
connects. Each gateway must say so in an ERROR naming the client id and the
fix, count it on ``/metrics`` and ``/api/status``, and reconnect within its
backoff (a handful of connects a minute, not dozens). Mosquitto 2.0 closes
the socket without a DISCONNECT 0x8E even under MQTT 5, so both protocols
exercise the "closed right after every connect" evidence here; the 0x8E path
is covered in tests/sinks/test_takeover.py.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.services import Broker, free_port
from tests.support import GatewayProcess, base_config, wait_until
from tests.test_e2e import scrape

IDLE_CHILD = "import time\nwhile True: time.sleep(1)\n"
# Generous bounds: the takeover is seen within seconds on any machine.
DETECT_S = 30.0
WINDOW_S = 30.0
# With backoff 0.5 .. 8 s and each delay at least half the ceiling after a
# takeover, a gateway connects about every 6 s once the backoff is at its cap:
# ~5 in 30 s. The 0 s loop this replaces made dozens.
MAX_CONNECTS_IN_WINDOW = 12
ERROR = "two gateways use client id 'shared-id'"


def status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
        doc: dict[str, object] = json.loads(r.read())
    return doc


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_two_gateways_on_one_client_id_see_the_takeover_and_back_off(
    tmp_path: Path,
    broker: Broker,
    gateway_factory: Callable[..., GatewayProcess],
    protocol: str,
) -> None:
    gateways: list[tuple[GatewayProcess, int]] = []
    for n in range(2):
        workdir = tmp_path / f"box{n}"
        workdir.mkdir()
        cfg = base_config(
            workdir,
            f"box{n}",
            broker.port,
            "http://127.0.0.1:9",
            [sys.executable, "-c", IDLE_CHILD],
        )
        port = free_port()
        cfg["mqtt"].update(
            client_id="shared-id", protocol=protocol, backoff_initial=0.5, backoff_max=8.0
        )
        cfg["status"]["listen"] = f"127.0.0.1:{port}"
        gateways.append((gateway_factory(cfg), port))

    for gw, _ in gateways:
        assert wait_until(lambda gw=gw: ERROR in gw.log_text(), DETECT_S), gw.log_text()[-3000:]
        line = next(x for x in gw.log_text().splitlines() if ERROR in x)
        assert " ERROR " in line
        assert "gateway.id" in line

    before = [gw.log_text().count("mqtt: connected to") for gw, _ in gateways]
    time.sleep(WINDOW_S)
    for (gw, port), start in zip(gateways, before, strict=True):
        assert gw.alive()
        connects = gw.log_text().count("mqtt: connected to") - start
        assert connects <= MAX_CONNECTS_IN_WINDOW, f"{connects} connects in {WINDOW_S:g} s"
        metrics = scrape(port)
        assert metrics[("gateway_mqtt_takeovers_total", ())] >= 1
        mqtt = status(port)["sinks"]["mqtt"]  # type: ignore[index]
        assert mqtt["takeovers"] >= 1
    # Taken over, not starved: both kept getting connected now and then.
    assert all(gw.log_text().count("mqtt: connected to") >= 3 for gw, _ in gateways)
