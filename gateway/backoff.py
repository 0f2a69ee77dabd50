"""One backoff policy for every retry loop: full jitter, a cap, reset when stable.

Used by source restarts, MQTT reconnects and InfluxDB retries alike, so that a
field operator has a single behaviour to reason about.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import trio


def _full_jitter(ceiling: float) -> float:
    return random.uniform(0.0, ceiling)


class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(max, initial * 2**n))``.

    Call :meth:`up` when the guarded thing starts working (a connection is
    established, a child produced output). If it then stayed up for at least
    ``stable_after`` seconds before the next failure, the exponent resets to 0.

    Args:
        initial: the first ceiling, in seconds.
        maximum: the cap on the ceiling, in seconds.
        stable_after: seconds of uptime that reset the exponent (default: ``maximum``).
        jitter: maps a ceiling to the actual delay; injectable for exact tests.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        stable_after: float | None = None,
        jitter: Callable[[float], float] = _full_jitter,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self.stable_after = maximum if stable_after is None else stable_after
        self._jitter = jitter
        self.attempt = 0
        self._up_since: float | None = None

    def up(self) -> None:
        """Record that the guarded operation is working as of now."""
        if self._up_since is None:
            self._up_since = trio.current_time()

    def reset(self) -> None:
        """Forget all failures."""
        self.attempt = 0
        self._up_since = None

    def ceiling(self) -> float:
        """The current upper bound of the delay, before jitter."""
        return min(self.maximum, self.initial * 2.0**self.attempt)

    def next_delay(self, *, floor: float = 0.0) -> float:
        """Return the delay before the next attempt and count this failure.

        Args:
            floor: the share of the ceiling (0..1) the delay is at least. 0 is
                full jitter; 0.5 ("equal jitter") is for a retry known to do
                harm when it comes at once, such as reconnecting with a client
                id another client holds (it throws that client off).
        """
        if self._up_since is not None:
            if trio.current_time() - self._up_since >= self.stable_after:
                self.attempt = 0
            self._up_since = None
        ceiling = self.ceiling()
        delay = max(self._jitter(ceiling), floor * ceiling)
        # Cap the exponent so 2**attempt never overflows on a month-long outage.
        if self.initial * 2.0**self.attempt < self.maximum:
            self.attempt += 1
        return delay

    async def sleep(self, at_least: float = 0.0) -> float:
        """Sleep for :meth:`next_delay` (or ``at_least``, if longer); return the delay."""
        delay = max(self.next_delay(), at_least)
        await trio.sleep(delay)
        return delay
