"""What the kernel says about its clocks: which boot this is, a clock that never jumps, and NTP.

A Pi-class gateway has no battery-backed clock. After a power cut it boots with
the wall clock wrong (fake-hwclock restores the time of the last shutdown, up to
an hour old, or the kernel starts at 1970) and steps to the right time only when
NTP answers. This module reads the evidence; :mod:`gateway.clock.tracker`
stamps readings with it.

* :func:`boot_id` and :func:`boottime_ns`: which boot we are in, and a clock that
  never jumps (``CLOCK_BOOTTIME`` counts suspend too).
* :func:`read_kernel_clock`: the kernel's NTP status through a read-only
  ``adjtimex(2)``, and :func:`check_sync`, which turns it and systemd-timesyncd's
  flag file into one :class:`SyncVerdict` as ``[gateway] clock_sync`` says.

The policy's values and the default flag file are the config's
(:mod:`gateway.config.sections`), which validates them.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

from gateway.config.sections import DEFAULT_CLOCK_SYNC_FILE, ClockSync

CLOCK_SYNC_POLICIES: tuple[ClockSync, ...] = get_args(ClockSync)

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"

# From <sys/timex.h>: adjtimex() returns the clock state; TIME_ERROR means "not
# synchronised" (set while STA_UNSYNC is, among other error conditions).
TIME_OK = 0
TIME_ERROR = 5
STA_UNSYNC = 0x0040

_CLOCK_STATES = {0: "TIME_OK", 1: "TIME_INS", 2: "TIME_DEL", 3: "TIME_OOP", 4: "TIME_WAIT"}


def boot_id(path: str = BOOT_ID_FILE) -> str:
    """The kernel's id of this boot: a random UUID, new at every boot.

    Stamps carry it so that a boottime is only ever compared with boottimes of
    the same boot (boottime starts again from zero at each boot).
    """
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def boottime_ns() -> int:
    """``CLOCK_BOOTTIME`` in ns: never steps, and counts time spent suspended.

    Unlike ``CLOCK_MONOTONIC``, it keeps pace with the wall clock across a
    suspend, so ``wall - boottime`` stays constant until someone steps the wall
    clock. NTP slewing changes the rate of both alike.
    """
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class Timex(ctypes.Structure):
    """``struct timex`` of <sys/timex.h> as glibc's ``adjtimex`` symbol takes it.

    Every ``long`` of the C struct is ``c_long`` here, so the layout is right on
    LP64 (x86-64, aarch64: 208 bytes) and on ILP32 (armv7: 128 bytes). On
    32-bit glibc the plain ``adjtimex`` symbol is the one with a 32-bit
    ``time_t`` (``__adjtimex64`` is the other), which is what these fields
    describe. The reserved tail is part of the struct: the kernel writes it.
    """

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    )


Adjtimex = Callable[[Timex], int]
"""An ``adjtimex(2)``: fills the struct, returns the clock state, raises OSError."""


@functools.cache
def _libc_adjtimex() -> Any:
    # CDLL(None) is the process's own symbol table, which has libc in it; it
    # avoids ctypes.util.find_library, which may run ldconfig or a compiler.
    fn = ctypes.CDLL(None, use_errno=True).adjtimex
    fn.argtypes = (ctypes.POINTER(Timex),)
    fn.restype = ctypes.c_int
    return fn


def libc_adjtimex(buf: Timex) -> int:
    """Call libc's ``adjtimex(buf)``; read-only when ``buf.modes`` is 0.

    glibc implements it as ``clock_adjtime(CLOCK_REALTIME, …)``
    (``clock_adjtime64`` on 32-bit ARM): a seccomp filter must allow those.

    Returns:
        The clock state (``TIME_OK`` … ``TIME_ERROR``).

    Raises:
        OSError: with the call's errno (EPERM under a seccomp filter that
            denies ``@clock``); ENOSYS when libc has no ``adjtimex``.
    """
    try:
        fn = _libc_adjtimex()
    except (OSError, AttributeError) as exc:
        raise OSError(errno.ENOSYS, "adjtimex not found in libc") from exc
    ctypes.set_errno(0)
    state = int(fn(ctypes.byref(buf)))
    if state == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return state


def _errno_name(err: int) -> str:
    return errno.errorcode.get(err, f"errno {err}")


@dataclass(frozen=True, slots=True)
class KernelClock:
    """What a read-only ``adjtimex(2)`` said about the kernel's clock.

    Attributes:
        state: the call's return value, ``TIME_OK`` (0) … ``TIME_ERROR`` (5);
            None when the call failed.
        status: the ``STA_*`` bits.
        maxerror_us: the kernel's bound on the clock's error, in µs.
        errno: why the call failed (EPERM: a seccomp filter denied it), else None.
    """

    state: int | None
    status: int = 0
    maxerror_us: int = 0
    errno: int | None = None

    @property
    def synchronised(self) -> bool:
        """True iff the call worked, the state is not TIME_ERROR and STA_UNSYNC is clear.

        A failed call is "unknown", which counts as not synchronised: a wrong
        "yes" would stamp readings with a wrong clock as if it were right.
        """
        return self.errno is None and self.state != TIME_ERROR and not self.status & STA_UNSYNC

    def describe(self) -> str:
        """One human line, e.g. ``kernel NTP status: synchronised (adjtimex)``."""
        if self.errno is not None:
            if self.errno == errno.EPERM:
                return "adjtimex not permitted (EPERM)"
            return f"adjtimex failed ({_errno_name(self.errno)}: {os.strerror(self.errno)})"
        if self.synchronised:
            return "kernel NTP status: synchronised (adjtimex)"
        why = []
        if self.state == TIME_ERROR:
            why.append("TIME_ERROR")
        elif self.state is not None:
            why.append(_CLOCK_STATES.get(self.state, f"state {self.state}"))
        if self.status & STA_UNSYNC:
            why.append("STA_UNSYNC")
        why.append(f"maxerror {self.maxerror_us / 1e6:g} s")
        return f"kernel NTP status: not synchronised (adjtimex: {', '.join(why)})"


def read_kernel_clock(adjtimex: Adjtimex = libc_adjtimex) -> KernelClock:
    """Ask the kernel, read-only, whether NTP has synchronised the clock.

    Args:
        adjtimex: the system call (injectable: tests give canned answers).

    Returns:
        The answer; a failed call (any OSError) is kept with its errno.
    """
    buf = Timex()  # modes = 0: read only; setting anything needs CAP_SYS_TIME
    try:
        state = adjtimex(buf)
    except OSError as exc:
        return KernelClock(state=None, errno=exc.errno if exc.errno is not None else -1)
    return KernelClock(state=state, status=int(buf.status), maxerror_us=int(buf.maxerror))


@dataclass(frozen=True, slots=True)
class SyncVerdict:
    """Whether the wall clock is right, and why: for the start-up log and the tracker.

    Attributes:
        synchronised: the wall clock can be trusted now.
        how: one human line explaining the decision.
        kernel: the adjtimex answer, when the policy asked the kernel.
    """

    synchronised: bool
    how: str
    kernel: KernelClock | None = None

    @property
    def errno(self) -> int | None:
        """The errno of a failed adjtimex call, for the log; else None."""
        return None if self.kernel is None else self.kernel.errno


def check_sync(
    policy: ClockSync = "auto",
    sync_file: str | os.PathLike[str] = DEFAULT_CLOCK_SYNC_FILE,
    *,
    adjtimex: Adjtimex = libc_adjtimex,
) -> SyncVerdict:
    """Decide whether the wall clock is right now, as ``policy`` says.

    Args:
        policy: ``"auto"``: the kernel says synchronised, or ``sync_file``
            exists; ``"file"``: only ``sync_file``; ``"none"``: always (an RTC).
        sync_file: systemd-timesyncd's flag file. It is never removed while the
            box runs, so it means "synchronised once this boot": good enough,
            as the clock keeps time once it has been set.
        adjtimex: the system call (injectable for tests).

    Raises:
        ValueError: for an unknown policy.
    """
    kernel: KernelClock | None = None
    if policy == "none":
        return SyncVerdict(True, 'clock_sync = "none": the wall clock is trusted')
    if policy == "auto":
        kernel = read_kernel_clock(adjtimex)
        if kernel.synchronised:
            return SyncVerdict(True, kernel.describe(), kernel)
        prefix = kernel.describe() + "; "
    elif policy == "file":
        prefix = 'clock_sync = "file": '
    else:
        raise ValueError(f"clock_sync must be one of {CLOCK_SYNC_POLICIES}, not {policy!r}")
    present = os.path.exists(sync_file)
    found = "present: synchronised" if present else "absent: not synchronised"
    return SyncVerdict(present, f"{prefix}{os.fspath(sync_file)} {found}", kernel)
