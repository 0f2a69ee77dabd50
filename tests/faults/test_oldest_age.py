""" "Oldest waiting" during an outage: it grows while nothing can be sent.

The broker and the database are both down for 30 s while packets flow. The
oldest waiting record's age, computed from its stamp, must say so on
``/metrics``, ``/api/status`` and ``gateway status`` before they return, so
that the alert docs/operations.md recommends can fire; after the heal it
falls back as the backlog drains.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.faults.common import NUMBERED
from tests.faults.proxy import Proxy
from tests.services import free_port
from tests.support import REPO, base_config, wait_until
from tests.test_e2e import scrape

OUTAGE_S = 30.0


def oldest(port: int) -> dict[str, float]:
    """Each sink's ``gateway_buffer_oldest_age_seconds`` (empty while not listening)."""
    try:
        samples = scrape(port)
    except OSError:
        return {}
    return {
        dict(labels)["sink"]: value
        for (name, labels), value in samples.items()
        if name == "gateway_buffer_oldest_age_seconds"
    }


def api_status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
        return json.loads(r.read())


def test_oldest_age_grows_during_an_outage_of_both_servers(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    mqtt_proxy = Proxy(broker.port).start()
    db_proxy = Proxy(tsdb.port).start()
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    cfg = base_config(
        tmp_path,
        test_id,
        mqtt_proxy.port,
        f"http://127.0.0.1:{db_proxy.port}",
        [sys.executable, str(script), str(tmp_path / "state"), "100000", "2"],
    )
    status_port = free_port()
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    cfg["influxdb"]["timeout"] = 2.0
    gw = gateway_factory(cfg)
    try:
        # Running and caught up: what waits is young.
        assert wait_until(lambda: "mqtt" in oldest(status_port), 30), gw.log_text()
        assert wait_until(lambda: all(v < 5 for v in oldest(status_port).values()), 30)
        mqtt_proxy.set_mode("refuse")
        db_proxy.set_mode("refuse")
        down = time.monotonic()
        # The condition this test is about: both ages >= 25 s while the servers
        # are still down (the wait ends at once when it holds).
        grown = wait_until(
            lambda: all(oldest(status_port).get(s, 0) >= OUTAGE_S - 5 for s in ("mqtt", "influx")),
            OUTAGE_S + 5,
        )
        ages = oldest(status_port)
        doc = api_status(status_port)
        shown = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--url", f"http://127.0.0.1:{status_port}"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
        outage = time.monotonic() - down
        mqtt_proxy.set_mode("heal")
        db_proxy.set_mode("heal")
        assert grown, (ages, gw.log_text()[-3000:])
        assert outage < OUTAGE_S + 10  # measured while down, not after the heal
        sinks = doc["sinks"]
        assert isinstance(sinks, dict)
        for sink in ("mqtt", "influx"):
            assert sinks[sink]["oldest_age_s"] >= OUTAGE_S - 5, sinks[sink]
        assert shown.returncode == 0, shown.stderr
        assert "oldest" in shown.stdout.lower(), shown.stdout
        # Healed: the backlog drains and what waits is young again.
        assert wait_until(lambda: all(v < 5 for v in oldest(status_port).values()), 60), oldest(
            status_port
        )
    finally:
        code = gw.terminate()
        mqtt_proxy.close()
        db_proxy.close()
    assert code == 0, gw.log_text()
