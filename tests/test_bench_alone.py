"""bench/alone.py, the paho-alone ceiling in `make bench`: it sends every message, in
order, and keeps to the window a gateway would have (the broker's Receive Maximum)."""

from __future__ import annotations

from pathlib import Path

from bench.alone import publish_alone
from bench.harness import StockBroker
from gateway.config.sections import DEFAULT_MAX_INFLIGHT
from tests.support import Subscriber


def test_paho_alone_sends_everything_within_the_gateways_window(tmp_path: Path) -> None:
    broker = StockBroker(tmp_path).start()
    try:
        for protocol, window in (("5", 20), ("3.1.1", DEFAULT_MAX_INFLIGHT)):
            prefix = f"alone{protocol.replace('.', '')}"
            sub = Subscriber(broker.port, f"{prefix}/#")
            try:
                # A stock Mosquitto announces Receive Maximum 20 to an MQTT 5
                # client; 3.1.1 has none, so the gateway's own window holds.
                assert publish_alone(broker.port, prefix, 450, protocol) == window
                assert sub.wait_for(lambda msgs: len(msgs) >= 450, 30)
                assert [payload for _, payload in sub.messages] == [f"{i}.5" for i in range(450)]
            finally:
                sub.close()
    finally:
        broker.stop()
