"""A TCP relay that delays each direction: a slow uplink on loopback.

:class:`SlowLink` is a :class:`~tests.faults.proxy.Proxy` (so it can also
refuse, reset and black-hole) whose bytes take ``delay`` seconds to cross in
each direction: ``delay=0.025`` is a 50 ms round trip. Bandwidth is not
limited; it models the propagation delay of a far broker, where throughput is
bounded by what a sender keeps in flight divided by the round-trip time.

Also a program, so that a benchmark can run the relay in a process of its own
(its work then never competes for the benchmark's interpreter)::

    python -m tests.faults.slowlink LISTEN_PORT TARGET_PORT DELAY_SECONDS
"""

from __future__ import annotations

import math
import sys

import trio

from tests.faults.proxy import Proxy

_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class SlowLink(Proxy):
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target``, ``delay`` s each way."""

    def __init__(self, target: int, delay: float, port: int | None = None) -> None:
        super().__init__(target)
        self.delay = delay
        if port is not None:
            self.port = port

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        # Reading never waits for the delay (an unbounded queue), so the relay
        # adds latency only, like a long cable, not a small TCP window.
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def deliver() -> None:
            held: tuple[float, bytes] | None = None
            try:
                while True:
                    if held is None:
                        try:
                            held = await receive.receive()
                        except trio.EndOfChannel:
                            break
                    due, data = held
                    held = None
                    await trio.sleep_until(due)
                    # Whatever else is due by now leaves in the same send.
                    chunks = [data]
                    now = trio.current_time()
                    while True:
                        try:
                            item = receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        if item[0] > now:
                            held = item
                            break
                        chunks.append(item[1])
                    await dst.send_all(b"".join(chunks))
            except _CLOSED:
                pass
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver)
            try:
                async with send:
                    while data := await src.receive_some(65536):
                        if self.mode == "blackhole":
                            continue  # swallowed: a hung peer
                        send.send_nowait((trio.current_time() + self.delay, data))
            except _CLOSED:
                scope.cancel()


def main(argv: list[str]) -> int:
    """Run a relay in the foreground until killed."""
    listen, target, delay = int(argv[0]), int(argv[1]), float(argv[2])
    trio.run(SlowLink(target, delay, port=listen)._main)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
