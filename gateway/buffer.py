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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import diskcache
import trio
from trio_util import AsyncValue

from gateway.metrics import RateLimitedLog

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

    Use :meth:`open` (async) to construct one. A corrupt store is moved aside to
    ``<dir>.corrupt-<timestamp>`` and replaced. When the store cannot be written
    at all (disk full, read-only or missing directory) records are kept in
    memory, still bounded, so live delivery goes on; they are written to disk,
    oldest first, as soon as a write succeeds again.
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
        self.write_errors = 0
        self.dropped_total = 0
        self._limiter = trio.CapacityLimiter(1)
        # Records not (yet) on disk, newer than everything on disk; keys < 0.
        self._memory: deque[Record] = deque()
        self._memory_seq = 0
        # Disk keys acknowledged while the disk refused the delete.
        self._tombstones: set[int] = set()
        self._disk_count = 0
        self._retry_open_at = 0.0
        self._cache: diskcache.Cache | None = self._open_or_replace()
        if self._cache is not None:
            self._disk_count = len(self._cache)
        # Wakes the sink when records arrive; the value is the record count.
        self.count: AsyncValue[int] = AsyncValue(self._disk_count)

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

    @property
    def in_memory(self) -> int:
        """Records held only in memory because the disk refused them."""
        return len(self._memory)

    def _open_or_replace(self) -> diskcache.Cache | None:
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return _open_cache(self.directory, self.durability)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                self._unwritable(exc)
                return None
            stem = f"{self.directory.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
            aside = self.directory.with_name(stem)
            # A second corruption within the same second must not land inside
            # the first one's directory (shutil.move into an existing dir).
            n = 0
            while aside.exists():
                n += 1
                aside = self.directory.with_name(f"{stem}-{n}")
            log.error(
                "%s buffer at %s is corrupt (%s); moving it aside to %s and starting an empty one",
                self.name,
                self.directory,
                exc,
                aside,
            )
            try:
                if self.directory.exists():
                    shutil.move(str(self.directory), str(aside))
                    self.corrupt_moved.append(aside)
                return _open_cache(self.directory, self.durability)
            except (sqlite3.Error, OSError) as again:
                self._unwritable(again)
                return None
        except OSError as exc:
            self._unwritable(exc)
            return None

    def _unwritable(self, exc: BaseException) -> None:
        self.write_errors += 1
        self._retry_open_at = time.monotonic() + _REOPEN_INTERVAL
        log.error(
            "%s buffer at %s cannot be opened (%s): keeping records IN MEMORY ONLY "
            "(at most %d) until it can; they are lost if the process dies",
            self.name,
            self.directory,
            exc,
            self.max_records,
        )
        return None

    # -- blocking primitives (one worker thread at a time) -----------------------

    def _append_sync(self, records: Sequence[str]) -> tuple[int, int]:
        cache = self._cache
        assert cache is not None
        con = cache._con  # private: diskcache has no batch insert
        with cache.transact():
            # The rows Cache.push would write (same key sequence, inline text),
            # inserted with one statement: push() costs two statements a record.
            row = con.execute(
                "SELECT key FROM Cache WHERE ? < key AND key < ? AND raw = 1"
                " ORDER BY key DESC LIMIT 1",
                (0, _PUSH_MAX_KEY),
            ).fetchone()
            next_key = row[0] + 1 if row else _PUSH_FIRST_KEY
            now = time.time()
            inline: list[tuple[int, float, float, str]] = []
            for value in records:
                if len(value) >= _INLINE_LIMIT:
                    # Rare: let diskcache store it in a file, after what came before.
                    self._insert_rows(con, inline)
                    inline = []
                    next_key = int(cache.push(value)) + 1
                else:
                    inline.append((next_key, now, now, value))
                    next_key += 1
            self._insert_rows(con, inline)
            count = len(cache)
            dropped = max(0, count - self.max_records)
            # Drop the oldest beyond the bound, in the same transaction.
            for _ in range(dropped):
                cache.pull()
            count -= dropped
        return count, dropped

    @staticmethod
    def _insert_rows(con: sqlite3.Connection, rows: list[tuple[int, float, float, str]]) -> None:
        if rows:
            con.executemany(
                "INSERT INTO Cache(key, raw, store_time, expire_time, access_time,"
                " access_count, tag, size, mode, filename, value)"
                f" VALUES (?, 1, ?, NULL, ?, 0, NULL, 0, {_MODE_RAW_TEXT}, NULL, ?)",
                rows,
            )

    def _peek_sync(self, limit: int, skip: frozenset[int] = frozenset()) -> list[Record]:
        cache = self._cache
        out: list[Record] = []
        if cache is None:
            return out
        # One indexed query per batch instead of diskcache's get() per key: the
        # rows are diskcache's own (raw=1 integer keys from push, text inline).
        sql = cache._sql  # private: diskcache has no public batch read
        after = -1
        with cache.transact():
            while len(out) < limit:
                rows = sql(
                    "SELECT key, mode, value FROM Cache WHERE key > ? AND raw = 1"
                    " ORDER BY key LIMIT ?",
                    (after, limit - len(out) + len(skip)),
                ).fetchall()
                if not rows:
                    break
                for key, mode, value in rows:
                    after = key
                    if key in skip:
                        continue
                    if mode != _MODE_RAW_TEXT or not isinstance(value, str):
                        value = cache.get(key)  # stored in a file or pickled: rare
                        if value is None:
                            continue
                    out.append(Record(key, value))
                    if len(out) >= limit:
                        break
        return out

    def _ack_sync(self, records: Sequence[Record]) -> int:
        cache = self._cache
        assert cache is not None
        with cache.transact():
            # One statement per batch (diskcache's triggers keep its count).
            # diskcache restarts push keys once the store is empty, so a key
            # from a stale batch may now name a newer record: delete only the
            # record that was acknowledged (same key and text).
            cache._con.executemany(
                f"DELETE FROM Cache WHERE key = ? AND raw = 1 AND mode = {_MODE_RAW_TEXT}"
                " AND filename IS NULL AND value = ?",
                [(r.key, r.value) for r in records],
            )
            for record in records:
                # Values diskcache keeps in files (>= 32 KiB) go its own way.
                if len(record.value) >= _INLINE_LIMIT and cache.get(record.key) == record.value:
                    cache.delete(record.key)
            return len(cache)

    # -- the async API used by the pipeline ------------------------------------------

    def _publish_count(self) -> int:
        count = self._disk_count - len(self._tombstones) + len(self._memory)
        self.count.value = count
        return count

    def _write_failed(self, what: str, exc: BaseException) -> None:
        self.write_errors += 1
        _errlog.log(
            logging.ERROR,
            f"{self.name}:{what}",
            "%s buffer: %s failed (%s); %d record(s) held in memory",
            self.name,
            what,
            exc,
            len(self._memory),
        )

    async def append(self, records: Sequence[str]) -> int:
        """Commit ``records`` in one transaction; return how many old ones were dropped.

        Never raises: when the disk refuses the write, the records wait in memory
        (bounded) and are committed, oldest first, with the next write that works.
        """
        if not records:
            return 0
        if self._cache is None and time.monotonic() >= self._retry_open_at:
            self._cache = await trio.to_thread.run_sync(
                self._open_or_replace, limiter=self._limiter
            )
            if self._cache is not None:
                self._disk_count = len(self._cache)
                log.warning("%s buffer at %s is writable again", self.name, self.directory)
        if self._cache is not None:
            pending = [r.value for r in self._memory]
            pending += records
            try:
                self._disk_count, dropped = await trio.to_thread.run_sync(
                    self._append_sync, pending, limiter=self._limiter
                )
            except (sqlite3.Error, OSError) as exc:
                self._write_failed("write", exc)
            else:
                if self._memory:
                    log.warning(
                        "%s buffer: %d record(s) held in memory are on disk now",
                        self.name,
                        len(self._memory),
                    )
                self._memory.clear()
                await self._retry_tombstones()
                self.dropped_total += dropped
                self._publish_count()
                return dropped
        for value in records:
            self._memory_seq += 1
            self._memory.append(Record(-self._memory_seq, value))
        dropped = 0
        while self._memory and self._publish_count() > self.max_records:
            self._memory.popleft()
            dropped += 1
        self.dropped_total += dropped
        return dropped

    async def peek(self, limit: int) -> list[Record]:
        """Return up to ``limit`` oldest records, without removing them."""
        out: list[Record] = []
        if self._cache is not None and self._disk_count > len(self._tombstones):
            try:
                out = await trio.to_thread.run_sync(
                    self._peek_sync, limit, frozenset(self._tombstones), limiter=self._limiter
                )
            except (sqlite3.Error, OSError) as exc:
                self._write_failed("read", exc)
        for record in self._memory:
            if len(out) >= limit:
                break
            out.append(record)
        return out

    async def ack(self, records: Sequence[Record]) -> None:
        """Delete acknowledged records (records already dropped are ignored).

        Never raises: a delete the disk refuses is remembered and retried, and
        the record is not handed out again meanwhile.
        """
        on_disk = [r for r in records if r.key >= 0]
        done_in_memory = {r.key for r in records if r.key < 0}
        if done_in_memory:
            self._memory = deque(r for r in self._memory if r.key not in done_in_memory)
        if on_disk and self._cache is not None:
            try:
                self._disk_count = await trio.to_thread.run_sync(
                    self._ack_sync, on_disk, limiter=self._limiter
                )
            except (sqlite3.Error, OSError) as exc:
                self._tombstones.update(r.key for r in on_disk)
                self._write_failed("delete", exc)
            else:
                await self._retry_tombstones()
        self._publish_count()

    async def _retry_tombstones(self) -> None:
        if not self._tombstones or self._cache is None:
            return
        cache = self._cache

        def delete() -> int:
            with cache.transact():
                for key in self._tombstones:
                    cache.delete(key)
                return len(cache)

        try:
            self._disk_count = await trio.to_thread.run_sync(delete, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            self._write_failed("delete", exc)
        else:
            self._tombstones.clear()

    # -- inspection -------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Records and bytes on disk (blocking; for the CLI and tests)."""
        size = 0
        for path in self.directory.glob("cache.db*"):
            with contextlib.suppress(OSError):
                size += path.stat().st_size
        records = len(self._cache) if self._cache is not None else 0
        return {"records": records, "bytes": size, "max_records": self.max_records}

    def oldest(self) -> Record | None:
        """The oldest record on disk, or None (blocking; for the CLI)."""
        first = self._peek_sync(1)
        return first[0] if first else None

    def iter_all(self) -> list[Record]:
        """Every record on disk, oldest first (blocking; for export)."""
        return self._peek_sync(2**62)

    def integrity_check(self) -> str:
        """SQLite ``PRAGMA integrity_check`` result ("ok" when healthy)."""
        if self._cache is None:
            return "not open"
        row = self._cache._sql("PRAGMA integrity_check").fetchone()
        return str(row[0]) if row else "no result"

    def close(self) -> None:
        """Close the store; committed records stay on disk."""
        if self._cache is not None:
            self._cache.close()


_MODE_RAW_TEXT = diskcache.core.MODE_RAW  # text stored inline in the row
_INLINE_LIMIT = 32 * 1024  # diskcache's disk_min_file_size default
_PUSH_FIRST_KEY = 500_000_000_000_000  # Cache.push's key sequence (no prefix)
_PUSH_MAX_KEY = 999_999_999_999_999
_REOPEN_INTERVAL = 5.0  # seconds between attempts to open an unwritable store
_errlog = RateLimitedLog(log, interval=10.0)


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """True for a damaged file; False for a disk that is full, read-only or gone."""
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or any(
        marker in text for marker in ("malformed", "not a database", "quick_check", "corrupt")
    )


def buffer_path(buffer_dir: str | os.PathLike[str], sink: str) -> Path:
    """Where a sink's buffer lives under the buffer directory."""
    return Path(buffer_dir) / sink
