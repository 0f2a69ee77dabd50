"""A full window in flight over a slow link: the link drops mid-drain, then SIGTERM mid-drain.

A backlog builds while the broker is unreachable; then the gateway drains it
through a relay that adds 50 ms of round trip (tests.faults.slowlink), so
every moment of the drain has a whole window of messages in flight. The link
drops (reset) a quarter of the way in; half way in it goes dead (what the
gateway sends vanishes, so a whole window waits for PUBACKs) and then drops:
nothing is lost, order is kept, each drop delivers at most one window twice.
Three quarters of the way in, SIGTERM: the window in flight lands, "offline"
is published, the process exits 0, and a restart delivers what was left,
without a duplicate.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.faults.common import NUMBERED, duplicates, fifo_violations, numbers
from tests.faults.slowlink import SlowLink
from tests.support import Subscriber, base_config, buffer_stats, retained, wait_until

TOTAL = 5000  # packets, one message each
WINDOW = 64  # messages in flight: ~1,300 msg/s over 50 ms, a drain of a few seconds
HALF_RTT = 0.025


def buffered(tmp_path: Path) -> int:
    """Messages in the MQTT buffer (0 before the store exists)."""
    try:
        return int(buffer_stats(tmp_path / "buffer")["mqtt"]["records"])
    except subprocess.CalledProcessError:
        return 0


def test_link_drop_and_sigterm_with_a_full_window_in_flight(
    tmp_path: Path, broker, tsdb, test_id, gateway_factory, record_property
) -> None:
    link = SlowLink(broker.port, HALF_RTT).start()
    link.set_mode("refuse")  # the backlog builds first
    script = tmp_path / "numbered.py"
    script.write_text(NUMBERED)
    cfg = base_config(
        tmp_path,
        test_id,
        link.port,
        tsdb.url,
        [sys.executable, str(script), str(tmp_path / "state"), str(TOTAL), "2000"],
    )
    cfg["mqtt"]["max_inflight"] = WINDOW
    cfg["mqtt"]["connect_timeout"] = 1.5  # a reset before CONNACK waits this long
    cfg["mqtt"]["buffer_max_messages"] = TOTAL * 2  # nothing may be dropped here
    sub = Subscriber(broker.port, f"{test_id}/#")  # direct: never affected by the faults

    def delivered() -> list[int]:
        return numbers(p for t, p in sub.snapshot() if t.endswith("/a/n"))

    gw = gateway_factory(cfg)
    try:
        assert wait_until(lambda: buffered(tmp_path) >= TOTAL, 60, 0.5), gw.log_text()[-2000:]

        # The drain starts. A quarter of the way in, the link drops (reset)
        # with the window in flight; half way in, it goes dead first (a black
        # hole: the window is sent, nothing comes back), then drops.
        link.set_mode("heal")
        drops = []
        for share in (4, 2):
            assert sub.wait_for(lambda _, share=share: len(delivered()) >= TOTAL // share, 60), (
                gw.log_text()[-2000:]
            )
            if share == 2:
                link.set_mode("blackhole")
                time.sleep(0.5)  # fault duration: the window sent, nothing back
            drops.append(len(delivered()))
            link.set_mode("refuse")
            time.sleep(0.5)  # fault duration: a short outage, the gateway retries meanwhile
            link.set_mode("heal")

        # Three quarters of the way in: SIGTERM, with a window in flight.
        assert sub.wait_for(lambda _: len(set(delivered())) >= 3 * TOTAL // 4, 60), gw.log_text()[
            -2000:
        ]
        stopped_at = len(delivered())
        code = gw.terminate()
        assert code == 0, gw.log_text()[-3000:]
        assert retained(broker.port, f"{test_id}/gateway/status") == {
            f"{test_id}/gateway/status": "offline"
        }
        left = buffered(tmp_path)
        assert 0 < left < TOTAL
        before_restart = delivered()

        # A restart delivers the rest.
        gw = gateway_factory(cfg)
        assert sub.wait_for(lambda _: set(range(1, TOTAL + 1)) <= set(delivered()), 60), (
            gw.log_text()[-2000:]
        )
        code = gw.terminate()
        assert code == 0, gw.log_text()[-3000:]
    finally:
        sub.close()
        link.close()
    seq = delivered()
    assert set(seq) == set(range(1, TOTAL + 1))
    assert fifo_violations(seq) == 0
    # Two faults that can repeat messages (the drops): at most a window each.
    assert duplicates(seq) <= 2 * WINDOW
    # A clean stop loses no acknowledgement: the restart repeats nothing.
    assert set(seq[len(before_restart) :]).isdisjoint(before_restart)
    assert buffered(tmp_path) == 0
    figures = {
        "drops_at": drops,
        "stopped_at": stopped_at,
        "left_after_sigterm": left,
        "duplicates": duplicates(seq),
    }
    record_property("figures", figures)
    print("window figures:", figures)
