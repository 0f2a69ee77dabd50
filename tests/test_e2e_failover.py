"""Failover end to end: the gateway as a process, two brokers, two database endpoints.

A broker is killed mid-stream (SIGKILL): delivery goes on to the other one
within ``backoff_max`` (plus a connect), nothing is lost across the two
brokers' subscribers, FIFO holds per topic across the switch, and duplicates
stay within one window. When the killed broker returns the gateway stays
where it is (sticky, see docs/architecture.md "Several servers"), and goes
back to it only when the one in use fails. The same for two URLs of one
VictoriaMetrics, each behind a proxy that "kills" its endpoint by refusing.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.faults.common import NUMBERED, duplicates, fifo_violations, numbers
from tests.faults.proxy import Proxy
from tests.services import Broker, Tsdb, free_port
from tests.support import Subscriber, base_config, retained, wait_until

RATE = 25.0  # packets per second
WINDOW = 20  # mqtt.max_inflight: the duplicate bound of one switch
STICKY_S = 4.0  # seconds the returned server is watched for (no traffic may go there)


def status(port: int) -> dict[str, Any]:
    """The gateway's /api/status ({} while it is not listening yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
            doc: dict[str, Any] = json.load(r)
            return doc
    except OSError:
        return {}


def server_gauges(port: int, name: str) -> dict[str, float]:
    """``name{label="x"} v`` lines of /metrics as {x: v}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            label, value = line.split("} ")
            out[label.split('"')[1]] = float(value)
    return out


def numbered(tmp_path: Path, total: int) -> list[str]:
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    return [sys.executable, str(script), str(tmp_path / "state"), str(total), str(RATE)]


def test_broker_failover_end_to_end(tmp_path: Path, test_id, gateway_factory, record_property):
    a = Broker(tmp_path).start()
    b = Broker(tmp_path).start()
    status_port = free_port()
    total = 700
    cfg = base_config(tmp_path, test_id, 0, "http://127.0.0.1:9", numbered(tmp_path, total))
    mqtt = cfg["mqtt"]
    del mqtt["host"], mqtt["port"]
    mqtt["servers"] = [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"]
    mqtt["max_inflight"] = WINDOW
    mqtt["connect_timeout"] = 1.5
    mqtt["homeassistant"] = {"enabled": True, "discovery_prefix": f"ha-{test_id}"}
    backoff_max = mqtt["backoff_max"]
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    name_a, name_b = mqtt["servers"]
    subs = {"a": Subscriber(a.port, f"{test_id}/#"), "b": Subscriber(b.port, f"{test_id}/#")}
    old: list[Subscriber] = []
    gw = gateway_factory(cfg)

    def seq(sub: Subscriber) -> list[int]:
        return numbers(p for t, p in sub.snapshot() if t.endswith("/a/n"))

    def every() -> list[int]:
        # In delivery order: the first broker, the second, the first again.
        return [n for s in [*old, subs["b"], *([subs["a"]] if "a" in subs else [])] for n in seq(s)]

    def active() -> str:
        return status(status_port).get("sinks", {}).get("mqtt", {}).get("server", "")

    try:
        # 1. The first server answers: everything goes there.
        assert subs["a"].wait_for(lambda m: len(seq_of(m)) >= 50, 30), gw.log_text()
        assert active() == name_a
        assert status(status_port)["sinks"]["mqtt"]["target"] == name_a
        assert server_gauges(status_port, "gateway_mqtt_server") == {name_a: 1.0, name_b: 0.0}
        assert seq(subs["b"]) == []

        # 2. Kill it mid-stream: delivery goes on to the second.
        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        # mosquitto_sub would reconnect on its own once the broker returns and
        # mix what it then gets into what it got before: end it, keep its record.
        subs["a"].close()
        old.append(subs.pop("a"))
        before = len(seq(subs["b"]))
        assert subs["b"].wait_for(lambda m: len(seq_of(m)) > before, backoff_max + 10), (
            gw.log_text()
        )
        switch_s = time.monotonic() - killed
        print(f"mqtt switch: first message on the second broker {switch_s:.2f} s after SIGKILL")
        record_property("mqtt_switch_s", round(switch_s, 2))
        assert wait_until(lambda: active() == name_b, 5)
        assert server_gauges(status_port, "gateway_mqtt_server") == {name_a: 0.0, name_b: 1.0}
        # Presence and discovery went to the broker now in use.
        assert retained(b.port, f"{test_id}/gateway/status")[f"{test_id}/gateway/status"] == (
            "online"
        )
        assert retained(b.port, f"ha-{test_id}/#"), "no discovery config on the second broker"

        # 3. The killed broker returns: sticky, nothing goes back to it.
        a.start()
        subs["a"] = Subscriber(a.port, f"{test_id}/#")
        n_b = len(seq(subs["b"]))
        time.sleep(STICKY_S)
        assert seq(subs["a"]) == [], "the gateway went back to the first broker on its own"
        assert len(seq(subs["b"])) > n_b, "delivery to the second broker stopped"
        assert active() == name_b

        # 4. The one in use fails: back to the first.
        b.stop(signal.SIGKILL)
        killed = time.monotonic()
        assert subs["a"].wait_for(lambda m: len(seq_of(m)) > 0, backoff_max + 10), gw.log_text()
        back_s = time.monotonic() - killed
        print(f"mqtt switch back: first message on the first broker {back_s:.2f} s after SIGKILL")
        record_property("mqtt_switch_back_s", round(back_s, 2))
        assert wait_until(lambda: active() == name_a, 5)

        # Nothing lost across every subscriber; FIFO per topic across both
        # switches (in delivery order: first broker, second, first again).
        assert wait_until(lambda: set(every()) >= set(range(1, total + 1)), 60), sorted(
            set(range(1, total + 1)) - set(every())
        )[:20]
        delivered = every()
        assert fifo_violations(delivered) == 0
        dupes = duplicates(delivered)
        print(f"mqtt duplicates over two switches: {dupes} (window {WINDOW})")
        # Each switch resends at most the window in flight when the broker died.
        assert dupes <= 2 * WINDOW
    finally:
        for s in [*old, *subs.values()]:
            s.close()
        gw.terminate()
        a.stop()
        b.stop()


def seq_of(messages: list[tuple[str, str]]) -> list[int]:
    """Packet numbers among a subscriber's messages."""
    return numbers(p for t, p in messages if t.endswith("/a/n"))


def test_database_failover_end_to_end(
    tmp_path: Path, test_id, gateway_factory, tsdb: Tsdb, broker, record_property
):
    # One VictoriaMetrics behind two proxies: "killing" an endpoint is refusing
    # its proxy, and every point lands in one database, where it is counted.
    p1, p2 = Proxy(tsdb.port).start(), Proxy(tsdb.port).start()
    url1, url2 = f"http://127.0.0.1:{p1.port}", f"http://127.0.0.1:{p2.port}"
    status_port = free_port()
    total = 600
    cfg = base_config(tmp_path, test_id, broker.port, url1, numbered(tmp_path, total))
    influx = cfg["influxdb"]
    del influx["url"]
    influx["urls"] = [url1, url2]
    influx["timeout"] = 2.0
    backoff_max = influx["backoff_max"]
    cfg["status"] = {"listen": f"127.0.0.1:{status_port}"}
    gw = gateway_factory(cfg)

    def points() -> list[int]:
        return numbers(str(v) for name, _, _, v, _ in tsdb.points(testid=test_id) if name == "n")

    def sink() -> dict[str, Any]:
        doc: dict[str, Any] = status(status_port).get("sinks", {}).get("influx", {})
        return doc

    def switched_to(url: str, since: float) -> bool:
        # On the URL, and a write there succeeded after the kill.
        s = sink()
        age = s.get("last_delivery_age_s")
        return s.get("server") == url and age is not None and age < time.monotonic() - since

    try:
        assert wait_until(lambda: len(points()) >= 50, 30), gw.log_text()
        assert sink()["server"] == url1
        assert sink()["target"].startswith(url1)
        assert server_gauges(status_port, "gateway_influx_server") == {url1: 1.0, url2: 0.0}

        p1.set_mode("refuse")
        killed = time.monotonic()
        assert wait_until(lambda: switched_to(url2, killed), backoff_max + 10, 0.05), gw.log_text()
        switch_s = time.monotonic() - killed
        print(f"influx switch: first write through the second URL {switch_s:.2f} s after refusal")
        record_property("influx_switch_s", round(switch_s, 2))
        assert server_gauges(status_port, "gateway_influx_server") == {url1: 0.0, url2: 1.0}

        # The first URL returns: sticky, the second stays in use.
        p1.set_mode("heal")
        time.sleep(STICKY_S)
        assert sink()["server"] == url2

        # The second fails: back to the first.
        p2.set_mode("refuse")
        killed = time.monotonic()
        assert wait_until(lambda: switched_to(url1, killed), backoff_max + 10, 0.05), gw.log_text()
        back_s = time.monotonic() - killed
        print(f"influx switch back: {back_s:.2f} s after refusal")
        record_property("influx_switch_back_s", round(back_s, 2))

        assert wait_until(lambda: set(points()) >= set(range(1, total + 1)), 60), sorted(
            set(range(1, total + 1)) - set(points())
        )[:20]
        got = points()
        # A request cut by the refusal may have been stored before its answer
        # was lost: at most one request (one batch) per switch comes twice.
        dupes = duplicates(got)
        print(f"influx duplicates over two switches: {dupes}")
        assert dupes <= 2 * influx.get("batch_size", 10) * 5  # a small backlog's request
    finally:
        gw.terminate()
        p1.close()
        p2.close()
