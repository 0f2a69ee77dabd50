"""kill -9 at random moments (buffering, mid-batch, mid-replay), then restart.

Every record committed before a kill is delivered afterwards, SQLite's
integrity_check is "ok" after every kill, and no restart fails. `make soak`
runs many more iterations (SOAK_KILLS).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

from gateway.buffer import STORE_FILE, BufferStore
from gateway.records import split_record
from gateway.sinks.mqtt import WINDOW
from tests.conftest import Subscriber, base_config, wait_until
from tests.faults.common import NUMBERED, duplicates, numbers
from tests.faults.proxy import Proxy

KILLS = int(os.environ.get("SOAK_KILLS", "30"))


def committed_after_kill(buffer_dir: Path) -> tuple[set[int], set[int], list[str]]:
    """Numbers waiting in each buffer, and the store's integrity_check result."""
    waiting: dict[str, set[int]] = {"mqtt": set(), "influx": set()}
    checks: list[str] = []
    if not (buffer_dir / STORE_FILE).exists():
        return waiting["mqtt"], waiting["influx"], checks
    store = BufferStore(buffer_dir, {"mqtt": 10**9, "influx": 10**9}, ack_delay=0)
    try:
        checks.append(store.integrity_check())
        assert not store.corrupt_moved, "the buffer store was corrupt after kill -9"
        waiting["mqtt"] = {int(split_record(r.value)[2]) for r in store.buffers["mqtt"].iter_all()}
        waiting["influx"] = {
            int(float(r.value.split("value=")[1].split()[0]))
            for r in store.buffers["influx"].iter_all()
        }
    finally:
        store.close()
    return waiting["mqtt"], waiting["influx"], checks


def test_kill9_loop_loses_nothing_committed(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property
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
        for i in range(KILLS):
            # A third of the runs with the broker unreachable: kills while buffering
            # and, on the next healthy run, mid-replay.
            proxy.set_mode("refuse" if rng.random() < 0.33 else "heal")
            gw = gateway_factory(cfg)
            time.sleep(rng.uniform(0.8, 2.5))
            assert gw.alive(), f"run {i} exited by itself:\n{gw.log_text()[-2000:]}"
            os.kill(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait()
            gw.kill()
            mqtt_waiting, influx_waiting, checks = committed_after_kill(buffer_dir)
            assert checks == ["ok"], (i, checks)
            committed_mqtt |= mqtt_waiting
            committed_influx |= influx_waiting
            # The orphaned child dies on its next write to the dead pipe.
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
        "kills": KILLS,
        "printed": len(printed),
        "delivered": len(got),
        "committed_checked": len(committed_mqtt),
        "mqtt_duplicates": duplicates(seq),
        "duplicates_per_kill": round(duplicates(seq) / KILLS, 1),
        "uncommitted_lost": lost_uncommitted,
    }
    record_property("figures", figures)
    print("kill -9 figures:", figures)
    assert committed_mqtt <= got
    assert duplicates(seq) <= KILLS * WINDOW
