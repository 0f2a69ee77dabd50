"""Dead letters: records a server refused for good, kept for the operator.

A record that can never be delivered (a point InfluxDB answers 400/422 to, a
message no broker may accept) must not block its queue, and must not vanish:
it is appended to ``<buffer_dir>/dead-letter/<sink>.<ext>`` and counted, and
delivery goes on behind it. The file is bounded: past ``max_bytes`` its oldest
half is dropped (counted and logged). Like the buffers, a disk that refuses
the write (full, read-only) never crashes the daemon: the records wait in
memory, bounded, and are written by the next append or :meth:`flush` that
works.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import trio

from gateway.metrics import RateLimitedLog

log = logging.getLogger(__name__)

DEAD_LETTER_DIR = "dead-letter"  # under the buffer directory
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_HELD = 10_000  # records kept in memory while the disk refuses them


class DeadLetterFile:
    """An append-only, bounded file of dead-lettered records, one per line.

    Args:
        path: the file (its directory is created 0700 when needed).
        max_bytes: the bound on the file's size.
        max_held: records held in memory while the disk refuses writes.
    """

    def __init__(
        self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, max_held: int = MAX_HELD
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.held: deque[str] = deque(maxlen=max_held)
        self.dropped = 0
        self.write_errors = 0
        self._lock = trio.Lock()
        self._errlog = RateLimitedLog(log, interval=30.0)

    async def append(self, records: Iterable[str]) -> bool:
        """Queue ``records`` and write everything held; False if the disk refused.

        Never raises for a disk error: the records stay in memory (bounded;
        the oldest are dropped and counted beyond ``max_held``).
        """
        for record in records:
            if len(self.held) == self.held.maxlen:
                self.dropped += 1
            self.held.append(record.replace("\n", " "))
        return await self.flush()

    async def flush(self) -> bool:
        """Write the records held in memory; False if the disk refused."""
        async with self._lock:
            if not self.held:
                return True
            lines = list(self.held)
            try:
                trimmed = await trio.to_thread.run_sync(self._write_sync, lines)
            except OSError as exc:
                self.write_errors += 1
                self._errlog.log(
                    logging.ERROR,
                    "write",
                    "dead letters: cannot write %s (%s); %d record(s) held in memory",
                    self.path,
                    exc,
                    len(self.held),
                )
                return False
            for _ in lines:
                self.held.popleft()
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
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
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
        return len(lines) - len(keep)

    def count(self) -> int:
        """Records in the file plus those held in memory (blocking; for the CLI)."""
        n = len(self.held)
        try:
            with open(self.path, "rb") as f:
                n += sum(1 for _ in f)
        except OSError:
            pass
        return n
