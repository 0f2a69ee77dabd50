"""The drain after an outage: 18,000 messages and points buffered, then the link heals.

Measured on several paths (:data:`DRAIN_PATHS`): a stock Mosquitto (a listener
and anonymous access, nothing else) on loopback; the same broker behind a
relay that adds 50 ms of round trip (tests.faults.slowlink, with the InfluxDB
link behind one too); and the tests' tuned broker on loopback, for comparison.
`mosquitto_pub -q 1 -l` takes the same path in the same run, and so does paho
alone (bench/alone.py: the design's MQTT client in a loop that does nothing
else, the ceiling of a gateway built on it).
"""

from __future__ import annotations

import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import REPO, Counter, Relay, Run, StockBroker, metric
from bench.report import Row, spread
from tests.services import Broker, stop_process, wait_listening
from tests.support import wait_until


@dataclass(frozen=True)
class DrainPath:
    """How a drain reaches its servers: which broker, the round trip added, the protocol."""

    name: str
    broker: type[Broker]
    rtt: float  # seconds added by the relay (both directions together)
    reference_messages: int  # mosquitto_pub's share: enough for a steady rate
    protocol: str | None = None  # mqtt.protocol; None: the default (MQTT 5)


DRAIN_PACKETS = 2000  # 18,000 MQTT messages and 18,000 points
DRAIN_RUNS = 3
SLOW_RTT = 0.050
# The counting subscriber takes QoS 0: a QoS 1 subscription to a stock broker
# has 20 messages in flight towards it and 1000 queued, so the subscriber, not
# the publisher, would set the pace, and a fast publisher would lose messages.
DRAIN_SUBSCRIBER_QOS = 0
# A stock Mosquitto 2 announces Receive Maximum 20 to an MQTT 5 client, which
# caps the window there; under 3.1.1 the window is mqtt.max_inflight (200).
# Both are what a site gets, so both are measured.
DRAIN_PATHS = (
    DrainPath("stock broker, loopback, MQTT 5", StockBroker, 0.0, DRAIN_PACKETS * 9),
    DrainPath("stock broker, loopback, MQTT 3.1.1", StockBroker, 0.0, DRAIN_PACKETS * 9, "3.1.1"),
    # mosquitto_pub keeps 20 messages in flight: ~15 s for 3,000 over 50 ms.
    DrainPath("stock broker, 50 ms RTT, MQTT 5", StockBroker, SLOW_RTT, 3000),
    DrainPath("stock broker, 50 ms RTT, MQTT 3.1.1", StockBroker, SLOW_RTT, 3000, "3.1.1"),
    DrainPath("tuned broker, loopback, MQTT 5", Broker, 0.0, DRAIN_PACKETS * 9),
)


def rate(counter: Counter, n: int) -> float:
    """Messages per second at the subscriber, first arrival to last.

    From the first arrival, not from the link healing: the gateway's reconnect
    backoff (up to backoff_max) is not part of its drain rate.
    """
    assert counter.first_at is not None
    assert counter.last_at is not None
    return (n - 1) / max(counter.last_at - counter.first_at, 1e-6)


def reference_mosquitto_pub(port: int, sub_port: int, n: int, workdir: Path) -> float:
    """Messages per second of `mosquitto_pub -q 1 -l` publishing n messages via ``port``."""
    lines = workdir / "ref.txt"
    lines.write_text("".join(f"{i}\n" for i in range(n)))
    counter = Counter(sub_port, "ref", qos=DRAIN_SUBSCRIBER_QOS)
    with open(lines, "rb") as f:
        subprocess.run(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", "ref/x", "-l"], stdin=f, check=True
        )
    assert wait_until(lambda: counter.count >= n, 120, 0.01), counter.count
    counter.close()
    return rate(counter, n)


def bench_drain(
    path: DrainPath,
    max_inflight: int | None = None,
    *,
    reference: bool = True,
    protocol: str | None = None,
) -> dict[str, Any]:
    """Buffer 18,000 messages and points with the servers unreachable, then heal the link.

    The gateway and the reference publisher take the same path: straight to
    the broker on loopback, else through the relays; the subscriber counts at
    the broker itself. On loopback the servers start while the gateway is
    frozen (SIGSTOP), so the subscriber is in place before its first message.
    """
    run = Run("drain", broker=path.broker)
    relayed = path.rtt > 0
    mqtt_link = Relay(run.broker.port, path.rtt / 2)
    influx_link = Relay(run.tsdb.port, path.rtt / 2)
    if relayed:
        run.broker.start()
        run.tsdb.start()
    mqtt_port = mqtt_link.port if relayed else run.broker.port
    influx_port = influx_link.port if relayed else run.tsdb.port
    try:
        capture = run.dir / "capture.jsonl"
        subprocess.run(
            [sys.executable, str(run.dir / "gen.py"), "0", str(DRAIN_PACKETS)],
            stdout=open(capture, "wb"),  # noqa: SIM115
            timeout=120,
            check=True,
        )
        messages = DRAIN_PACKETS * 9
        mqtt: dict[str, Any] = {
            "port": mqtt_port,
            "buffer_max_messages": messages * 2,
            "backoff_max": 1.0,
        }
        if max_inflight is not None:
            mqtt["max_inflight"] = max_inflight
        protocol = protocol or path.protocol
        if protocol is not None:
            mqtt["protocol"] = protocol
        cfg = run.config(
            ["unused"],
            source={"kind": "file", "path": str(capture)},
            mqtt=mqtt,
            influxdb={"url": f"http://127.0.0.1:{influx_port}", "backoff_max": 1.0},
        )
        gw = run.start_gateway(cfg)
        wait_listening(run.status_port)
        assert wait_until(
            lambda: metric(run.status_port, "gateway_mqtt_buffered_messages") >= messages, 120
        )
        assert wait_until(
            lambda: metric(run.status_port, "gateway_influx_buffered_points") >= messages, 120
        )
        if relayed:
            counter = Counter(run.broker.port, run.prefix, qos=DRAIN_SUBSCRIBER_QOS)
            mqtt_link.start()
            influx_link.start()
        else:
            gw.send_signal(signal.SIGSTOP)
            run.broker.start()
            counter = Counter(run.broker.port, run.prefix, qos=DRAIN_SUBSCRIBER_QOS)
            run.tsdb.start()
            gw.send_signal(signal.SIGCONT)
        influx_up = time.monotonic()
        influx_done: list[float] = []

        def drained() -> bool:
            # Both sinks drain at once: note each one's end as it happens.
            if not influx_done and metric(run.status_port, "gateway_influx_written_total") >= (
                messages
            ):
                influx_done.append(time.monotonic())
            return bool(influx_done) and counter.count >= messages

        assert wait_until(drained, 300, 0.02), (counter.count, influx_done)
        counter.close()
        # The window of the connection that drained (capped by the broker's
        # Receive Maximum under MQTT 5).
        window = metric(run.status_port, "gateway_mqtt_window")
        gateway_rate = rate(counter, messages)
        stop_process(run.gw)  # the reference has the machine to itself
        ref_rate = math.nan
        if reference:
            ref_rate = reference_mosquitto_pub(
                mqtt_port, run.broker.port, path.reference_messages, run.dir
            )
        return {
            "messages": messages,
            "gateway_rate": gateway_rate,
            "gateway_s": messages / gateway_rate,
            "reference_rate": ref_rate,
            "ratio": gateway_rate / ref_rate,
            "influx_s": influx_done[0] - influx_up,
            "window": window,
        }
    finally:
        mqtt_link.stop()
        influx_link.stop()
        run.close()


def bench_alone(path: DrainPath, extra_conf: str = "") -> dict[str, float]:
    """paho alone (bench/alone.py) publishing a backlog over ``path``, counted like the gateway.

    The same subscriber, relay and message count as the gateway's drain;
    ``extra_conf`` goes into the broker's configuration.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-alone-"))
    broker = path.broker(workdir, extra_conf=extra_conf).start()
    link = Relay(broker.port, path.rtt / 2).start() if path.rtt else None
    n = path.reference_messages
    try:
        counter = Counter(broker.port, "alone", qos=DRAIN_SUBSCRIBER_QOS)
        port = link.port if link else broker.port
        argv = [
            sys.executable,
            "-m",
            "bench.alone",
            str(port),
            "alone",
            str(n),
            path.protocol or "5",
        ]
        out = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, check=True, timeout=900
        )
        window = int(out.stdout)
        assert wait_until(lambda: counter.count >= n, 120, 0.01), counter.count
        counter.close()
        return {"rate": rate(counter, n), "window": window}
    finally:
        if link is not None:
            link.stop()
        broker.stop()


def alone_rows(
    rows: list[Row], path: DrainPath, gateway: list[float], reference: list[float], runs: int
) -> None:
    """Rows for paho alone on a stock-broker ``path``: the ceiling of the gateway's rate."""
    alone = [bench_alone(path) for _ in range(runs)]
    rates = [a["rate"] for a in alone]
    window = round(statistics.median(a["window"] for a in alone))
    ceiling = statistics.median(rates)
    rows.append(
        (
            f"drain, {path.name}: paho alone (bench/alone.py, no gateway, window {window}):"
            " rate, and / mosquitto_pub",
            "(reported)",
            f"{spread(rates, 0)} msg/s, {ceiling / statistics.median(reference):.2f}×",
            None,
        )
    )
    rows.append(
        (
            f"drain, {path.name}: gateway rate / paho alone",
            "(reported)",
            f"{statistics.median(gateway) / ceiling:.2f}×",
            None,
        )
    )
    if path.rtt:
        # The same client and relay with the broker's Nagle off: what a stock
        # broker's delayed PUBACKs cost a small window.
        nodelay = [bench_alone(path, "set_tcp_nodelay true\n")["rate"] for _ in range(runs)]
        rows.append(
            (
                f"drain, {path.name}: paho alone, broker with set_tcp_nodelay (window {window})",
                "(reported)",
                f"{spread(nodelay, 0)} msg/s ="
                f" {statistics.median(nodelay) / (window / path.rtt):.2f} × window / RTT",
                None,
            )
        )


def drain_rows(rows: list[Row], runs: int = DRAIN_RUNS) -> None:
    """The drain rows: each path ``runs`` times, medians and spreads."""
    for path in DRAIN_PATHS:
        drains = [bench_drain(path) for _ in range(runs)]
        # The connection's own window: under MQTT 5, the broker's Receive Maximum caps it.
        window = round(statistics.median(d["window"] for d in drains))
        ratios = [d["ratio"] for d in drains]
        rates = [d["gateway_rate"] for d in drains]
        ref = [d["reference_rate"] for d in drains]
        influx = [d["influx_s"] for d in drains]
        if path.rtt:
            bound = window / path.rtt
            rows.append(
                (
                    f"drain, {path.name}: MQTT rate, 18,000 QoS1 msgs (window {window})",
                    f"≥ 0.8 × window / RTT = {0.8 * bound:.0f}/s",
                    spread(rates, 0) + " msg/s",
                    statistics.median(rates) >= 0.8 * bound,
                )
            )
            rows.append(
                (
                    f"drain, {path.name}: gateway rate / mosquitto_pub -q 1 -l, same relay",
                    "> 1×",
                    spread(ratios) + "×",
                    statistics.median(ratios) > 1.0,
                )
            )
        else:
            target = 0.5 if path.broker is StockBroker else 0.20
            rows.append(
                (
                    f"drain, {path.name}: gateway rate / mosquitto_pub -q 1 -l (18,000 QoS1 msgs)",
                    f"≥ {target:.2f}×",
                    spread(ratios) + "×",
                    statistics.median(ratios) >= target,
                )
            )
        rows.append(
            (
                f"drain, {path.name}: MQTT rate gateway / reference",
                "(reported)",
                f"{spread(rates, 0)} / {spread(ref, 0)} msg/s",
                None,
            )
        )
        if path.broker is StockBroker:
            alone_rows(rows, path, rates, ref, runs)
        if path.protocol is None:  # (the database's drain does not depend on MQTT's protocol)
            rows.append(
                (
                    f"drain, {path.name}: InfluxDB backlog of 18,000 points",
                    "≤ 5 s",
                    spread(influx) + " s",
                    statistics.median(influx) <= 5.0,
                )
            )
