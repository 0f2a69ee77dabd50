"""gateway.clock.kernel: boot id and boottime, the kernel's NTP status, the sync policies."""

from __future__ import annotations

import ctypes
import errno
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.clock import kernel as clock_kernel
from gateway.clock.kernel import (
    STA_UNSYNC,
    TIME_ERROR,
    TIME_OK,
    KernelClock,
    SyncVerdict,
    Timex,
    check_sync,
    read_kernel_clock,
)
from gateway.config.sections import DEFAULT_CLOCK_SYNC_FILE

# What an NTP-synchronised Linux reports besides the two bits that matter.
STA_PLL = 0x0001
STA_NANO = 0x2000


def answering(state: int, status: int, maxerror_us: int = 16_000) -> clock_kernel.Adjtimex:
    """A fake adjtimex(2) that fills the struct as the kernel would."""

    def adjtimex(buf: Timex) -> int:
        assert buf.modes == 0, "the gateway must only ever read"
        buf.status = status
        buf.maxerror = maxerror_us
        return state

    return adjtimex


def failing(err: int) -> clock_kernel.Adjtimex:
    """A fake adjtimex(2) that a seccomp filter (or an old kernel) refuses."""

    def adjtimex(buf: Timex) -> int:
        raise OSError(err, "refused")

    return adjtimex


SYNCED = answering(TIME_OK, STA_PLL | STA_NANO)
UNSYNC = answering(TIME_ERROR, STA_PLL | STA_UNSYNC, maxerror_us=16_000_000)
# A state other than TIME_ERROR with STA_UNSYNC set still is not synchronised.
UNSYNC_BIT_ONLY = answering(TIME_OK, STA_UNSYNC)
# TIME_ERROR for a reason other than STA_UNSYNC (e.g. a PPS fault).
TIME_ERROR_ONLY = answering(TIME_ERROR, STA_PLL)
EPERM = failing(errno.EPERM)


# --- boot id and boottime ----------------------------------------------------


def test_boot_id_is_this_boots_uuid() -> None:
    first = clock_kernel.boot_id()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", first)
    assert clock_kernel.boot_id() == first


def test_boot_id_is_stripped(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    path.write_text("  abc-123\n")
    assert clock_kernel.boot_id(str(path)) == "abc-123"


def test_boottime_never_goes_back() -> None:
    readings = [clock_kernel.boottime_ns() for _ in range(1000)]
    assert readings[0] > 0
    assert readings == sorted(readings)


# --- adjtimex ------------------------------------------------------------------


def test_struct_timex_has_the_kernels_size() -> None:
    # LP64 (x86-64, aarch64): 208 bytes; ILP32 (armv7): 128 bytes.
    assert ctypes.sizeof(Timex) == (208 if ctypes.sizeof(ctypes.c_long) == 8 else 128)


@pytest.mark.parametrize(
    ("adjtimex", "synchronised", "how"),
    [
        (SYNCED, True, "kernel NTP status: synchronised (adjtimex)"),
        (
            UNSYNC,
            False,
            "kernel NTP status: not synchronised (adjtimex: TIME_ERROR, STA_UNSYNC, maxerror 16 s)",
        ),
        (
            UNSYNC_BIT_ONLY,
            False,
            "kernel NTP status: not synchronised (adjtimex: TIME_OK, STA_UNSYNC, maxerror 0.016 s)",
        ),
        (
            TIME_ERROR_ONLY,
            False,
            "kernel NTP status: not synchronised (adjtimex: TIME_ERROR, maxerror 0.016 s)",
        ),
        (EPERM, False, "adjtimex not permitted (EPERM)"),
        (failing(errno.ENOSYS), False, "adjtimex failed (ENOSYS: Function not implemented)"),
    ],
)
def test_kernel_status(adjtimex: clock_kernel.Adjtimex, synchronised: bool, how: str) -> None:
    kernel = read_kernel_clock(adjtimex)
    assert kernel.synchronised is synchronised
    assert kernel.describe() == how


def test_a_refused_call_keeps_its_errno() -> None:
    assert read_kernel_clock(EPERM) == KernelClock(state=None, errno=errno.EPERM)
    assert check_sync("auto", "/nonexistent", adjtimex=EPERM).errno == errno.EPERM


def test_libc_wrapper_raises_the_calls_errno(monkeypatch: pytest.MonkeyPatch) -> None:
    """libc returns -1 and sets errno: the wrapper turns that into OSError."""

    def denied(_buf: object) -> int:
        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(clock_kernel, "_libc_adjtimex", lambda: denied)
    with pytest.raises(PermissionError) as info:
        clock_kernel.libc_adjtimex(Timex())
    assert info.value.errno == errno.EPERM
    assert read_kernel_clock().errno == errno.EPERM


def test_real_adjtimex_on_this_machine() -> None:
    """Only that it answers: DESIGN.md says STA_UNSYNC is set here although the clock is right."""
    kernel = read_kernel_clock()
    verdict = check_sync("auto")
    print(kernel, verdict.how, sep="\n")
    assert isinstance(verdict, SyncVerdict)
    assert verdict.how
    if kernel.errno is None:
        assert kernel.state in range(6)
        assert kernel.maxerror_us >= 0


# A child that denies some system calls (EPERM, as systemd's SystemCallErrorNumber=
# does) through libseccomp, then prints the verdict of the real adjtimex call.
SECCOMP_CHILD = """
import ctypes, errno, sys
try:
    lib = ctypes.CDLL("libseccomp.so.2")
except OSError:
    sys.exit(77)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
for name in sys.argv[1:]:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:  # clock_adjtime64 exists on 32-bit ABIs only
        assert lib.seccomp_rule_add(ctx, 0x00050000 | errno.EPERM, nr, 0) == 0
if lib.seccomp_load(ctx) != 0:
    sys.exit(77)
from gateway.clock import check_sync
print(check_sync("auto", "/nonexistent").how)
"""


@pytest.mark.parametrize(
    "denied",
    [
        # What ProtectClock=yes and SystemCallFilter=@system-service deny.
        ["adjtimex", "clock_adjtime", "clock_adjtime64"],
        # glibc's adjtimex() is clock_adjtime(): the unit must allow that one too.
        ["clock_adjtime", "clock_adjtime64"],
    ],
)
def test_real_adjtimex_under_a_seccomp_filter(denied: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SECCOMP_CHILD, *denied],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode == 77:
        pytest.skip("no libseccomp, or no seccomp filters here")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "adjtimex not permitted (EPERM); /nonexistent absent: not synchronised\n"


# --- the policies ----------------------------------------------------------------


@pytest.fixture
def flag(tmp_path: Path) -> Path:
    """Where the test's systemd-timesyncd flag file would be (absent until touched)."""
    return tmp_path / "timesync" / "synchronized"


@pytest.mark.parametrize(
    ("adjtimex", "present", "synchronised", "how"),
    [
        (SYNCED, False, True, "kernel NTP status: synchronised (adjtimex)"),
        (SYNCED, True, True, "kernel NTP status: synchronised (adjtimex)"),
        (
            UNSYNC,
            False,
            False,
            "kernel NTP status: not synchronised (adjtimex: TIME_ERROR, STA_UNSYNC, maxerror 16 s)"
            "; {flag} absent: not synchronised",
        ),
        (
            UNSYNC,
            True,
            True,
            "kernel NTP status: not synchronised (adjtimex: TIME_ERROR, STA_UNSYNC, maxerror 16 s)"
            "; {flag} present: synchronised",
        ),
        (
            UNSYNC_BIT_ONLY,
            False,
            False,
            "kernel NTP status: not synchronised (adjtimex: TIME_OK, STA_UNSYNC, maxerror 0.016 s)"
            "; {flag} absent: not synchronised",
        ),
        (
            TIME_ERROR_ONLY,
            False,
            False,
            "kernel NTP status: not synchronised (adjtimex: TIME_ERROR, maxerror 0.016 s)"
            "; {flag} absent: not synchronised",
        ),
        (EPERM, False, False, "adjtimex not permitted (EPERM); {flag} absent: not synchronised"),
        (EPERM, True, True, "adjtimex not permitted (EPERM); {flag} present: synchronised"),
    ],
)
def test_policy_auto(
    flag: Path, adjtimex: clock_kernel.Adjtimex, present: bool, synchronised: bool, how: str
) -> None:
    if present:
        flag.parent.mkdir()
        flag.touch()
    verdict = check_sync("auto", flag, adjtimex=adjtimex)
    assert verdict.synchronised is synchronised
    assert verdict.how == how.format(flag=flag)
    assert verdict.kernel == read_kernel_clock(adjtimex)


@pytest.mark.parametrize("adjtimex", [SYNCED, UNSYNC, EPERM])
def test_policy_file_ignores_the_kernel(flag: Path, adjtimex: clock_kernel.Adjtimex) -> None:
    absent = check_sync("file", flag, adjtimex=adjtimex)
    assert absent == SyncVerdict(False, f'clock_sync = "file": {flag} absent: not synchronised')
    flag.parent.mkdir()
    flag.touch()
    present = check_sync("file", flag, adjtimex=adjtimex)
    assert present == SyncVerdict(True, f'clock_sync = "file": {flag} present: synchronised')


@pytest.mark.parametrize("adjtimex", [SYNCED, UNSYNC, EPERM])
@pytest.mark.parametrize("present", [False, True])
def test_policy_none_always_trusts_the_clock(
    flag: Path, adjtimex: clock_kernel.Adjtimex, present: bool
) -> None:
    if present:
        flag.parent.mkdir()
        flag.touch()
    verdict = check_sync("none", flag, adjtimex=adjtimex)
    assert verdict == SyncVerdict(True, 'clock_sync = "none": the wall clock is trusted')
    assert verdict.errno is None


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="clock_sync"):
        check_sync("ntp")  # type: ignore[arg-type]


def test_the_default_flag_file_is_timesyncds() -> None:
    assert DEFAULT_CLOCK_SYNC_FILE == "/run/systemd/timesync/synchronized"
    assert clock_kernel.CLOCK_SYNC_POLICIES == ("auto", "file", "none")
