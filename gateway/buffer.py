"""DiskBuffer: a bounded, durable FIFO of small text records on diskcache/SQLite.

Both sinks use it the same way: the source appends a packet's records in one
transaction (group commit), a sink peeks a batch without removing it, and
deletes the batch only once the server acknowledged it. Beyond ``max_records``
the oldest records are dropped and returned as a count, so the source is never
blocked by a sink that is down.

All SQLite work for one buffer runs on worker threads through one
``CapacityLimiter(1)``: a transaction never spans threads and readers never
race the writer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diskcache
import trio
from trio_util import AsyncValue

from gateway.errors import BufferError_

log = logging.getLogger(__name__)

Durability = Literal["full", "normal"]
_SYNCHRONOUS = {"full": 2, "normal": 1}  # SQLite PRAGMA synchronous values


@dataclass(frozen=True, slots=True)
class Record:
    """A buffered record: its FIFO key and its text."""

    key: int
    value: str


def _open_cache(directory: Path, durability: Durability) -> diskcache.Cache:
    cache = diskcache.Cache(
        str(directory),
        # We enforce our own bound; diskcache's default evicts silently at 1 GB.
        eviction_policy="none",
        size_limit=2**62,
        cull_limit=0,
        statistics=False,
        tag_index=False,
        sqlite_synchronous=_SYNCHRONOUS[durability],
    )
    row = cache._sql("PRAGMA quick_check").fetchone()
    if row is None or row[0] != "ok":
        cache.close()
        raise sqlite3.DatabaseError(f"quick_check failed: {row!r}")
    return cache


class DiskBuffer:
    """A bounded FIFO of text records that survives crashes and power loss.

    Args:
        directory: where the SQLite store lives (created 0700 if missing).
        max_records: the bound; beyond it the oldest records are dropped.
        durability: "full" (synchronous=FULL: survives power loss) or "normal".
        name: the sink name, for logs and metrics.

    Use :meth:`open` (async) to construct one; a store that cannot be opened
    is moved aside to ``<dir>.corrupt-<timestamp>`` and replaced.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_records: int,
        durability: Durability = "full",
        name: str = "buffer",
    ) -> None:
        self.directory = Path(directory)
        self.max_records = max_records
        self.durability = durability
        self.name = name
        self.corrupt_moved: list[Path] = []
        self._cache = self._open_or_replace()
        # Wakes the sink when records arrive; the value is the record count.
        self.count: AsyncValue[int] = AsyncValue(len(self._cache))
        self._limiter = trio.CapacityLimiter(1)
        self.dropped_total = 0

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        max_records: int,
        durability: Durability = "full",
        name: str = "buffer",
    ) -> DiskBuffer:
        """Open (or create, or replace a corrupt) buffer without blocking Trio."""
        return await trio.to_thread.run_sync(
            lambda: cls(directory, max_records=max_records, durability=durability, name=name)
        )

    def _open_or_replace(self) -> diskcache.Cache:
        self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return _open_cache(self.directory, self.durability)
        except (sqlite3.Error, OSError) as exc:
            stem = f"{self.directory.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            aside = self.directory.with_name(stem)
            # A second corruption within the same second must not land inside
            # the first one's directory (shutil.move into an existing dir).
            n = 0
            while aside.exists():
                n += 1
                aside = self.directory.with_name(f"{stem}-{n}")
            log.error(
                "%s buffer at %s cannot be opened (%s); moving it aside to %s and "
                "starting an empty one",
                self.name,
                self.directory,
                exc,
                aside,
            )
            if self.directory.exists():
                shutil.move(str(self.directory), str(aside))
                self.corrupt_moved.append(aside)
            return _open_cache(self.directory, self.durability)

    # -- writes ----------------------------------------------------------------

    def _append_sync(self, records: Sequence[str]) -> tuple[int, int]:
        cache = self._cache
        with cache.transact():
            for value in records:
                cache.push(value)
            count = len(cache)
            dropped = 0
            # Drop the oldest beyond the bound, in the same transaction.
            while count > self.max_records:
                cache.pull()
                count -= 1
                dropped += 1
        return count, dropped

    async def append(self, records: Sequence[str]) -> int:
        """Commit ``records`` (one transaction); return how many old ones were dropped.

        Raises:
            BufferError_: the store could not be written (disk full, I/O error).
        """
        if not records:
            return 0
        try:
            count, dropped = await trio.to_thread.run_sync(
                self._append_sync, records, limiter=self._limiter
            )
        except (sqlite3.Error, OSError) as exc:
            raise BufferError_(f"{self.name} buffer write failed: {exc}") from exc
        self.dropped_total += dropped
        self.count.value = count
        return dropped

    def _peek_sync(self, limit: int) -> list[Record]:
        cache = self._cache
        out: list[Record] = []
        with cache.transact():
            for key in cache.iterkeys():
                value = cache.get(key)
                if value is not None:
                    out.append(Record(key, value))
                if len(out) >= limit:
                    break
        return out

    async def peek(self, limit: int) -> list[Record]:
        """Return up to ``limit`` oldest records, without removing them."""
        try:
            return await trio.to_thread.run_sync(self._peek_sync, limit, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise BufferError_(f"{self.name} buffer read failed: {exc}") from exc

    def _ack_sync(self, records: Sequence[Record]) -> int:
        cache = self._cache
        with cache.transact():
            for record in records:
                # diskcache restarts push keys once the store is empty, so a key
                # from a stale batch may now name a newer record: delete only
                # the record that was acknowledged.
                if cache.get(record.key) == record.value:
                    cache.delete(record.key)
            return len(cache)

    async def ack(self, records: Sequence[Record]) -> None:
        """Delete acknowledged records (records already dropped are ignored)."""
        if not records:
            return
        try:
            count = await trio.to_thread.run_sync(self._ack_sync, records, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            raise BufferError_(f"{self.name} buffer delete failed: {exc}") from exc
        self.count.value = count

    # -- inspection -------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Records and bytes on disk (blocking; for the CLI and tests)."""
        size = 0
        for path in self.directory.glob("cache.db*"):
            with contextlib.suppress(OSError):
                size += path.stat().st_size
        return {"records": len(self._cache), "bytes": size, "max_records": self.max_records}

    def iter_all(self) -> list[Record]:
        """Every record, oldest first (blocking; for export)."""
        return self._peek_sync(2**62)

    def integrity_check(self) -> str:
        """SQLite ``PRAGMA integrity_check`` result ("ok" when healthy)."""
        row = self._cache._sql("PRAGMA integrity_check").fetchone()
        return str(row[0]) if row else "no result"

    def close(self) -> None:
        """Close the store; committed records stay on disk."""
        self._cache.close()


def buffer_path(buffer_dir: str | os.PathLike[str], sink: str) -> Path:
    """Where a sink's buffer lives under the buffer directory."""
    return Path(buffer_dir) / sink
