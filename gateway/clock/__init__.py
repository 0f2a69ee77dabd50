"""Whether the wall clock can be trusted, and stamps that survive it being wrong.

:mod:`gateway.clock.kernel` reads what the kernel knows (the boot, ``CLOCK_BOOTTIME``,
the NTP status) into a :class:`SyncVerdict`; :mod:`gateway.clock.tracker` stamps
readings with it and corrects the stamps taken while the clock was wrong.
"""

from gateway.clock.kernel import (
    SyncVerdict,
    boot_id,
    boottime_ns,
    check_sync,
)
from gateway.clock.tracker import ClockTracker, Stamp, boot_key

__all__ = [
    "ClockTracker",
    "Stamp",
    "SyncVerdict",
    "boot_id",
    "boot_key",
    "boottime_ns",
    "check_sync",
]
