"""Outages while packets flow: broker flaps, a database down for 30 s, a black hole.

Nothing committed is lost, duplicates stay within the in-flight window, new
records never overtake old ones, and the backlog drains after each heal. The
``soak`` variant (`make soak`) has the full durations; `make test` runs a short one.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.sinks.mqtt import WINDOW
from tests.faults.common import NUMBERED, duplicates, fifo_violations, numbers
from tests.faults.proxy import Proxy
from tests.services import Tsdb
from tests.support import Subscriber, base_config, buffer_stats, retained, wait_until

RATE = 20.0  # packets per second
FLAP_S = 2.0  # the broker down, then up, for this long each time


@dataclass(frozen=True)
class Outages:
    """How long each fault lasts, and how many packets are printed meanwhile."""

    flaps: int  # broker deaths, FLAP_S down and FLAP_S up each
    db_down_s: float  # the database refusing connections
    blackhole_s: float  # both links a black hole (longer than keepalive x 1.5)
    total: int  # packets, at RATE


SHORT = Outages(flaps=3, db_down_s=10.0, blackhole_s=10.0, total=700)
SOAK = Outages(flaps=10, db_down_s=30.0, blackhole_s=20.0, total=1600)  # 80 s of packets


@pytest.mark.parametrize(
    "outages",
    [pytest.param(SHORT, id="short"), pytest.param(SOAK, id="soak", marks=pytest.mark.soak)],
)
def test_flapping_broker_database_outage_and_black_hole(
    tmp_path: Path,
    broker,
    test_id,
    gateway_factory,
    tmp_path_factory,
    record_property,
    outages: Outages,
) -> None:
    db = Tsdb(tmp_path_factory.mktemp("outage-db")).start()
    mqtt_proxy = Proxy(broker.port).start()
    db_proxy = Proxy(db.port).start()
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    total = outages.total
    cfg = base_config(
        tmp_path,
        test_id,
        mqtt_proxy.port,
        f"http://127.0.0.1:{db_proxy.port}",
        [sys.executable, str(script), str(tmp_path / "state"), str(total), str(RATE)],
    )
    cfg["influxdb"]["timeout"] = 2.0
    cfg["mqtt"]["keepalive"] = 5
    cfg["mqtt"]["connect_timeout"] = 1.5
    backoff_max = cfg["mqtt"]["backoff_max"]
    sub = Subscriber(broker.port, f"{test_id}/#")  # direct: never affected by the faults
    gw = gateway_factory(cfg)
    drains: dict[str, float] = {}

    def delivered() -> list[int]:
        return numbers(p for t, p in sub.snapshot() if t.endswith("/a/n"))

    def points() -> list[int]:
        return numbers(str(v) for name, _, _, v, _ in db.points(testid=test_id) if name == "n")

    try:
        assert sub.wait_for(lambda m: len(m) > 20, 30), gw.log_text()

        # 1. The broker "dies" again and again (ten times within a minute in the
        #    soak): every connection reset, new ones refused, FLAP_S at a time.
        for _ in range(outages.flaps):
            mqtt_proxy.set_mode("refuse")
            time.sleep(FLAP_S)  # fault duration: down ...
            mqtt_proxy.set_mode("heal")
            time.sleep(FLAP_S)  # ... and up again
        healed = time.monotonic()
        sent_so_far = int((tmp_path / "state").read_text())
        assert sub.wait_for(lambda m: set(range(1, sent_so_far + 1)) <= set(delivered()), 60)
        drains["mqtt_after_flaps_s"] = time.monotonic() - healed

        # 2. The database is down (30 s in the soak).
        db_proxy.set_mode("refuse")
        time.sleep(outages.db_down_s)  # fault duration
        db_proxy.set_mode("heal")
        healed = time.monotonic()
        sent_so_far = int((tmp_path / "state").read_text())
        assert wait_until(lambda: set(range(1, sent_so_far + 1)) <= set(points()), 60)
        drains["influx_after_30s_down_s"] = time.monotonic() - healed

        # 3. Both links become black holes (20 s in the soak: a hung broker and database).
        mqtt_proxy.set_mode("blackhole")
        db_proxy.set_mode("blackhole")
        time.sleep(outages.blackhole_s)  # fault duration
        mqtt_proxy.set_mode("heal")
        db_proxy.set_mode("heal")
        healed = time.monotonic()
        sent_so_far = int((tmp_path / "state").read_text())
        assert sub.wait_for(lambda m: set(range(1, sent_so_far + 1)) <= set(delivered()), 60)
        drains["mqtt_after_blackhole_s"] = time.monotonic() - healed
        assert wait_until(lambda: set(range(1, sent_so_far + 1)) <= set(points()), 60)
        drains["influx_after_blackhole_s"] = time.monotonic() - healed

        # Everything sent arrives; then the buffers are empty.
        assert wait_until(lambda: (tmp_path / "state").read_text() == str(total), 120)
        assert sub.wait_for(lambda m: set(range(1, total + 1)) <= set(delivered()), 60)
        assert wait_until(lambda: set(range(1, total + 1)) <= set(points()), 60)
        assert gw.alive()
    finally:
        code = gw.terminate()
        sub.close()
        mqtt_proxy.close()
        db_proxy.close()
    assert code == 0, gw.log_text()
    mqtt_seq = delivered()
    db_seq = points()
    assert set(mqtt_seq) == set(range(1, total + 1))
    assert set(db_seq) == set(range(1, total + 1))
    assert duplicates(mqtt_seq) <= (outages.flaps + 2) * WINDOW  # at most one window per fault
    assert fifo_violations(mqtt_seq) == 0
    assert retained(broker.port, f"{test_id}/a/n") == {f"{test_id}/a/n": str(total)}
    stats = buffer_stats(tmp_path / "buffer")
    assert (stats["mqtt"]["records"], stats["influx"]["records"]) == (0, 0)
    db.stop()
    figures = {
        **{k: round(v, 2) for k, v in drains.items()},
        "backoff_max_s": backoff_max,
        "mqtt_duplicates": duplicates(mqtt_seq),
        "influx_duplicates": duplicates(db_seq),
    }
    record_property("figures", figures)
    print("outage figures:", figures)
