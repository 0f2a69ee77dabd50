"""Dead letters: records a server refused for good, kept for the operator.

A record that can never be delivered (a point InfluxDB answers 400/422 to, a
message no broker may accept) must not block its queue, and must not vanish.
Its sink acknowledges it out of its buffer *into* the buffer's dead-letter
queue, in the same store transaction (:meth:`gateway.buffer.DiskBuffer.ack`),
and delivery goes on behind it. :class:`DeadLetterMover` then moves the queue,
oldest first, to ``<buffer_dir>/dead-letter/<sink>.<ext>``, and acknowledges
a record out of the queue only once the file holds it, fsynced. A disk that
refuses the file (full, read-only, an I/O error) never crashes the daemon and
never loses a record: they wait in the store (counted, logged, shown as
"waiting"), and move when the file accepts again.

The file is bounded: past ``max_bytes`` its oldest half is dropped (counted
and logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio
from trio_util import AsyncValue

from gateway.metrics import RateLimitedLog, SinkMetrics

log = logging.getLogger(__name__)

DEAD_LETTER_DIR = "dead-letter"  # under the buffer directory
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
RETRY_INTERVAL = 5.0  # seconds between attempts at a file that refused
MOVE_BATCH = 500  # records per append (one fsync)


class DeadLetterFile:
    """An append-only, bounded file of dead-lettered records, one per line.

    Args:
        path: the file (its directory is created 0700 when needed).
        max_bytes: the bound on the file's size.
    """

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.write_errors = 0
        self._lock = trio.Lock()
        self._errlog = RateLimitedLog(log, interval=30.0)

    async def append(self, records: Sequence[str]) -> bool:
        """Append ``records`` and fsync; False (counted, logged) if the disk refused.

        Never raises for a disk error, and keeps nothing: a caller whose
        records were refused still has them (the store's dead-letter queue).
        """
        if not records:
            return True
        lines = [record.replace("\n", " ") for record in records]
        async with self._lock:
            try:
                trimmed = await trio.to_thread.run_sync(self._write_sync, lines)
            except OSError as exc:
                self.write_errors += 1
                self._errlog.log(
                    logging.ERROR,
                    "write",
                    "dead letters: cannot write %s (%s); %d record(s) wait in the buffer "
                    "store and move when it accepts",
                    self.path,
                    exc,
                    len(lines),
                )
                return False
            if trimmed:
                self.dropped += trimmed
                log.warning(
                    "dead letters: %s reached %d bytes; dropped its %d oldest record(s)",
                    self.path,
                    self.max_bytes,
                    trimmed,
                )
            return True

    def _write_sync(self, lines: list[str]) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = "".join(line + "\n" for line in lines).encode()
        created = not self.path.exists()
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        if created:
            # A new file's name is durable only once its directory is: the
            # records are acknowledged out of the store right after this.
            _fsync_dir(self.path.parent)
        return self._trim_sync() if size > self.max_bytes else 0

    def _trim_sync(self) -> int:
        """Keep the newest records within half the bound; return how many went."""
        with open(self.path, "rb") as f:
            lines = f.readlines()
        keep: list[bytes] = []
        size = 0
        for line in reversed(lines):
            if size + len(line) > self.max_bytes // 2:
                break
            keep.append(line)
            size += len(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.writelines(reversed(keep))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        return len(lines) - len(keep)

    def count(self) -> int:
        """Records in the file (blocking; for the CLI)."""
        n = 0
        try:
            with open(self.path, "rb") as f:
                n += sum(1 for _ in f)
        except OSError:
            pass
        return n


class _Record(Protocol):
    @property
    def value(self) -> str: ...


R = TypeVar("R", bound=_Record)


class DeadQueue(Protocol[R]):
    """The store's dead-letter queue of one buffer, as the mover sees it."""

    count: AsyncValue[int]
    dropped_total: int

    async def peek(self, limit: int) -> list[R]: ...

    async def ack(self, records: Sequence[R]) -> int: ...


class DeadLetterMover:
    """Moves one sink's dead-letter queue from the store to its file, oldest first.

    Args:
        queue: the buffer's dead-letter queue (``DiskBuffer.dead``).
        file: the dead-letter file.
        figures: the sink's figures (``dead_letters_waiting``, ``dead_letters_dropped``).
        retry_interval: seconds between attempts while the file refuses.
    """

    def __init__(
        self,
        queue: DeadQueue[Any],
        file: DeadLetterFile,
        figures: SinkMetrics,
        *,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.queue = queue
        self.file = file
        self.figures = figures
        self.retry_interval = retry_interval

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Move records as they arrive, until cancelled; a refusing file is retried."""
        task_status.started()
        while True:
            self._note()
            await self.queue.count.wait_value(_positive)
            if not await self.flush():
                # The waiting figure follows the queue meanwhile, not only per attempt.
                with trio.move_on_after(self.retry_interval):
                    async for _ in self.queue.count.transitions():
                        self._note()

    async def flush(self) -> bool:
        """Move every record waiting now; False if the file refused (they stay queued)."""
        queue = self.queue
        try:
            while queue.count.value:
                batch = await queue.peek(MOVE_BATCH)
                if not batch:
                    return True  # (peek paced itself when the store could not be read)
                if not await self.file.append([r.value for r in batch]):
                    return False
                # At-least-once: a crash before this ack writes them to the file twice.
                await queue.ack(batch)
            return True
        finally:
            self._note()

    def _note(self) -> None:
        self.figures.dead_letters_waiting = self.queue.count.value
        # Both bounds drop the oldest: the file's half, the queue's beyond its bound.
        self.figures.dead_letters_dropped = self.file.dropped + self.queue.dropped_total


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _positive(n: int) -> bool:
    return n > 0
