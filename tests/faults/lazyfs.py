"""LazyFS for the power-cut tests: built from the source beside the repository, mounted
over a backing directory, and told to lose what was never fsynced.

LazyFS (MIT, `../shared/tools/lazyfs/` next to the repository) is a FUSE file system
with a page cache of its own: what a program wrote but did not fsync lives only there.
`lazyfs::clear-cache` drops it, which is what a power cut does to a disk, and killing
the LazyFS process loses it at once. Its fault commands can also make it exit at a
chosen moment (before an fsync, after a write, in the middle of a run of writes).
The backing directory then holds exactly what a disk would hold after the cut.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.support import REPO, wait_until

SOURCE = REPO.parent / "shared" / "tools" / "lazyfs"
# Built once per checkout and reused: the build script rebuilds only when the source
# it is given changes.
BUILD_DIR = REPO / ".run" / "lazyfs"
FUSE_DEVICE = Path("/dev/fuse")

CONFIG = """\
[faults]
fifo_path = "{fifo}"
[cache]
apply_eviction = false
[cache.simple]
custom_size = "64mb"
blocks_per_page = 1
[filesystem]
log_all_operations = false
logfile = "{log}"
"""


def build() -> Path:
    """Build LazyFS (about 30 s the first time) and return its binary.

    Raises:
        FileNotFoundError: the source is not next to the repository.
        subprocess.CalledProcessError: the build failed.
    """
    script = SOURCE / "build.sh"
    if not script.exists():
        raise FileNotFoundError(f"LazyFS source not found: {script}")
    subprocess.run(
        ["bash", str(script), str(BUILD_DIR)], check=True, timeout=900, capture_output=True
    )
    return BUILD_DIR / "lazyfs" / "build" / "lazyfs"


class LazyFS:
    """One LazyFS mount of ``workdir/backing`` on ``workdir/mnt``, remountable after a cut."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.mnt = workdir / "mnt"
        self.backing = workdir / "backing"
        self.fifo = workdir / "faults.fifo"
        self.log = workdir / "lazyfs.log"
        self.conf = workdir / "lazyfs.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.mounts = 0
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONFIG.format(fifo=self.fifo, log=self.log))
        self._out = workdir / "lazyfs.out"

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def mount(self) -> LazyFS:
        """Mount and wait until LazyFS takes fault commands.

        Raises:
            TimeoutError: it did not come up within 30 s.
        """
        # LazyFS starts its log afresh at each mount.
        self.log.unlink(missing_ok=True)
        # LazyFS ignores a --config-path that contains "-o" in any case (pytest's
        # /tmp/pytest-of-root does): hand it the file as /dev/fd/N instead.
        with open(self._out, "ab") as out, open(self.conf, "rb") as conf:
            self.proc = subprocess.Popen(
                [
                    *(str(self.binary), str(self.mnt), "--config-path", f"/dev/fd/{conf.fileno()}"),
                    *("-o", "allow_other", "-o", "modules=subdir"),
                    *("-o", f"subdir={self.backing}", "-f"),
                ],
                cwd=self.binary.parent.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(conf.fileno(),),
            )
        if not wait_until(
            lambda: "waiting for fault commands" in self._log_text() and os.path.ismount(self.mnt),
            30,
            0.05,
        ):
            raise TimeoutError(f"LazyFS did not mount:\n{self._log_text()[-2000:]}")
        self.mounts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, line: str) -> None:
        """Write one fault command into LazyFS's FIFO.

        Raises:
            TimeoutError: LazyFS did not open its FIFO within 10 s.
        """
        deadline = time.monotonic() + 10
        while True:
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:  # ENXIO: no reader at this instant
                if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                    raise TimeoutError(f"LazyFS does not read {self.fifo}") from exc
                time.sleep(0.02)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    def clear_cache(self) -> None:
        """Drop every byte not yet fsynced, and wait until LazyFS says it did.

        Raises:
            TimeoutError: LazyFS never confirmed.
        """
        done_before = self._log_text().count("cache is cleared")
        self.command("lazyfs::clear-cache")
        if not wait_until(lambda: self._log_text().count("cache is cleared") > done_before, 30):
            raise TimeoutError("LazyFS did not clear its cache")

    def kill(self) -> None:
        """SIGKILL LazyFS (its cache is gone with it) and detach the dead mount."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait_exited(10)
        self.detach()

    def wait_exited(self, timeout: float) -> bool:
        """Wait until LazyFS has exited (a crash fault fired); True if it has."""
        if self.proc is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return True
            time.sleep(0.02)
        return self.proc.poll() is not None

    def detach(self) -> None:
        """Unmount (lazily: a dead LazyFS leaves a mount that answers ENOTCONN)."""
        if os.path.ismount(self.mnt) or self._in_mounts():
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=False, timeout=30)
        wait_until(lambda: not self._in_mounts(), 10, 0.05)

    def _in_mounts(self) -> bool:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == str(self.mnt) for line in f if line.strip())

    def unmount(self) -> None:
        """Unmount cleanly and stop LazyFS."""
        self.detach()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
