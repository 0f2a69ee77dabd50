"""One gateway per buffer directory: an exclusive ``flock`` on ``<buffer_dir>/gateway.lock``.

Two gateways on one store each keep their buffers' sequence numbers in memory,
so each overwrites the other's records and about half are lost, silently.
``gateway run`` therefore takes this lock before it opens the store and holds
it until it exits; a second one gets :class:`~gateway.errors.BufferDirInUse`.

- A file of its own, not the store's: the store deletes, recreates and moves
  its file aside (a corrupt one, one deleted under it), and a lock on that
  file's inode would go with it. The lock file is never deleted either: a
  lock belongs to an inode, and a new file would be a new, free lock.
- ``flock``, not only a pid file: the kernel drops the lock when the last fd
  closes, so a gateway killed by SIGKILL (or a power cut) never blocks the
  next start, where a pid file alone would have to be guessed stale. The pid
  the holder writes into the file only names it in the error.
- The fd is opened ``O_CLOEXEC``: the source's program (probe-rs) must not
  inherit it, or a child outliving a killed gateway would keep the directory
  locked.
- The holder keeps its fd open for its lifetime and never opens the file a
  second time while it holds it: where ``flock`` is emulated by POSIX record
  locks (NFS), a lock belongs to the process, so closing *any* fd of the file
  drops it and a second lock taken in the same process succeeds. This process
  remembers the directories it holds instead, and refuses them itself.

``gateway buffer stats|export`` never touch the lock (they only read);
``import`` and ``resend-dead`` are kept out by the store file's own lock
(:func:`gateway.buffer.cachefile.hold`) and use :func:`holder` to name the pid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from gateway.errors import BufferDirInUse

LOCK_FILE = "gateway.lock"
# Seconds a starting gateway retries a lock that is held: holder() holds a
# shared one for an instant, and a gateway starting then must not give up.
LOCK_WAIT = 0.5
_RETRY = 0.05

# (st_dev, st_ino) of each directory this process holds → its lock.
_held: dict[tuple[int, int], DirLock] = {}
_held_guard = threading.Lock()


class DirLock:
    """A buffer directory's lock, held: :meth:`close` releases it (as does exiting).

    Made by :func:`lock_dir`; usable as a context manager.
    """

    def __init__(self, directory: Path, fd: int, key: tuple[int, int]) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self._fd: int | None = fd
        self._key = key

    @property
    def held(self) -> bool:
        """True until :meth:`close`."""
        return self._fd is not None

    def close(self) -> None:
        """Release the lock (a second call does nothing)."""
        with _held_guard:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            _held.pop(self._key, None)
        os.close(fd)

    def __enter__(self) -> DirLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def lock_dir(directory: Path, *, wait: float = LOCK_WAIT) -> DirLock:
    """Take ``directory``'s exclusive lock and write this process's pid into it (blocking).

    The directory is created (0700) when missing, as the store would.

    Args:
        directory: the buffer directory.
        wait: seconds to retry while another process holds the lock.

    Raises:
        BufferDirInUse: another process, or this one, holds it.
        OSError: the directory or the lock file cannot be created or opened.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _identity(directory)
    with _held_guard:
        if key in _held:
            raise BufferDirInUse(str(directory), os.getpid())
        fd, writable = _open(directory / LOCK_FILE)
        try:
            _take(fd, directory, wait)
            if writable:
                # Only after the lock is ours: before, it would overwrite the holder's pid.
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        lock = DirLock(directory, fd, key)
        _held[key] = lock
    return lock


def holder(directory: Path) -> BufferDirInUse | None:
    """Whether a gateway holds ``directory``: the error a second one would get, or None.

    Creates nothing. ``flock`` has no way to ask but trying: the probe holds a
    shared lock for an instant, which a gateway starting just then waits out
    (``LOCK_WAIT``).

    Raises:
        OSError: the lock file exists but cannot be opened (another user's).
    """
    directory = Path(directory)
    try:
        key = _identity(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    with _held_guard:
        if key in _held:
            # Never open it a second time here (see the module's docstring).
            return BufferDirInUse(str(directory), os.getpid())
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return BufferDirInUse(str(directory), _read_pid(fd))
        return None
    finally:
        os.close(fd)  # releases the shared lock, if it was taken


def _identity(directory: Path) -> tuple[int, int]:
    st = os.stat(directory)
    return st.st_dev, st.st_ino


def _open(path: Path) -> tuple[int, bool]:
    """The lock file's fd, and whether it is writable (for the pid)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # Another user's file (root ran the gateway by hand), or a read-only
        # disk: flock needs no write access, only the pid cannot be written.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
    # Readable by every user that can enter the (0700) directory, whatever the
    # umask: the service's user must be able to lock a file root created.
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, 0o644)
    return fd, True


def _take(fd: int, directory: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise BufferDirInUse(str(directory), _read_pid(fd)) from None
            time.sleep(_RETRY)


def _read_pid(fd: int) -> int | None:
    """The pid in the lock file, if it names a live process."""
    try:
        pid = int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return None  # empty: its holder has not written it yet, or could not
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # stale: written by a holder that could not overwrite it
    except PermissionError:
        pass  # alive, another user's
    return pid
