"""A box without a clock: boots 2 h behind, the uplink returns with NTP.

`gateway run` runs under libfaketime, whose offset the test moves while the
daemon runs; CLOCK_BOOTTIME stays real. The source child runs without the
preload and notes the true time it wrote each line, so every point in the TSDB
can be checked against the truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import Subscriber, base_config, wait_until

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
PACKETS = 30
OBSERVE_S = 2.0  # an observation window: no point may reach the database in it

# Prints PACKETS lines once (a state file says it did), noting each line's true
# time; then stays quiet like probe-rs attached to an idle board.
CHILD = """
import json, os, sys, time
out, truth, done = sys.argv[1], sys.argv[2], sys.argv[3]
if not os.path.exists(done):
    with open(truth, "w") as t:
        for i in range(1, int(out) + 1):
            t.write(json.dumps({"n": i, "ns": time.time_ns()}) + "\\n"); t.flush()
            print(json.dumps({"v": 1, "seq": i, "t": {"n": i}}), flush=True)
            time.sleep(0.05)
    open(done, "w").close()
with open(os.path.join(os.path.dirname(done), "child.pid"), "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(3600)
"""


def _setup(
    tmp_path: Path, test_id: str, broker, tsdb, policy: str
) -> tuple[dict[str, Any], dict[str, str], Path]:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    command = [
        "env",
        "-u",
        "LD_PRELOAD",  # the child tells the truth
        sys.executable,
        str(child),
        str(PACKETS),
        str(tmp_path / "truth.jsonl"),
        str(tmp_path / "printed"),
    ]
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, command)
    cfg["gateway"]["clock_sync"] = policy
    cfg["gateway"]["clock_sync_file"] = str(tmp_path / "synchronized")
    offset = tmp_path / "faketime"
    offset.write_text("-2h\n")
    env = {
        "LD_PRELOAD": str(FAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    return cfg, env, offset


def _truth(tmp_path: Path) -> dict[int, int]:
    lines = (tmp_path / "truth.jsonl").read_text().splitlines()
    return {d["n"]: d["ns"] for d in map(json.loads, lines)}


def _kill_children(tmp_path: Path) -> None:
    pids = tmp_path / "child.pid"
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _points(tsdb, test_id: str) -> dict[int, int]:
    """n → the point's time (ms) in the TSDB."""
    return {int(v): ts for name, _, _, v, ts in tsdb.points(testid=test_id) if name == "n"}


def _values(sub: Subscriber, test_id: str) -> list[str]:
    return [p for t, p in sub.snapshot() if t == f"{test_id}/t/n"]


@pytest.fixture(autouse=True)
def _needs_faketime() -> None:
    assert FAKETIME.exists(), "libfaketime is missing: `make deps` installs the faketime package"


def test_points_of_a_wrong_clock_are_held_and_stamped_right_when_it_is(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    cfg, env, offset = _setup(tmp_path, test_id, broker, tsdb, "file")
    sub = Subscriber(broker.port, f"{test_id}/#")
    try:
        gw = gateway_factory(cfg, env)
        # MQTT gets every reading at once: subscribers want the value now.
        assert wait_until(lambda: len(_values(sub, test_id)) >= PACKETS, 60), gw.log_text()[-3000:]
        assert wait_until(
            lambda: "holding points until the clock is synchronised" in gw.log_text(), 30
        )
        time.sleep(OBSERVE_S)
        assert _points(tsdb, test_id) == {}, "points were written with a wrong clock"
        # Power cut: the daemon dies; it comes back in the same boot, clock still wrong.
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(10)
        gw2 = gateway_factory(cfg, env)
        assert wait_until(lambda: "running:" in gw2.log_text(), 30), gw2.log_text()[-3000:]
        time.sleep(OBSERVE_S)
        assert _points(tsdb, test_id) == {}
        # NTP comes back with the uplink: the clock steps 2 h forward and is synchronised.
        offset.write_text("+0\n")
        (tmp_path / "synchronized").touch()
        assert wait_until(lambda: len(_points(tsdb, test_id)) >= PACKETS, 60), gw2.log_text()[
            -3000:
        ]
        points = _points(tsdb, test_id)
        truth = _truth(tmp_path)
        errors = [abs(points[n] - truth[n] / 1e6) / 1e3 for n in range(1, PACKETS + 1)]
        print(f"\nclock figures (held, then corrected): max error {max(errors):.3f} s")
        assert max(errors) < 1.0, errors
        assert gw2.terminate() == 0
        assert "clock synchronised" in gw2.log_text()
    finally:
        sub.close()
        _kill_children(tmp_path)


def test_trusting_a_wrong_clock_writes_points_two_hours_off(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory
) -> None:
    """The 'before' figure: clock_sync = "none" on the same box."""
    cfg, env, _ = _setup(tmp_path, test_id, broker, tsdb, "none")
    try:
        gw = gateway_factory(cfg, env)
        assert wait_until(lambda: len(_points(tsdb, test_id)) >= PACKETS, 60), gw.log_text()[-3000:]
        points = _points(tsdb, test_id)
        truth = _truth(tmp_path)
        errors = [(truth[n] / 1e6 - points[n]) / 1e3 for n in range(1, PACKETS + 1)]
        print(
            f"\nclock figures (clock trusted): points {min(errors):.0f}–{max(errors):.0f} s early"
        )
        assert all(7100 < e < 7300 for e in errors), errors
        assert gw.terminate() == 0
    finally:
        _kill_children(tmp_path)
