"""Noticing that another client with our client id keeps taking our connection over.

A broker holds one connection per client id: when a second client connects
with it, the broker closes the first (MQTT-3.1.4-2). Two gateways on one id
(a cloned card, a copied config) then knock each other off for ever, and each
sees only a dropped connection. Two kinds of evidence:

- MQTT 5: the broker's DISCONNECT carries reason code 0x8E "Session taken
  over". Certain, and counted every time. (Mosquitto 2.0.11 does not send it:
  it closes the socket as under 3.1.1.)
- Any protocol: the broker closes :data:`TAKEOVER_STREAK` connections in a row,
  each within :data:`SHORT_LIVED_S` seconds of its CONNACK. A broker that
  restarts refuses the next connection attempt, which breaks the streak, and a
  link that drops at random rarely does so right after every connect; so this
  is a strong hint, reported as "probably".
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

SESSION_TAKEN_OVER = 0x8E  # MQTT 5 DISCONNECT reason code
# A connection the broker closes within this many seconds of its CONNACK is short-lived.
# The other gateway reconnects after its own backoff delay, so early in a takeover
# (delays of 0.5, 1, 2 s) every connection is this short.
SHORT_LIVED_S = 5.0
TAKEOVER_STREAK = 3  # short-lived connections in a row that count as a takeover
# Once a takeover is seen, every connection the broker closes within this many
# seconds is one too: as both gateways back off, the other one's delay (and so our
# connection) grows up to its backoff_max. A connection that lasts this long ends it.
STABLE_S = 60.0


@dataclass(frozen=True)
class Takeover:
    """A connection ended by (probably) another client with our id.

    Attributes:
        certain: the broker said so (MQTT 5 reason code 0x8E).
        evidence: what was seen, for the log and the status page.
    """

    certain: bool
    evidence: str


class TakeoverWatch:
    """Follows connections and their ends; says when one was taken over.

    Call :meth:`connected` at each CONNACK and :meth:`ended` when an attempt or
    a connection fails; times are Trio's clock, so tests run it under a MockClock.

    Args:
        streak: short-lived connections in a row that count as a takeover.
        short_lived: seconds after CONNACK within which a close is short-lived.
        stable: seconds a connection lasts that end a takeover.
    """

    def __init__(
        self,
        streak: int = TAKEOVER_STREAK,
        short_lived: float = SHORT_LIVED_S,
        stable: float = STABLE_S,
    ) -> None:
        self.streak = streak
        self.short_lived = short_lived
        self.stable = stable
        self._connack_at: float | None = None
        self._short = 0  # short-lived connections in a row
        # The last connection was taken over (cleared by one that lasts).
        self.suspected = False

    def connected(self) -> None:
        """A CONNACK arrived now."""
        self._connack_at = trio.current_time()

    def ended(self, reason: int | None) -> Takeover | None:
        """An attempt or a connection failed now; ``reason``: the DISCONNECT's reason code.

        An attempt that failed before its CONNACK (refused, unreachable) is no
        takeover and breaks the streak: a restarting broker looks like that.

        Returns:
            The takeover, when this looks like one; else None.
        """
        since, self._connack_at = self._connack_at, None
        if since is None:
            self._short = 0
            self.suspected = False
            return None
        lasted = trio.current_time() - since
        if reason == SESSION_TAKEN_OVER:
            self.suspected = True
            return Takeover(True, 'the broker said "session taken over" (MQTT 5 reason 0x8E)')
        if lasted >= self.stable:
            self.suspected = False
        if self.suspected:
            return Takeover(
                False, f"the broker closed the connection {lasted:.1f} s after accepting it, again"
            )
        if lasted >= self.short_lived:
            self._short = 0
            return None
        self._short += 1
        if self._short < self.streak:
            return None
        self.suspected = True
        return Takeover(
            False,
            f"the broker closed {self._short} connections in a row, each within "
            f"{self.short_lived:g} s of accepting it",
        )
