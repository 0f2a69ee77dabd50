"""The disk buffers: bounded, durable FIFOs of small text records in one SQLite file.

Every sink has a :class:`DiskBuffer`; all of them live as tables in one
:class:`BufferStore` (``<buffer_dir>/buffer.db``), so that a packet's records
for *both* sinks, and the acknowledgements that arrived since the last packet,
go to disk in one transaction: one fsync per packet instead of four.

The lifecycle of a record:

1. ``BufferStore.commit`` gives it the next sequence number of its buffer and
   writes it in one transaction with everything else pending. Only then can a
   sink see it ("committed before delivery").
2. A sink ``peek``\\ s the oldest records, delivers them, and ``ack``\\ s them.
   Acknowledging is FIFO: it acknowledges every older record too. The ack moves
   the buffer's head in memory at once; the rows are deleted with the next
   commit, or ``ack_delay`` seconds later when no commit comes. A crash in
   between delivers those records again (delivery is at-least-once), it never
   loses one.
3. Beyond ``max_records`` the oldest records are dropped and counted, so the
   source is never blocked by a sink that is down.

Recent records are also kept in memory, so a sink that keeps up never reads
SQLite. When the disk refuses writes (full, read-only, gone) the records stay
in memory, still bounded, live delivery goes on, and they are written, oldest
first, by the next write that works. A corrupt file is moved aside and replaced.

All SQLite work runs on worker threads, one at a time (a ``trio.Lock``), on one
connection: a transaction never spans threads and reads never race the writer.

Why not diskcache (which wrote the buffers before): a diskcache ``Cache`` is a
directory of its own, so two sinks meant two transactions per packet, and each
row carried two indexes and count triggers. Measured by ``make bench``, this
store writes about a tenth of the bytes per packet. Buffers written by that
earlier format are imported on start-up (:func:`_import_diskcache`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import sqlite3
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import trio
from trio_util import AsyncValue

from gateway.metrics import RateLimitedLog

log = logging.getLogger(__name__)

Durability = Literal["full", "normal"]
_Opened = tuple[sqlite3.Connection, dict[str, tuple[int | None, int | None]]]
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}

STORE_FILE = "buffer.db"
# 1 KiB pages: a packet's rows for both sinks touch a handful of pages, and each
# page written costs its full size in the WAL (4 KiB pages wrote twice the bytes).
PAGE_SIZE = 1024
FORMAT_VERSION = 1
ACK_DELAY = 1.0  # seconds an acknowledgement may wait to ride with the next commit
CACHE_RECORDS = 4096  # committed records per buffer also kept in memory
REOPEN_INTERVAL = 5.0  # seconds between attempts to write to a disk that refused
_READ_FAILED_PAUSE = 1.0


@dataclass(frozen=True, slots=True)
class Record:
    """A buffered record: its sequence number in its buffer and its text."""

    key: int
    value: str


def _connect(path: Path, durability: Durability, sinks: Iterable[str]) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    try:
        # page_size only takes effect while the file is still empty.
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
        row = con.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check failed: {row!r}")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT_VERSION:
            raise sqlite3.DatabaseError(
                f"not a database this version can read (format {version} > {FORMAT_VERSION})"
            )
        for name in sinks:
            con.execute(
                f'CREATE TABLE IF NOT EXISTS "{_table(name)}"'
                " (seq INTEGER PRIMARY KEY, value TEXT NOT NULL)"
            )
        if version < FORMAT_VERSION:
            con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
    except BaseException:
        con.close()
        raise
    return con


def _table(name: str) -> str:
    if not name.isidentifier() or not name.isascii():
        raise ValueError(f"invalid buffer name {name!r}")
    return name


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """True for a damaged file; False for a disk that is full, read-only or gone."""
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or any(
        marker in text for marker in ("malformed", "not a database", "quick_check", "corrupt")
    )


class DiskBuffer:
    """One sink's bounded FIFO of text records inside a :class:`BufferStore`.

    The sink reads it with :meth:`peek` and :meth:`ack`, and waits on
    :attr:`count` (the number of records it may deliver now). For a buffer of
    its own (tests, tools), :meth:`open` makes a one-table store.
    """

    def __init__(self, store: BufferStore, name: str, max_records: int) -> None:
        self.store = store
        self.name = name
        self.max_records = max_records
        self.table = _table(name)
        self.dropped_total = 0
        self.write_errors = 0
        # Sequence numbers: live records are exactly [head, tail). Rows below
        # disk_head are deleted on disk; rows below disk_tail are written.
        self.head = 1
        self.tail = 1
        self.disk_head = 1
        self.disk_tail = 1
        # Records [cache_start, tail) in memory: every unwritten one, plus up
        # to CACHE_RECORDS written ones for the sink to read without SQLite.
        self._cache: deque[str] = deque()
        self._cache_start = 1
        # Wakes the sink; the value is how many records it may deliver now.
        self.count: AsyncValue[int] = AsyncValue(0)

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        max_records: int,
        durability: Durability = "full",
        name: str = "buffer",
        ack_delay: float = 0.0,
    ) -> DiskBuffer:
        """A buffer with a store of its own in ``directory`` (acks written at once)."""
        store = await BufferStore.open(
            directory, {name: max_records}, durability=durability, ack_delay=ack_delay
        )
        return store.buffers[name]

    # -- state in memory ---------------------------------------------------------

    @property
    def in_memory(self) -> int:
        """Records held only in memory because the disk refused them."""
        return self.tail - max(self.disk_tail, self.head)

    @property
    def corrupt_moved(self) -> list[Path]:
        """Corrupt stores moved aside when this buffer's store was opened."""
        return self.store.corrupt_moved

    def _visible_tail(self) -> int:
        # Records become deliverable once written; when the disk refuses
        # writes, live delivery goes on from memory.
        return self.tail if self.store.degraded else max(self.disk_tail, self.head)

    def _publish_count(self) -> int:
        count = max(0, self._visible_tail() - self.head)
        self.count.value = count
        return count

    def _add(self, records: Sequence[str]) -> int:
        self._cache.extend(records)
        self.tail += len(records)
        dropped = max(0, self.tail - self.head - self.max_records)
        if dropped:
            self.head += dropped
            self.dropped_total += dropped
        self._trim()
        # The head may have moved past every written record: the count a sink
        # waits on must never promise records that peek() cannot return.
        self._publish_count()
        return dropped

    def _trim(self) -> None:
        # Acknowledged or dropped records are never needed again; written ones
        # beyond CACHE_RECORDS are read back from disk when needed.
        keep_from = max(self.head, min(self.disk_tail, self.tail - CACHE_RECORDS))
        for _ in range(min(keep_from - self._cache_start, len(self._cache))):
            self._cache.popleft()
        self._cache_start = max(self._cache_start, keep_from)

    def _unwritten(self) -> list[tuple[int, str]]:
        start = max(self.disk_tail, self.head)
        values = itertools.islice(self._cache, start - self._cache_start, None)
        return list(zip(itertools.count(start), values, strict=False))

    def _pending(self) -> bool:
        return self.disk_head < self.head or max(self.disk_tail, self.head) < self.tail

    def _from_cache(self, start: int, end: int) -> list[Record]:
        start = max(start, self._cache_start)
        values = itertools.islice(self._cache, start - self._cache_start, end - self._cache_start)
        return [Record(key, value) for key, value in zip(itertools.count(start), values)]

    # -- the async API used by the pipeline ---------------------------------------

    async def append(self, records: Sequence[str]) -> int:
        """Commit ``records`` in one transaction; return how many old ones were dropped.

        Never raises: when the disk refuses the write, the records wait in memory
        (bounded) and are committed, oldest first, with the next write that works.
        """
        return (await self.store.commit({self: records}))[self.name]

    async def peek(self, limit: int) -> list[Record]:
        """Return up to ``limit`` of the oldest deliverable records, without removing them.

        Always a Trio checkpoint, even when it answers from memory: a sink that
        loops on peek() can never starve the event loop.
        """
        await trio.lowlevel.checkpoint()
        start = self.head
        end = min(self._visible_tail(), start + limit)
        out: list[Record] = []
        if start < min(self._cache_start, end):
            try:
                out = await self.store.read(self, start, min(self._cache_start, end))
            except (sqlite3.Error, OSError) as exc:
                # Never skip over records that cannot be read: try again later.
                self.store.failed(f"{self.name}: read", exc, [self])
                await trio.sleep(_READ_FAILED_PAUSE)
                return []
            if len(out) < min(self._cache_start, end) - start:
                return out  # rows were dropped meanwhile; the next peek goes on
            start = out[-1].key + 1 if out else start
        # The state may have moved while we read: take the rest as it is now.
        end = min(self._visible_tail(), self.head + limit)
        if start >= self._cache_start:
            out += self._from_cache(max(start, self.head), end)[: limit - len(out)]
        return out

    async def ack(self, records: Sequence[Record]) -> None:
        """Acknowledge ``records`` and every older one (delivery is FIFO).

        The head moves at once; the rows leave the disk with the next commit or
        within the store's ``ack_delay``. Records already dropped are ignored.
        """
        if not records:
            return
        newest = max(r.key for r in records) + 1
        if newest <= self.head:
            return
        self.head = min(newest, self.tail)
        self._trim()
        self._publish_count()
        await self.store.acknowledged()

    # -- inspection (blocking; for the CLI and tests) -------------------------------

    def stats(self) -> dict[str, int]:
        """Records waiting, the store's bytes on disk, and the bound."""
        return {
            "records": self.tail - self.head,
            "bytes": self.store.disk_bytes(),
            "max_records": self.max_records,
        }

    def iter_all(self) -> list[Record]:
        """Every waiting record, oldest first."""
        out: list[Record] = []
        if self.store.con is not None and self.head < min(self.disk_tail, self._cache_start):
            out = self.store.read_sync(self, self.head, min(self.disk_tail, self._cache_start))
        start = out[-1].key + 1 if out else self.head
        return out + self._from_cache(start, self.tail)

    def oldest(self) -> Record | None:
        """The oldest waiting record, or None."""
        if self.store.con is not None and self.head < min(self.disk_tail, self._cache_start):
            rows = self.store.read_sync(self, self.head, self.head + 1)
            if rows:
                return rows[0]
        rows = self._from_cache(self.head, self.head + 1)
        return rows[0] if rows else None

    def integrity_check(self) -> str:
        """SQLite ``PRAGMA integrity_check`` of the store ("ok" when healthy)."""
        return self.store.integrity_check()

    def close(self) -> int:
        """Close the store (a buffer opened with :meth:`open` owns one); see BufferStore.close."""
        return self.store.close()


class BufferStore:
    """The SQLite file that holds every sink's buffer; one transaction per commit.

    Args:
        directory: the buffer directory (created 0700 if missing).
        sinks: buffer name → its bound (``max_records``).
        durability: "full" (synchronous=FULL: survives power loss) or "normal".
        ack_delay: how long acknowledgements may wait for the next commit
            before :meth:`run` writes them alone; 0 writes each one at once.
        import_old: import buffers left by the earlier diskcache format.

    The constructor blocks; in Trio use :meth:`open`. Run :meth:`run` in the
    nursery when ``ack_delay`` > 0.
    """

    def __init__(
        self,
        directory: Path,
        sinks: Mapping[str, int],
        *,
        durability: Durability = "full",
        ack_delay: float = ACK_DELAY,
        import_old: bool = True,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE
        self.durability = durability
        self.ack_delay = ack_delay
        self.buffers = {name: DiskBuffer(self, name, bound) for name, bound in sinks.items()}
        self.corrupt_moved: list[Path] = []
        self.degraded = True  # until the file is open and the last write worked
        self._lock = trio.Lock()
        self._pending_since: float | None = None
        self._retry_at = 0.0
        self._wake = trio.Event()
        self._retry_due = 0.0
        self.con: sqlite3.Connection | None = None
        opened = self._open_or_replace()
        if opened is not None:
            self._install(opened)
            if import_old:
                self._import_old_formats()
        for buf in self.buffers.values():
            buf._publish_count()

    @classmethod
    async def open(
        cls,
        directory: Path,
        sinks: Mapping[str, int],
        *,
        durability: Durability = "full",
        ack_delay: float = ACK_DELAY,
    ) -> BufferStore:
        """Open (or create, or replace a corrupt) store without blocking Trio."""
        return await trio.to_thread.run_sync(
            lambda: cls(directory, sinks, durability=durability, ack_delay=ack_delay)
        )

    # -- opening -------------------------------------------------------------------

    def _open_or_replace(self) -> _Opened | None:
        """Open the file (moving a corrupt one aside); None if the disk refuses (blocking)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                con = _connect(self.path, self.durability, self.buffers)
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise
                self._move_aside(exc)
                con = _connect(self.path, self.durability, self.buffers)
            ranges = {
                name: con.execute(f'SELECT MIN(seq), MAX(seq) FROM "{buf.table}"').fetchone()
                for name, buf in self.buffers.items()
            }
            return con, ranges
        except (sqlite3.Error, OSError) as exc:
            self._retry_at = time.monotonic() + REOPEN_INTERVAL
            _errlog.log(
                logging.ERROR,
                "open",
                "buffer store %s cannot be opened (%s): keeping records IN MEMORY ONLY "
                "(bounded) until it can; they are lost if the process dies",
                self.path,
                exc,
            )
            return None

    def _install(self, opened: _Opened) -> None:
        """Take over an opened file: what it holds comes before records held in memory."""
        self.con, ranges = opened
        for name, (first, last) in ranges.items():
            self._adopt(self.buffers[name], first, last)
        self.degraded = False

    def _move_aside(self, exc: BaseException) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        n = 0
        while True:
            # A second corruption within the same second gets a name of its own.
            stem = f"buffer.corrupt-{stamp}" + (f"-{n}" if n else "")
            aside = self.directory / f"{stem}.db"
            if not aside.exists():
                break
            n += 1
        log.error(
            "buffer store %s is corrupt (%s); moving it aside to %s and starting an empty one",
            self.path,
            exc,
            aside,
        )
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        self.corrupt_moved.append(aside)

    @staticmethod
    def _adopt(buf: DiskBuffer, first: int | None, last: int | None) -> None:
        """Take over what the file holds; records kept in memory come after it."""
        if last is None:
            buf.disk_head = buf.disk_tail = buf.head
            return
        assert first is not None
        shift = max(0, last + 1 - buf.head)
        buf.tail += shift
        buf._cache_start += shift
        buf.head = buf.disk_head = first
        buf.disk_tail = last + 1

    def _import_old_formats(self) -> None:
        for buf in self.buffers.values():
            old = self.directory / buf.name
            if not (old / "cache.db").exists():
                continue
            try:
                values = _import_diskcache(old)
            except Exception as exc:  # any failure: keep the old store and say so
                log.error(
                    "%s: cannot import the earlier buffer format at %s (%s); left in place",
                    buf.name,
                    old,
                    exc,
                )
                continue
            buf._add(values)
            self._write_sync(self._plan())
            shutil.rmtree(old, ignore_errors=True)
            log.warning(
                "%s: imported %d record(s) from the earlier buffer format at %s",
                buf.name,
                len(values),
                old,
            )

    # -- writing -------------------------------------------------------------------

    def _plan(self) -> list[tuple[DiskBuffer, int, int, list[tuple[int, str]]]]:
        """What is not yet on disk: (buffer, delete below, written up to, rows)."""
        return [
            (buf, buf.head, buf.tail, buf._unwritten())
            for buf in self.buffers.values()
            if buf._pending()
        ]

    def _write_sync(self, plan: list[tuple[DiskBuffer, int, int, list[tuple[int, str]]]]) -> None:
        con = self.con
        assert con is not None
        con.execute("BEGIN IMMEDIATE")
        try:
            for buf, head, _, rows in plan:
                con.execute(f'DELETE FROM "{buf.table}" WHERE seq < ?', (head,))
                # OR REPLACE: a commit that reported an error may still have landed.
                con.executemany(f'INSERT OR REPLACE INTO "{buf.table}" VALUES (?, ?)', rows)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        for buf, head, tail, _ in plan:
            buf.disk_head = max(buf.disk_head, head)
            buf.disk_tail = max(buf.disk_tail, tail)

    async def commit(self, batches: Mapping[DiskBuffer, Sequence[str]]) -> dict[str, int]:
        """Commit each buffer's records, with pending acks, in one transaction.

        Returns how many old records each buffer dropped to stay in its bound.
        Never raises: records the disk refuses wait in memory (see module doc).
        """
        dropped = {buf.name: buf._add(records) for buf, records in batches.items() if records}
        await self.sync()
        for buf in batches:
            dropped.setdefault(buf.name, 0)
            buf._publish_count()  # also when the disk refused: deliver from memory
        return dropped

    async def sync(self) -> bool:
        """Write everything pending (records and acks); False if the disk refused."""
        async with self._lock:
            if self.con is None:
                opened = None
                if time.monotonic() >= self._retry_at:
                    opened = await trio.to_thread.run_sync(self._open_or_replace)
                if opened is None:
                    self._note_pending()
                    return False
                self._install(opened)
                log.warning("buffer store %s can be opened again", self.path)
            plan, path = self._plan(), self.path
            if plan:
                try:
                    await trio.to_thread.run_sync(self._write_sync, plan)
                except (sqlite3.Error, OSError) as exc:
                    self.failed("write", exc, [p[0] for p in plan], degrade=True)
                    return False
                if self.degraded:
                    log.warning("buffer store %s: records held in memory are on disk now", path)
            self.degraded = False
            self._pending_since = trio.current_time() if self._has_pending() else None
            for buf in self.buffers.values():
                buf._trim()
                buf._publish_count()
            return True

    def failed(
        self, what: str, exc: BaseException, buffers: Iterable[DiskBuffer], *, degrade: bool = False
    ) -> None:
        """Count and log a refused disk operation; records stay in memory."""
        if degrade:
            self.degraded = True
        self._retry_due = trio.current_time() + REOPEN_INTERVAL
        held = 0
        for buf in buffers:
            buf.write_errors += 1
            held += buf.in_memory
            buf._publish_count()
        _errlog.log(
            logging.ERROR,
            what,
            "buffer store %s: %s failed (%s); %d record(s) held in memory",
            self.path,
            what,
            exc,
            held,
        )
        self._note_pending()

    def _has_pending(self) -> bool:
        return any(buf._pending() for buf in self.buffers.values())

    def _note_pending(self) -> None:
        if self._pending_since is None:
            self._pending_since = trio.current_time()
        self._wake.set()

    async def acknowledged(self) -> None:
        """Called by a buffer whose head moved: write now or soon."""
        if self.ack_delay <= 0:
            await self.sync()
        else:
            self._note_pending()

    async def run(self) -> None:
        """Write acks that no commit took along within ``ack_delay``; retry refused writes."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._pending_since is not None:
                due = self._pending_since + self.ack_delay
                if self.degraded:
                    due = max(due, self._retry_due)
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                    continue
                if not await self.sync():
                    self._pending_since = trio.current_time()

    # -- reading -------------------------------------------------------------------

    def read_sync(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """Rows ``start <= seq < end`` of ``buf`` from disk (blocking)."""
        assert self.con is not None
        rows = self.con.execute(
            f'SELECT seq, value FROM "{buf.table}" WHERE seq >= ? AND seq < ? ORDER BY seq',
            (start, end),
        ).fetchall()
        return [Record(seq, value) for seq, value in rows]

    async def read(self, buf: DiskBuffer, start: int, end: int) -> list[Record]:
        """:meth:`read_sync` on a worker thread, in turn with writes."""
        async with self._lock:
            if self.con is None:
                raise sqlite3.OperationalError("store not open")
            return await trio.to_thread.run_sync(self.read_sync, buf, start, end)

    # -- inspection and closing -------------------------------------------------------

    def disk_bytes(self) -> int:
        """Bytes of the store's files on disk."""
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return size

    def integrity_check(self) -> str:
        """SQLite ``PRAGMA integrity_check`` result ("ok" when healthy)."""
        if self.con is None:
            return "not open"
        row = self.con.execute("PRAGMA integrity_check").fetchone()
        return str(row[0]) if row else "no result"

    def close(self) -> int:
        """Write pending acks and records, then close; committed records stay on disk.

        Returns:
            How many records never reached the disk (lost with this process);
            they are logged as an error.
        """
        if self.con is None:
            # Never opened (the disk refused): try once more, so that what is
            # held in memory is not lost if the disk is back.
            opened = self._open_or_replace()
            if opened is not None:
                self._install(opened)
        if self.con is not None:
            plan = self._plan()
            if plan:
                try:
                    self._write_sync(plan)
                except (sqlite3.Error, OSError) as exc:
                    log.error("buffer store %s: final write failed (%s)", self.path, exc)
        lost = sum(buf.in_memory for buf in self.buffers.values())
        if lost:
            log.error(
                "buffer store %s: %d record(s) never reached the disk and are lost",
                self.path,
                lost,
            )
        if self.con is not None:
            self.con.close()
            self.con = None
        return lost


# -- reading without writing (``gateway buffer stats|export``) ----------------------------


class StoreError(Exception):
    """A buffer store that cannot be read: corrupt, unreadable, or of a newer format."""


class StoreReader:
    """A read-only view of the store in ``directory``, safe while a gateway runs.

    Unlike :class:`BufferStore` it never creates, moves, repairs or writes a
    file: a corrupt store raises :class:`StoreError` and stays where it is. A
    directory without a store reads as empty; a directory that does not exist
    raises :class:`FileNotFoundError`. Everything read comes from one read
    transaction: counts and records agree even while a gateway writes.

    How the file is opened depends on what lies next to it:

    - ``-wal`` and ``-shm`` present (a gateway has it open, or was killed):
      ``mode=ro``, which shares the gateway's WAL index in ``-shm``.
    - no ``-wal``, or an empty one (the store was closed): the file holds every
      committed record. A ``mode=ro`` open would create ``-wal`` and ``-shm``
      (and leave them behind), so it is read with ``immutable=1`` instead. A
      gateway that starts meanwhile writes to a new WAL, not to the file, until
      its first checkpoint.
    - a ``-wal`` with content but no ``-shm``: reading it needs an index that
      only a writer may build, so this raises :class:`StoreError`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE
        self.con: sqlite3.Connection | None = None
        self.tables: list[str] = []
        if not self.directory.is_dir():
            if self.directory.exists():
                raise NotADirectoryError(
                    errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(self.directory)
                )
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(self.directory))
        try:
            if not os.path.lexists(self.path):
                return
            self.con = self._connect()
            self._check()
            self.tables = [
                name
                for (name,) in self.con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid"
                )
                if name.isidentifier() and name.isascii()
            ]
        except StoreError:
            self.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise self._error(exc) from exc

    def _connect(self) -> sqlite3.Connection:
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        if wal.exists() and shm.exists():
            mode = "ro"
        elif wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                f"buffer store {self.path} has a write-ahead log ({wal.name}) but no index "
                f"({shm.name}); it cannot be read without writing one (starting the gateway "
                "recovers it)"
            )
        else:
            mode = "ro&immutable=1"
        uri = f"{self.path.absolute().as_uri()}?mode={mode}"
        con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10.0)
        try:
            con.execute("BEGIN")  # one snapshot for everything read
        except BaseException:
            con.close()
            raise
        return con

    def _check(self) -> None:
        assert self.con is not None
        row = self.con.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check failed: {row!r}")
        version = self.con.execute("PRAGMA user_version").fetchone()[0]
        if version > FORMAT_VERSION:
            raise StoreError(
                f"buffer store {self.path} was written by a newer version "
                f"(format {version} > {FORMAT_VERSION})"
            )

    def _error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            return StoreError(f"buffer store {self.path} is corrupt ({exc})")
        return StoreError(f"cannot read buffer store {self.path} ({exc})")

    def _query(self, sql: str) -> list[Any]:
        assert self.con is not None
        try:
            return self.con.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def count(self, sink: str) -> int:
        """Records waiting in ``sink``'s buffer (0 for a buffer the store does not hold)."""
        if sink not in self.tables:
            return 0
        return int(self._query(f'SELECT COUNT(*) FROM "{_table(sink)}"')[0][0])

    def oldest(self, sink: str) -> Record | None:
        """The oldest record waiting in ``sink``'s buffer, or None."""
        if sink not in self.tables:
            return None
        rows = self._query(f'SELECT seq, value FROM "{_table(sink)}" ORDER BY seq LIMIT 1')
        return Record(*rows[0]) if rows else None

    def records(self, sink: str) -> Iterator[Record]:
        """Every record waiting in ``sink``'s buffer, oldest first (read as iterated)."""
        if sink not in self.tables or self.con is None:
            return
        try:
            cursor = self.con.execute(f'SELECT seq, value FROM "{_table(sink)}" ORDER BY seq')
            while rows := cursor.fetchmany(1000):
                for seq, value in rows:
                    yield Record(seq, value)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def disk_bytes(self) -> int:
        """Bytes of the store's files on disk."""
        size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                size += os.stat(f"{self.path}{suffix}").st_size
        return size

    def close(self) -> None:
        """End the read transaction and close the file."""
        if self.con is not None:
            self.con.close()
            self.con = None

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_store(directory: Path) -> dict[str, list[Record]]:
    """Every buffer in the store in ``directory`` with its records, without writing.

    Empty for a directory without a store. Raises :class:`FileNotFoundError`
    when ``directory`` does not exist and :class:`StoreError` when the store is
    corrupt or cannot be read (see :class:`StoreReader`).
    """
    with StoreReader(directory) as reader:
        return {sink: list(reader.records(sink)) for sink in reader.tables}


def _import_diskcache(directory: Path) -> list[str]:
    """The records of a buffer written by the earlier diskcache format, oldest first."""
    import diskcache  # only for buffers written by earlier versions

    with diskcache.Cache(str(directory), eviction_policy="none", size_limit=2**62) as cache:
        keys = sorted(k for k in cache.iterkeys() if isinstance(k, int))
        values = [cache.get(k) for k in keys]
    return [v for v in values if isinstance(v, str)]


_errlog = RateLimitedLog(log, interval=10.0)
