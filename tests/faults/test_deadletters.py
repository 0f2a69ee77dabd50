"""Dead letters that the disk refuses: kept in the store through a kill -9 and a power cut.

The buffer directory is on LazyFS (see tests/faults/lazyfs.py). ``dead-letter``
in it is a regular file, so every open of ``dead-letter/<sink>.<ext>`` fails.
Every packet has a reading the servers refuse for good: its MQTT 5 message is on
a topic the broker's ACL denies (PUBACK 0x87), its InfluxDB point gets a 400 from
a stub database. Those dead letters must wait in the store (counted on /metrics
as ``gateway_dead_letters_waiting``) through a kill -9, a restart and two power
cuts (SIGKILL and LazyFS's unsynced bytes dropped; one at rest, one while refused
readings flow), and reach ``dead-letter/``, each at least once, once the directory
accepts again: 0 refused readings lost.

Before the cut at rest every refused reading was counted as waiting; in the cut
among flowing readings, those printed ``MARGIN`` s before it count as committed
(``durability = "full"``: fsynced). Whether or not a dead letter's transaction
reached the disk before a cut, its reading must come out of the store again (a
cut that loses that transaction only means the record is sent, and refused, again).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults import lazyfs
from tests.faults.common import TIMED, gw_running, kill_all, printed_between
from tests.services import Broker, free_port
from tests.support import (
    HttpRequest,
    HttpResponse,
    StubHttp,
    base_config,
    json_response,
    wait_until,
)
from tests.test_e2e import scrape

# Each packet: a/n (accepted everywhere) and b/n (refused for good everywhere);
# each packet's print time is logged (see TIMED).
TWO = TIMED.replace('"a": {"n": n}}', '"a": {"n": n}, "b": {"n": n}}')
MARGIN = 1.0  # s: a packet printed this long before a cut was committed
FIRST, SECOND, THIRD = 30, 60, 120  # packets printed by the end of each run


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[lazyfs.LazyFS]:
    """A LazyFS mount for this test's buffer directory."""
    if not lazyfs.FUSE_DEVICE.exists():
        pytest.skip(f"{lazyfs.FUSE_DEVICE} is missing: no FUSE here, so no LazyFS")
    mount = lazyfs.LazyFS(lazyfs.build(), tmp_path / "lazyfs").mount()
    yield mount
    mount.unmount()


def refuse_node_b(request: HttpRequest) -> HttpResponse:
    """A stub InfluxDB's write: 400 for any write that holds a ``node=b`` point, 204 otherwise."""
    if b",node=b," in request.content:
        return json_response(400, {"code": "invalid", "message": "refused"})
    return json_response(204, None)


def waiting(port: int) -> dict[str, float]:
    """``gateway_dead_letters_waiting`` by sink ({} while /metrics does not answer)."""
    try:
        figures = scrape(port)
    except OSError:
        return {}
    return {
        dict(labels)["sink"]: value
        for (name, labels), value in figures.items()
        if name == "gateway_dead_letters_waiting"
    }


def dead_numbers(path: Path, marker: str) -> list[int]:
    """Packet numbers of the dead letters in ``path`` (lines holding ``marker``)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if marker not in line:
            continue
        if " value=" in line:  # line protocol: n,node=b,... value=7.0 <time>
            out.append(int(float(line.split(" value=")[1].split()[0])))
        else:  # "<topic> <payload> (refused by the broker: ...)"
            out.append(int(line.split()[1]))
    return out


def test_refused_dead_letters_survive_kill9_and_a_power_cut_until_the_file_accepts(
    fs: lazyfs.LazyFS, tmp_path: Path, test_id, gateway_factory, record_property
) -> None:
    (tmp_path / "acl").write_text(
        "".join(f"topic readwrite {test_id}/{level}/#\n" for level in ("a", "gateway"))
    )
    # As root, mosquitto would drop to a user that cannot read tmp_path.
    broker = Broker(tmp_path, extra_conf=f"acl_file {tmp_path / 'acl'}\nuser root\n").start()
    influx = StubHttp({"/api/v2/write": refuse_node_b})
    script = tmp_path / "two.py"
    script.write_text(TWO)
    assert TWO != TIMED
    state = tmp_path / "state"  # outside LazyFS: what the source printed is known
    buffer_dir = fs.mnt / "buffer"
    cfg = base_config(
        tmp_path,
        test_id,
        broker.port,
        influx.url,
        [sys.executable, str(script), str(state), str(FIRST), "20"],
    )
    cfg["gateway"]["buffer_dir"] = str(buffer_dir)
    cfg["mqtt"]["protocol"] = "5"
    # A regular file where the directory should be: every dead-letter write fails.
    buffer_dir.mkdir()
    blocker = buffer_dir / "dead-letter"
    blocker.write_text("not a directory\n")
    mqtt_file = buffer_dir / "dead-letter" / "mqtt.txt"
    influx_file = buffer_dir / "dead-letter" / "influx.lp"
    mqtt_marker = f"{test_id}/b/n "

    def run(total: int) -> tuple[Any, int]:
        port = free_port()
        source = {**cfg["source"], "command": [*cfg["source"]["command"][:3], str(total), "20"]}
        gw = gateway_factory({**cfg, "source": source, "status": {"listen": f"127.0.0.1:{port}"}})
        assert wait_until(gw_running(gw), 30), gw.log_text()[-3000:]
        return gw, port

    def all_waiting(port: int, n: int) -> bool:
        return waiting(port) == {"mqtt": n, "influx": n}

    seen: list[dict[str, float]] = []
    try:
        # 1. Refused while the file refuses: they wait in the store. Then kill -9.
        gw, port = run(FIRST)
        assert wait_until(lambda: all_waiting(port, FIRST), 60), (
            waiting(port),
            gw.log_text()[-3000:],
        )
        seen.append(waiting(port))
        kill_all(gw)

        # 2. A restart: the first run's dead letters still wait, with the new ones.
        gw, port = run(SECOND)
        assert wait_until(lambda: all_waiting(port, SECOND), 60), (
            waiting(port),
            gw.log_text()[-3000:],
        )
        seen.append(waiting(port))
        # 3. A power cut at rest: the gateway and its source SIGKILLed, unsynced bytes gone.
        kill_all(gw)
        fs.clear_cache()

        # 4. Refused readings flowing, and a cut among them (the source's progress
        # is outside LazyFS; the waiting figure can lag behind while the file refuses).
        started_at = time.time()
        gw, port = run(THIRD)
        assert wait_until(lambda: int(state.read_text()) >= (SECOND + THIRD) // 2, 60, 0.05), (
            gw.log_text()[-3000:]
        )
        cut_at = time.time()
        kill_all(gw)
        fs.clear_cache()
        printed_by_cut = int(state.read_text())
        committed = set(range(1, SECOND + 1)) | printed_between(state, started_at, cut_at - MARGIN)
        refused = {"mqtt": set(committed), "influx": set(committed)}

        # 5. Still refusing after the cuts: what was counted still waits, the
        # source prints the rest.
        gw, port = run(THIRD)
        assert wait_until(
            lambda: (
                int(state.read_text()) == THIRD
                and all(waiting(port).get(sink, 0) >= len(refused[sink]) for sink in refused)
            ),
            60,
        ), (waiting(port), gw.log_text()[-3000:])
        seen.append(waiting(port))
        assert not (buffer_dir / "dead-letter").is_dir()
        # Printed by this run: all of it reaches the store (no cut follows).
        for sink in refused:
            refused[sink] |= set(range(printed_by_cut + 1, THIRD + 1))

        # 6. The directory accepts again: the mover retries and empties the queues.
        blocker.unlink()

        def moved() -> bool:
            return (
                refused["mqtt"] <= set(dead_numbers(mqtt_file, mqtt_marker))
                and refused["influx"] <= set(dead_numbers(influx_file, ",node=b,"))
                and all_waiting(port, 0)
            )

        assert wait_until(moved, 60), (waiting(port), gw.log_text()[-3000:])
        assert gw.terminate() == 0
        log = gw.log_text()
    finally:
        influx.close()
        broker.stop()
    mqtt = dead_numbers(mqtt_file, mqtt_marker)
    points = dead_numbers(influx_file, ",node=b,")
    figures = {
        "printed": THIRD,
        "printed_by_cut": printed_by_cut,
        "committed_by_cut": len(committed),
        "waiting_after_each_run": seen,
        "mqtt_dead_letters": len(mqtt),
        "mqtt_lost": len(refused["mqtt"] - set(mqtt)),
        "influx_dead_letters": len(points),
        "influx_lost": len(refused["influx"] - set(points)),
        "uncommitted_at_cut": sorted(set(range(1, THIRD + 1)) - set(mqtt)),
    }
    record_property("figures", figures)
    print("dead letters refused, kill -9, power cuts:", figures)
    assert refused["mqtt"] <= set(mqtt), sorted(refused["mqtt"] - set(mqtt))
    assert refused["influx"] <= set(points), sorted(refused["influx"] - set(points))
    assert "cannot write" in log
