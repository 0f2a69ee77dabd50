"""Duplicates after a crash: a kill -9 re-delivers at most one window of messages.

An acknowledged message is delivered again after a crash only if the deletion of
its row had not reached the disk. The MQTT sink keeps what is in flight plus
what is acknowledged but not yet deleted on disk within ``mqtt.max_inflight``,
so a kill at any moment repeats at most that many messages:

- a kill 0.4 s into a drain of a 720-message backlog (the drain's start seen at
  an independent subscriber), then a restart that drains the rest; on loopback
  (the drain is over by then, its last deletions not all on disk) and over a
  slow link (the kill lands mid-drain with a full window in flight);
- kills at 12 packets/s with both links flapping: at most a window per kill;
- kills at 1 packet/s with the links up: an acknowledgement waits for the next
  commit (or ``ACK_DELAY``), so at most one packet's messages per kill.

Duplicates are counted at the subscriber by the packets' numbers, topic by
topic. `make soak` (``SOAK_KILLS``) runs 20 kills per loop; `make test` a few.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.common import (
    NUMBERED,
    committed_after_kill,
    duplicates,
    flap,
    gw_running,
    kill_all,
    numbers,
)
from tests.faults.proxy import Proxy
from tests.faults.slowlink import SlowLink
from tests.support import Subscriber, base_config, buffer_stats, wait_until

BACKLOG = 720  # messages, one per packet
KILLS = 20 if os.environ.get("SOAK_KILLS") else 5  # per loop
WINDOW = 200  # mqtt.max_inflight, set explicitly

# Like NUMBERED, with nine metrics per packet (as many as the simulator's
# packets have): groups a..i, each metric n = the packet's number.
NINE = NUMBERED.replace('"a": {"n": n}}', '**{g: {"n": n} for g in "abcdefghi"}}')
PER_PACKET = 9
# On loopback 720 messages drain in well under 0.4 s, so the kill finds them all
# acknowledged and their deletions not yet all on disk. Over a 200 ms round trip
# a window takes a round trip: the kill lands mid-drain, a full window in flight.
SLOW_HALF_RTT = 0.1


def mqtt_records(buffer_dir: Path) -> int:
    """Messages in the MQTT buffer (0 before the store exists)."""
    try:
        return int(buffer_stats(buffer_dir)["mqtt"]["records"])
    except subprocess.CalledProcessError:  # the store not created yet
        return 0


def deliveries(sub: Subscriber, suffix: str = "/a/n") -> list[int]:
    """Packet numbers of the messages on topics ending in ``suffix``, in arrival order."""
    return numbers(p for t, p in sub.snapshot() if t.endswith(suffix))


def repeated(sub: Subscriber, test_id: str) -> int:
    """Messages delivered more than once, counted per (topic, packet number)."""
    seen = Counter(
        (t, p) for t, p in sub.snapshot() if t.startswith(f"{test_id}/") and t[-2:] == "/n"
    )
    return sum(n - 1 for n in seen.values())


@pytest.mark.parametrize(
    ("window", "half_rtt"),
    [(WINDOW, 0.0), (50, 0.0), (WINDOW, SLOW_HALF_RTT), (50, SLOW_HALF_RTT)],
    ids=["200-loopback", "50-loopback", "200-slow-link", "50-slow-link"],
)
def test_kill9_early_in_a_drain_repeats_at_most_one_window(
    window: int,
    half_rtt: float,
    tmp_path: Path,
    broker,
    tsdb,
    test_id,
    gateway_factory,
    record_property,
) -> None:
    proxy = SlowLink(broker.port, half_rtt).start() if half_rtt else Proxy(broker.port).start()
    proxy.set_mode("refuse")  # the backlog builds first
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    cfg = base_config(
        tmp_path,
        test_id,
        proxy.port,
        tsdb.url,
        [sys.executable, str(script), str(tmp_path / "state"), str(BACKLOG), "2000"],
    )
    cfg["mqtt"]["max_inflight"] = window
    cfg["mqtt"]["buffer_max_messages"] = BACKLOG * 10  # nothing may be dropped here
    buffer_dir = tmp_path / "buffer"
    sub = Subscriber(broker.port, f"{test_id}/#")  # direct: never behind the proxy
    try:
        gw = gateway_factory(cfg)
        assert wait_until(lambda: mqtt_records(buffer_dir) >= BACKLOG, 60, 0.5), gw.log_text()[
            -2000:
        ]
        assert wait_until(gw_running(gw), 30)
        proxy.set_mode("heal")
        # The drain starts when its first message reaches the subscriber.
        assert sub.wait_for(lambda msgs: any(t.endswith("/a/n") for t, _ in msgs), 30), (
            gw.log_text()[-2000:]
        )
        time.sleep(0.4)  # kill timing: the kill lands 0.4 s into the drain
        kill_all(gw)
        at_kill = deliveries(sub)
        left = mqtt_records(buffer_dir)

        # The source printed everything already: the restart only drains.
        gw = gateway_factory(cfg)
        assert wait_until(lambda: set(deliveries(sub)) >= set(range(1, BACKLOG + 1)), 60), (
            gw.log_text()[-2000:]
        )
        assert wait_until(lambda: mqtt_records(buffer_dir) == 0, 30)
        assert wait_until(gw_running(gw), 30)
        assert gw.terminate() == 0
    finally:
        sub.close()
        proxy.close()
    seq = deliveries(sub)
    figures = {
        "window": window,
        "delivered_before_kill": len(set(at_kill)),
        "left_in_store_after_kill": left,
        "duplicates": duplicates(seq),
    }
    record_property("figures", figures)
    print("kill -9 mid-drain figures:", figures)
    assert set(seq) == set(range(1, BACKLOG + 1))
    if half_rtt:
        # 720 messages need at least 720 / window round trips: more than 0.4 s.
        assert len(set(at_kill)) < BACKLOG
    assert duplicates(seq) <= window


def test_kills_with_flapping_links_repeat_at_most_a_window_each(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property
) -> None:
    rng = random.Random(1912)
    mqtt_proxy = Proxy(broker.port).start()
    tsdb_proxy = Proxy(int(tsdb.url.rsplit(":", 1)[1])).start()
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    cfg = base_config(
        tmp_path,
        test_id,
        mqtt_proxy.port,
        f"http://127.0.0.1:{tsdb_proxy.port}",
        [sys.executable, str(script), str(tmp_path / "state"), "10000000", "12"],
    )
    cfg["mqtt"]["max_inflight"] = WINDOW
    cfg["mqtt"]["buffer_max_messages"] = 100_000  # nothing may be dropped here
    buffer_dir = tmp_path / "buffer"
    sub = Subscriber(broker.port, f"{test_id}/#")
    committed: set[int] = set()
    try:
        for i in range(KILLS):
            for proxy in (mqtt_proxy, tsdb_proxy):
                proxy.set_mode(rng.choice(["heal", "heal", "refuse"]))
            gw = gateway_factory(cfg)
            assert wait_until(gw_running(gw), 30), gw.log_text()[-3000:]
            flap(rng, [mqtt_proxy, tsdb_proxy], rng.uniform(1.5, 4.0))
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            kill_all(gw)
            waiting, _, checks = committed_after_kill(buffer_dir)
            assert checks in ([], ["ok"]), (i, checks)
            committed |= waiting

        mqtt_proxy.set_mode("heal")
        tsdb_proxy.set_mode("heal")
        silent = [sys.executable, "-c", "import time; time.sleep(3600)"]
        gw = gateway_factory({**cfg, "source": {**cfg["source"], "command": silent}})
        assert wait_until(lambda: mqtt_records(buffer_dir) == 0, 120, 1.0), gw.log_text()[-3000:]
        assert wait_until(lambda: committed <= set(deliveries(sub)), 30)
        assert wait_until(gw_running(gw), 30)
        assert gw.terminate() == 0
    finally:
        sub.close()
        mqtt_proxy.close()
        tsdb_proxy.close()
    seq = deliveries(sub)
    figures = {
        "kills": KILLS,
        "window": WINDOW,
        "delivered": len(set(seq)),
        "duplicates": duplicates(seq),
        "duplicates_per_kill": round(duplicates(seq) / KILLS, 1),
    }
    record_property("figures", figures)
    print("kill -9 with flapping links figures:", figures)
    assert committed <= set(seq)
    assert duplicates(seq) <= KILLS * WINDOW


def test_kills_at_field_rate_repeat_at_most_one_packet_each(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property
) -> None:
    rng = random.Random(77)
    script = tmp_path / "nine.py"
    script.write_text(NINE)
    assert script.read_text() != NUMBERED
    cfg = base_config(
        tmp_path,
        test_id,
        broker.port,
        tsdb.url,
        [sys.executable, str(script), str(tmp_path / "state"), "10000000", "1"],
    )
    cfg["mqtt"]["max_inflight"] = WINDOW
    buffer_dir = tmp_path / "buffer"
    sub = Subscriber(broker.port, f"{test_id}/#")
    # Repeats seen just before each kill, and once the last run drained: what a
    # run repeats is the previous kill's doing (reconnects alone repeat nothing
    # here, the links stay up).
    totals: list[int] = []
    try:
        for i in range(KILLS):
            gw = gateway_factory(cfg)
            assert wait_until(gw_running(gw), 30), gw.log_text()[-3000:]
            # Packets arrive and are delivered; the kill lands anywhere between them.
            time.sleep(rng.uniform(2.0, 4.0))  # kill timing
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            totals.append(repeated(sub, test_id))
            kill_all(gw)
        silent = [sys.executable, "-c", "import time; time.sleep(3600)"]
        gw = gateway_factory({**cfg, "source": {**cfg["source"], "command": silent}})
        assert wait_until(lambda: mqtt_records(buffer_dir) == 0, 60, 1.0), gw.log_text()[-3000:]
        assert wait_until(gw_running(gw), 30)
        assert gw.terminate() == 0  # a clean stop: the last deliveries have landed
        totals.append(repeated(sub, test_id))
    finally:
        sub.close()
    per_kill = [b - a for a, b in itertools.pairwise(totals)]
    packets = len(set(deliveries(sub)))
    figures = {
        "kills": KILLS,
        "packets": packets,
        "messages_per_packet": PER_PACKET,
        "duplicates": totals[-1],
        "duplicates_per_kill": per_kill,
    }
    record_property("figures", figures)
    print("kill -9 at 1 packet/s figures:", figures)
    assert totals[0] == 0
    assert packets >= KILLS  # packets did flow between the kills
    assert all(n <= PER_PACKET for n in per_kill), per_kill
    assert repeated(sub, test_id) <= KILLS * PER_PACKET
