"""systemd integration: readiness notification and a progress-aware watchdog.

The unit (``ops/iiot-gateway.service``) is ``Type=notify`` with ``WatchdogSec``:
systemd waits for ``READY=1`` and restarts the daemon when ``WATCHDOG=1`` stops
coming. The watchdog is fed only while the pipeline makes progress
(:func:`gateway.status.health.making_progress`), so a hung event loop *and* a daemon
that runs but moves nothing are both restarted. Without ``$NOTIFY_SOCKET``
(not run by systemd) everything here does nothing.

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
from gateway.status.health import health, making_progress, snapshot

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
    """Say ``READY=1``, then feed the watchdog while the pipeline makes progress.

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
            snap = snapshot(metrics)
            now = time.monotonic()
            if making_progress(snap, now, unhealthy_after):
                notify("WATCHDOG=1", environ=environ)
            else:
                _, reasons = health(snap, now, unhealthy_after)
                starving.log(
                    logging.ERROR,
                    "starve",
                    "no progress, not feeding the systemd watchdog: %s",
                    "; ".join(reasons),
                )
            await trio.sleep(interval)
    finally:
        notify("STOPPING=1", environ=environ)
