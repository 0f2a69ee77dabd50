"""kill -9 at random moments (buffering, mid-batch, mid-replay), then restart.

Every record committed before a kill is delivered afterwards, SQLite's
integrity_check is "ok" after every kill, and no restart fails. The loop runs
SHORT_KILLS times in `make test`; its ``soak`` variant (`make soak`) SOAK_KILLS times.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from gateway.sinks.mqtt import WINDOW
from tests.faults.common import (
    NUMBERED,
    TIMED,
    committed_after_kill,
    delivered_influx,
    delivered_mqtt,
    duplicates,
    numbers,
    printed_between,
)
from tests.faults.proxy import Proxy
from tests.support import Subscriber, base_config, wait_until

SHORT_KILLS = 12
SOAK_KILLS = int(os.environ.get("SOAK_KILLS", "300"))


@pytest.mark.parametrize(
    "kills",
    [
        pytest.param(SHORT_KILLS, id="short"),
        pytest.param(SOAK_KILLS, id="soak", marks=pytest.mark.soak),
    ],
)
def test_kill9_loop_loses_nothing_committed(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property, kills: int
) -> None:
    rng = random.Random(1234)
    proxy = Proxy(broker.port).start()
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    state = tmp_path / "state"
    cfg = base_config(
        tmp_path,
        test_id,
        proxy.port,
        tsdb.url,
        [sys.executable, str(script), str(state), "1000000", "50"],
    )
    cfg["mqtt"]["buffer_max_messages"] = 100_000  # nothing may be dropped here
    buffer_dir = tmp_path / "buffer"
    sub = Subscriber(broker.port, f"{test_id}/#")
    committed_mqtt: set[int] = set()
    committed_influx: set[int] = set()
    try:
        for i in range(kills):
            # A third of the runs with the broker unreachable: kills while buffering
            # and, on the next healthy run, mid-replay.
            proxy.set_mode("refuse" if rng.random() < 0.33 else "heal")
            gw = gateway_factory(cfg)
            time.sleep(rng.uniform(0.8, 2.5))  # kill timing: anywhere in a run
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait()
            gw.kill()
            mqtt_waiting, influx_waiting, checks = committed_after_kill(buffer_dir)
            assert checks == ["ok"], (i, checks)
            committed_mqtt |= mqtt_waiting
            committed_influx |= influx_waiting
            # The orphaned child dies on its next write to the dead pipe (it writes
            # every 20 ms): a grace before the next run, not a wait for an event.
            time.sleep(0.1)

        # Heal and let a last run drain everything.
        proxy.set_mode("heal")
        gw = gateway_factory(cfg)
        printed = set(range(1, int(state.read_text()) + 1))

        def delivered() -> set[int]:
            return set(numbers(p for t, p in sub.snapshot() if t.endswith("/a/n")))

        assert wait_until(lambda: committed_mqtt <= delivered(), 120), gw.log_text()[-3000:]
        assert wait_until(
            lambda: (
                committed_influx
                <= set(
                    numbers(
                        str(v) for name, _, _, v, _ in tsdb.points(testid=test_id) if name == "n"
                    )
                )
            ),
            120,
        )
        assert gw.terminate() == 0
    finally:
        sub.close()
        proxy.close()
    seq = numbers(p for t, p in sub.snapshot() if t.endswith("/a/n"))
    got = set(seq)
    # What never reached a buffer died with a process (in a pipe), never after a commit.
    lost_uncommitted = len(printed - got)
    figures = {
        "kills": kills,
        "printed": len(printed),
        "delivered": len(got),
        "committed_checked": len(committed_mqtt),
        "mqtt_duplicates": duplicates(seq),
        "duplicates_per_kill": round(duplicates(seq) / kills, 1),
        "uncommitted_lost": lost_uncommitted,
    }
    record_property("figures", figures)
    print("kill -9 figures:", figures)
    assert committed_mqtt <= got
    assert duplicates(seq) <= kills * WINDOW


# -- write-behind: [gateway] write_delay = 2 ------------------------------------------

WRITE_DELAY = 2.0
WRITE_BEHIND_KILLS = 4


def write_behind_run(tmp_path: Path, test_id: str, broker, tsdb):  # type: ignore[no-untyped-def]
    """A config with write_delay = 2, its links through proxies, and a subscriber."""
    assert TIMED != NUMBERED
    mqtt_proxy = Proxy(broker.port).start()
    tsdb_proxy = Proxy(int(tsdb.url.rsplit(":", 1)[1])).start()
    script = tmp_path / "timed.py"
    script.write_text(TIMED)
    state = tmp_path / "state"
    cfg = base_config(
        tmp_path,
        test_id,
        mqtt_proxy.port,
        f"http://127.0.0.1:{tsdb_proxy.port}",
        [sys.executable, str(script), str(state), "1000000", "50"],
    )
    cfg["gateway"]["write_delay"] = WRITE_DELAY
    cfg["mqtt"]["buffer_max_messages"] = 100_000  # nothing may be dropped here
    sub = Subscriber(broker.port, f"{test_id}/#")
    return cfg, state, mqtt_proxy, tsdb_proxy, sub


def test_kill9_with_write_delay_and_links_down_keeps_every_record_older_than_it(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property
) -> None:
    """Links up, then down (records held in memory are written), then kill -9."""
    rng = random.Random(2024)
    cfg, state, mqtt_proxy, tsdb_proxy, sub = write_behind_run(tmp_path, test_id, broker, tsdb)
    buffer_dir = tmp_path / "buffer"
    kept: set[int] = set()  # printed more than write_delay before a kill
    try:
        for i in range(WRITE_BEHIND_KILLS):
            mqtt_proxy.set_mode("heal")
            tsdb_proxy.set_mode("heal")
            started_at = time.time()
            gw = gateway_factory(cfg)
            time.sleep(rng.uniform(1.5, 3.0))  # delivering: records acked from memory
            mqtt_proxy.set_mode("refuse")
            tsdb_proxy.set_mode("refuse")
            time.sleep(rng.uniform(0.5, 3.0))  # kill timing: buffering, links refused
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            killed_at = time.time()
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait()
            gw.kill()
            mqtt_waiting, influx_waiting, checks = committed_after_kill(buffer_dir)
            assert checks == ["ok"], (i, checks)
            old = printed_between(state, started_at, killed_at - WRITE_DELAY)
            kept |= old
            missing_mqtt = old - mqtt_waiting - set(delivered_mqtt(sub))
            missing_influx = old - influx_waiting - delivered_influx(tsdb, test_id)
            assert not missing_mqtt, (i, sorted(missing_mqtt)[:20])
            assert not missing_influx, (i, sorted(missing_influx)[:20])
            time.sleep(0.1)  # the orphaned child's grace, as in the loop above
        mqtt_proxy.set_mode("heal")
        tsdb_proxy.set_mode("heal")
        gw = gateway_factory(cfg)
        assert wait_until(lambda: kept <= set(delivered_mqtt(sub)), 120), gw.log_text()[-3000:]
        assert wait_until(lambda: "running:" in gw.log_text(), 30)  # SIGTERM handled from here
        assert gw.terminate() == 0
    finally:
        sub.close()
        mqtt_proxy.close()
        tsdb_proxy.close()
    record_property("figures", {"kills": WRITE_BEHIND_KILLS, "checked": len(kept)})


def test_kill9_with_write_delay_and_links_up_delivers_nothing_twice_beyond_the_window(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property
) -> None:
    rng = random.Random(99)
    cfg, state, mqtt_proxy, tsdb_proxy, sub = write_behind_run(tmp_path, test_id, broker, tsdb)
    buffer_dir = tmp_path / "buffer"
    kept: set[int] = set()  # printed more than write_delay before a kill
    try:
        for i in range(WRITE_BEHIND_KILLS):
            started_at = time.time()
            gw = gateway_factory(cfg)
            time.sleep(rng.uniform(1.5, 4.0))  # kill timing: anywhere while delivering
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            killed_at = time.time()
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait()
            gw.kill()
            mqtt_waiting, _, checks = committed_after_kill(buffer_dir)
            assert checks == ["ok"], (i, checks)
            old = printed_between(state, started_at, killed_at - WRITE_DELAY)
            kept |= old
            missing = old - mqtt_waiting - set(delivered_mqtt(sub))
            assert not missing, (i, sorted(missing)[:20])
            time.sleep(0.1)  # the orphaned child's grace, as in the loop above
        gw = gateway_factory(cfg)
        assert wait_until(lambda: kept <= set(delivered_mqtt(sub)), 120), gw.log_text()[-3000:]
        assert wait_until(lambda: "running:" in gw.log_text(), 30)  # SIGTERM handled from here
        assert gw.terminate() == 0
    finally:
        sub.close()
        mqtt_proxy.close()
        tsdb_proxy.close()
    seq = delivered_mqtt(sub)
    figures = {
        "kills": WRITE_BEHIND_KILLS,
        "delivered": len(set(seq)),
        "duplicates": duplicates(seq),
    }
    record_property("figures", figures)
    print("kill -9 with write_delay figures:", figures)
    # A record acknowledged is redelivered only if its ack had not reached the
    # disk: at most a window of records per kill.
    assert duplicates(seq) <= WRITE_BEHIND_KILLS * WINDOW
