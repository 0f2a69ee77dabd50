"""Which of a sink's servers to use: the active one, and when to try the next.

Both sinks take a list of equivalent servers (``mqtt.servers``,
``influxdb.urls``): nodes of one broker cluster, or one database behind several
endpoints. The policy is *sticky*: the sink stays on the server that works and
moves on, in list order and round the end back to the first, only when that
one fails. A server that returns is not preferred again until the one in use
fails. Going back on purpose would cost a switch each time: the MQTT window
resends what it had in flight, presence and discovery are published again, and
a flapping first node would drag every gateway along with it.

Each server has its own :class:`~gateway.backoff.Backoff`: a server's failures
set when *it* may be tried again, not when the next one may. So the next
server is tried at once after a failure unless it failed itself not long ago,
and while the whole list is down each server is retried no faster than a lone
server would be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import trio

from gateway.backoff import Backoff

T = TypeVar("T")


class Rotation(Generic[T]):
    """The servers of one sink, the active one, and a backoff per server.

    Args:
        servers: the servers in the configured order (at least one).
        backoff: makes the backoff of one server (called once per server).
    """

    def __init__(self, servers: Sequence[T], backoff: Callable[[], Backoff]) -> None:
        if not servers:
            raise ValueError("a rotation needs at least one server")
        self.servers = tuple(servers)
        self.backoffs = [backoff() for _ in self.servers]
        # Trio time before which each server is not tried again.
        self._not_before = [0.0] * len(self.servers)
        self.index = 0
        self.switches = 0

    @property
    def active(self) -> T:
        """The server in use (or being tried) now."""
        return self.servers[self.index]

    def up(self) -> None:
        """The active server works (a connection is up, a write succeeded)."""
        self.backoffs[self.index].up()

    def failed(self, *, switch: bool = True, floor: float = 0.0, at_least: float = 0.0) -> float:
        """The active server failed: count it, move to the next if ``switch``.

        Args:
            switch: whether this failure is one another server may not share
                (a network error, a 5xx) rather than the request's own fault.
            floor: passed to :meth:`Backoff.next_delay` (the share of the
                ceiling the failed server waits at least).
            at_least: seconds the failed server waits at least (Retry-After).

        Returns:
            Seconds to wait before trying the (new) active server: 0 when it
            has not failed recently, else what is left of its own backoff.
        """
        now = trio.current_time()
        delay = max(self.backoffs[self.index].next_delay(floor=floor), at_least)
        self._not_before[self.index] = now + delay
        if switch and len(self.servers) > 1:
            self.index = (self.index + 1) % len(self.servers)
            self.switches += 1
        return max(0.0, self._not_before[self.index] - now)
