"""systemd integration: readiness notification and a watchdog that means "wedged".

The unit (``ops/iiot-gateway.service``) is ``Type=notify`` with ``WatchdogSec``:
systemd waits for ``READY=1`` and restarts the daemon when ``WATCHDOG=1`` stops
coming. The pings come from a task of the event loop, so a hung loop starves
the watchdog by itself; besides, they stop while a sink is wedged
(:func:`gateway.status.health.wedged`: connected, records waiting, nothing
delivered for ``unhealthy_after``), the one stuck state a restart can fix. A
silent sensor, a broker that is down or a database that refuses never starve
it: a restart would not bring them back, and the buffers hold what arrives.
Without ``$NOTIFY_SOCKET`` (not run by systemd) everything here does nothing.

The protocol is one datagram to an AF_UNIX socket (sd_notify(3)); a leading
``@`` names a socket in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

from gateway.metrics import Metrics, RateLimitedLog
from gateway.status.health import snapshot, wedged

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"


def _address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(msg: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``msg`` (e.g. ``"READY=1"``) to systemd.

    Returns:
        True if a datagram was sent; False when ``$NOTIFY_SOCKET`` is unset or
        the send failed (logged: a notification is never worth a crash).
    """
    environ = os.environ if environ is None else environ
    target = environ.get(NOTIFY_SOCKET_ENV, "")
    if not target:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(msg.encode(), _address(target))
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", msg, target, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None if not asked for.

    ``$WATCHDOG_PID``, when set, must be this process: a child that inherited
    the variables must not feed its parent's watchdog.
    """
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get(WATCHDOG_USEC_ENV, "0"))
    except ValueError:
        return None
    pid = environ.get(WATCHDOG_PID_ENV, "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1e6


async def watchdog(
    metrics: Metrics,
    unhealthy_after: float,
    *,
    environ: Mapping[str, str] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Say ``READY=1``, then feed the watchdog unless the daemon is wedged.

    Start it once every stage is running. Returns at once without
    ``$NOTIFY_SOCKET``; runs until cancelled otherwise, and says
    ``STOPPING=1`` when cancelled.
    """
    environ = os.environ if environ is None else environ
    if not environ.get(NOTIFY_SOCKET_ENV):
        task_status.started()
        return
    notify("READY=1", environ=environ)
    interval = watchdog_interval(environ)
    task_status.started()
    if interval is None:
        return
    starving = RateLimitedLog(log, interval=60.0)
    try:
        while True:
            reasons = wedged(snapshot(metrics), time.monotonic(), unhealthy_after)
            if not reasons:
                notify("WATCHDOG=1", environ=environ)
            else:
                starving.log(
                    logging.ERROR,
                    "starve",
                    "wedged, not feeding the systemd watchdog: %s",
                    "; ".join(reasons),
                )
            await trio.sleep(interval)
    finally:
        notify("STOPPING=1", environ=environ)
