"""gateway.buffer.dirlock: one gateway per buffer directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.buffer import LOCK_FILE, holder, lock_dir
from gateway.errors import BufferDirInUse

REPO = Path(__file__).resolve().parent.parent

# Another process that takes the lock, says so, and holds it for argv[2] seconds.
HOLDER = """
import sys, time
from pathlib import Path
from gateway.buffer import lock_dir
lock = lock_dir(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_in_child(directory: Path, seconds: float = 60.0) -> subprocess.Popen[str]:
    """A child process holding ``directory``'s lock (once this returns)."""
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory), str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "locked\n"
    return child


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Child processes to kill at the end of the test."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for child in procs:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_a_second_locker_gets_the_error_naming_the_dir_and_the_holders_pid(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    child = hold_in_child(tmp_path / "buffer")
    children.append(child)
    with pytest.raises(BufferDirInUse) as caught:
        lock_dir(tmp_path / "buffer", wait=0)
    assert caught.value.pid == child.pid
    assert caught.value.directory == str(tmp_path / "buffer")
    assert str(caught.value) == (
        f"buffer directory {tmp_path / 'buffer'} is in use by another gateway "
        f"(pid {child.pid}): stop that one first, or give this one a buffer directory of its own"
    )
    in_use = holder(tmp_path / "buffer")
    assert in_use is not None
    assert in_use.pid == child.pid


def test_a_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    # Also where flock is per process (emulated by POSIX locks on NFS).
    with lock_dir(tmp_path) as lock:
        with pytest.raises(BufferDirInUse) as caught:
            lock_dir(tmp_path, wait=0)
        assert caught.value.pid == os.getpid()
        in_use = holder(tmp_path)
        assert in_use is not None
        assert in_use.pid == os.getpid()
        assert lock.held  # asking did not release it
    assert not lock.held


def test_the_lock_is_free_after_close_and_the_file_stays(tmp_path: Path) -> None:
    lock = lock_dir(tmp_path / "new")  # the directory is created
    assert (tmp_path / "new" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    lock.close()
    lock.close()  # a second close does nothing
    assert holder(tmp_path / "new") is None
    # A lock belongs to the file's inode: it is never deleted.
    assert (tmp_path / "new" / LOCK_FILE).exists()
    lock_dir(tmp_path / "new").close()


def test_the_lock_of_a_sigkilled_holder_is_free(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    child = hold_in_child(tmp_path)
    children.append(child)
    assert holder(tmp_path) is not None
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    # Its pid stays in the file, but nobody holds the lock: the next start is not blocked.
    assert (tmp_path / LOCK_FILE).read_text() == f"{child.pid}\n"
    assert holder(tmp_path) is None
    with lock_dir(tmp_path, wait=0):
        assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_child_process_does_not_inherit_the_lock(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """The source's program (probe-rs) outliving its gateway must not keep the lock."""
    lock = lock_dir(tmp_path)
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False
    )
    children.append(sleeper)
    lock.close()
    assert sleeper.poll() is None
    children.append(hold_in_child(tmp_path))  # would block if the sleeper held it


def test_a_lock_held_for_a_moment_is_waited_for(
    tmp_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    """What holder() does to a starting gateway: holds the lock an instant."""
    children.append(hold_in_child(tmp_path, seconds=0.2))
    lock_dir(tmp_path, wait=30).close()


def test_holder_creates_nothing(tmp_path: Path) -> None:
    assert holder(tmp_path / "missing") is None
    assert not (tmp_path / "missing").exists()
    assert holder(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_a_holder_whose_pid_is_not_known_is_still_refused(tmp_path: Path) -> None:
    with lock_dir(tmp_path):
        # As an older gateway's file, or one its holder could not write.
        (tmp_path / LOCK_FILE).write_text("")
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from gateway.buffer import lock_dir; lock_dir(sys.argv[1], wait=0)",
                str(tmp_path),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert child.returncode == 1
    assert f"buffer directory {tmp_path} is in use by another gateway (pid unknown)" in (
        child.stderr
    )
