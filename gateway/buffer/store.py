"""The disk buffers: bounded, durable FIFOs of small text records in one SQLite file.

Every sink has a :class:`DiskBuffer`; all of them live as tables in one
:class:`BufferStore` (``<buffer_dir>/buffer.db``), so that a packet's records
for *both* sinks, and the acknowledgements that arrived since the last packet,
go to disk in one transaction: one fsync per packet instead of four.

A record's lifecycle (commit, peek or read, ack, the bound's drop) is told in
:mod:`gateway.buffer.queue`; this module is the file underneath.

Beside the buffers the store keeps two small tables: ``boots`` (each boot's
clock offset) and ``alert_state`` (the alert engine's active alerts, written
in the same transaction as the events that changed them).

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
earlier format are imported on start-up (:mod:`gateway.buffer.legacy`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import trio

from gateway import records
from gateway.buffer.legacy import import_diskcache
from gateway.buffer.queue import DiskBuffer, Record
from gateway.buffer.sqlite import (
    ALERT_STATE_TABLE,
    BOOTS_TABLE,
    STORE_FILE,
    Durability,
    _connect,
    _file_identity,
    _is_corruption,
    store_bytes,
)
from gateway.metrics import RateLimitedLog

log = logging.getLogger(__name__)

_Opened = tuple[
    sqlite3.Connection,
    dict[str, tuple[int | None, int | None]],
    dict[str, list[tuple[int, str]]],
]
_Plan = list[tuple[DiskBuffer, int, int, list[tuple[int, str]]]]
ACK_DELAY = 1.0  # seconds an acknowledgement may wait to ride with the next commit
REOPEN_INTERVAL = 5.0  # seconds between attempts to write to a disk that refused


class BufferStore:
    """The SQLite file that holds every sink's buffer; one transaction per commit.

    Args:
        directory: the buffer directory (created 0700 if missing).
        sinks: buffer name → its bound (``max_records``).
        durability: "full" (synchronous=FULL: survives power loss) or "normal".
        ack_delay: how long acknowledgements may wait for the next commit
            before :meth:`run` writes them alone; 0 writes each one at once.
        import_old: import buffers left by the earlier diskcache format.
        protect: buffer name → marker; records containing it are never
            dropped by the bound while unprotected ones can go instead.

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
        protect: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_FILE
        self.durability = durability
        self.ack_delay = ack_delay
        markers = protect or {}
        self.buffers = {
            name: DiskBuffer(self, name, bound, markers.get(name)) for name, bound in sinks.items()
        }
        # alert_state rows to write with the next transaction (None: delete).
        self._state: dict[str, str | None] = {}
        self.corrupt_moved: list[Path] = []
        self.degraded = True  # until the file is open and the last write worked
        self._lock = trio.Lock()
        self._pending_since: float | None = None
        self._retry_at = 0.0
        self._wake = trio.Event()
        self._retry_due = 0.0
        self.con: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._boots: dict[str, int | None] = {}  # saved boots, to rewrite into a new file
        self.recreated = 0  # times the file was deleted under us and recreated
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
        protect: Mapping[str, str] | None = None,
    ) -> BufferStore:
        """Open (or create, or replace a corrupt) store without blocking Trio."""
        return await trio.to_thread.run_sync(
            lambda: cls(
                directory, sinks, durability=durability, ack_delay=ack_delay, protect=protect
            )
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
            # One scan at open: the drop must know where protected records are.
            protected = {
                name: con.execute(
                    f'SELECT seq, value FROM "{buf.table}" WHERE instr(value, ?) > 0 ORDER BY seq',
                    (buf.marker,),
                ).fetchall()
                for name, buf in self.buffers.items()
                if buf.marker
            }
            return con, ranges, protected
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
        self.con, ranges, protected = opened
        for name, (first, last) in ranges.items():
            self._adopt(self.buffers[name], first, last, protected.get(name, []))
        self.degraded = False
        self._identity = _file_identity(self.path)

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
    def _adopt(
        buf: DiskBuffer, first: int | None, last: int | None, protected: list[tuple[int, str]]
    ) -> None:
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
        buf._adopt_protected(protected, shift)
        buf._renumbered()  # what a sink has in flight carries the old keys

    def _import_old_formats(self) -> None:
        for buf in self.buffers.values():
            old = self.directory / buf.name
            if not (old / "cache.db").exists():
                continue
            try:
                values = import_diskcache(old)
            except Exception as exc:  # any failure: keep the old store and say so
                log.error(
                    "%s: cannot import the earlier buffer format at %s (%s); left in place",
                    buf.name,
                    old,
                    exc,
                )
                continue
            buf._add(values)
            plan = self._plan()
            self._write_sync(plan)
            self._wrote(plan, {})
            shutil.rmtree(old, ignore_errors=True)
            log.warning(
                "%s: imported %d record(s) from the earlier buffer format at %s",
                buf.name,
                len(values),
                old,
            )

    # -- writing -------------------------------------------------------------------

    def _plan(self) -> _Plan:
        """What is not yet on disk: (buffer, delete below, written up to, rows)."""
        return [
            (buf, buf.head, buf.tail, buf._unwritten())
            for buf in self.buffers.values()
            if buf._pending()
        ]

    def _write_sync(self, plan: _Plan, state: Mapping[str, str | None] | None = None) -> None:
        con = self.con
        assert con is not None
        con.execute("BEGIN IMMEDIATE")
        try:
            for buf, head, _, rows in plan:
                con.execute(f'DELETE FROM "{buf.table}" WHERE seq < ?', (head,))
                # OR REPLACE: a commit that reported an error may still have landed.
                con.executemany(f'INSERT OR REPLACE INTO "{buf.table}" VALUES (?, ?)', rows)
            for key, value in (state or {}).items():
                if value is None:
                    con.execute(f"DELETE FROM {ALERT_STATE_TABLE} WHERE key = ?", (key,))
                else:
                    con.execute(
                        f"INSERT OR REPLACE INTO {ALERT_STATE_TABLE} VALUES (?, ?)", (key, value)
                    )
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        for buf, head, tail, _ in plan:
            buf.disk_head = max(buf.disk_head, head)
            buf.disk_tail = max(buf.disk_tail, tail)

    def _wrote(self, plan: _Plan, state: Mapping[str, str | None]) -> None:
        """After a write that worked, in Trio's thread (commits change the same state)."""
        for buf, _, _, rows in plan:
            buf._written(rows)
        for key, value in state.items():
            # A newer change of the same key waits for the next write.
            if key in self._state and self._state[key] == value:
                del self._state[key]

    async def commit(
        self,
        batches: Mapping[DiskBuffer, Sequence[str]],
        *,
        state: Mapping[str, str | None] | None = None,
    ) -> dict[str, int]:
        """Commit each buffer's records, with pending acks, in one transaction.

        ``state`` (key → text, or None to delete) goes to the ``alert_state``
        table in that same transaction: the alert engine's record of what is
        active changes together with the events that changed it.

        Returns how many old records each buffer dropped to stay in its bound.
        Never raises: records the disk refuses wait in memory (see module doc).
        """
        dropped = {buf.name: buf._add(records) for buf, records in batches.items() if records}
        if state:
            self._state.update(state)
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
            if self._file_was_replaced():
                await trio.to_thread.run_sync(self._recreate_sync)
            plan, path, state = self._plan(), self.path, dict(self._state)
            if plan or state:
                try:
                    await trio.to_thread.run_sync(self._write_sync, plan, state)
                except (sqlite3.Error, OSError) as exc:
                    self.failed("write", exc, [p[0] for p in plan], degrade=True)
                    return False
                self._wrote(plan, state)
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
        return bool(self._state) or any(buf._pending() for buf in self.buffers.values())

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

    # -- boots and their clock offsets ------------------------------------------------

    def boot_offsets(self) -> dict[str, tuple[str, int | None]]:
        """Every boot the store knows: key → (boot id, learned offset or None) (blocking)."""
        if self.con is None:
            return {}
        rows = self.con.execute(f"SELECT key, boot_id, offset_ns FROM {BOOTS_TABLE}").fetchall()
        return {key: (boot_id, offset) for key, boot_id, offset in rows}

    def _file_was_replaced(self) -> bool:
        """True when the path no longer names the file we have open (deleted, replaced).

        SQLite would go on writing to the unlinked file: no error, and the
        whole backlog gone at the next start. One stat per commit finds it.
        """
        return self.con is not None and _file_identity(self.path) != self._identity

    def _recreate_sync(self) -> None:
        """Read every live record from the orphaned file, then write them to a new store."""
        assert self.con is not None
        for buf in self.buffers.values():
            if buf.head < buf._cache_start:
                # The rows the memory cache no longer holds: still readable from
                # the deleted file through the open connection.
                older = self.read_sync(buf, buf.head, buf._cache_start)
                buf._cache.extendleft(reversed([r.value for r in older]))
                buf._cache_start = buf.head
            buf.disk_head = buf.disk_tail = buf.head
        held = sum(buf.tail - buf.head for buf in self.buffers.values())
        self.con.close()
        self.con = None
        self.recreated += 1
        log.error(
            "buffer store %s was deleted or replaced while open; recreating it "
            "and writing the %d record(s) held",
            self.path,
            held,
        )
        opened = self._open_or_replace()
        if opened is None:
            self.degraded = True
            return
        con, _, _ = opened
        # The new file is empty: every record is written again by the caller's plan.
        self.con = con
        self._identity = _file_identity(self.path)
        self.degraded = False
        for boot_id, offset in self._boots.items():
            self._save_boot_sync(boot_id, offset)

    def _save_boot_sync(self, boot_id: str, offset_ns: int | None) -> None:
        assert self.con is not None
        if offset_ns is not None or boot_id not in self._boots:
            self._boots[boot_id] = offset_ns
        self.con.execute(
            f"INSERT INTO {BOOTS_TABLE} (key, boot_id, offset_ns) VALUES (?, ?, ?)"
            " ON CONFLICT (key) DO UPDATE SET offset_ns = COALESCE(excluded.offset_ns, offset_ns)",
            (records.boot_key(boot_id), boot_id, offset_ns),
        )

    async def save_boot(self, boot_id: str, offset_ns: int | None) -> bool:
        """Remember a boot (and the clock offset it learned); False if the disk refused.

        The offset lets records of this boot stamped while the clock was wrong
        be corrected after a restart, even in a later boot.
        """
        async with self._lock:
            if self.con is None:
                return False
            try:
                await trio.to_thread.run_sync(self._save_boot_sync, boot_id, offset_ns)
            except (sqlite3.Error, OSError) as exc:
                _errlog.log(logging.ERROR, "boot", "buffer store %s: %s", self.path, exc)
                return False
            return True

    # -- the alert engine's state ---------------------------------------------------------

    def alert_state(self) -> dict[str, str]:
        """Every ``alert_state`` row, with changes not yet written applied (blocking)."""
        rows: dict[str, str] = {}
        if self.con is not None:
            rows = dict(self.con.execute(f"SELECT key, value FROM {ALERT_STATE_TABLE}").fetchall())
        for key, value in self._state.items():
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = value
        return rows

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
        return store_bytes(self.path)

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
            plan, state = self._plan(), dict(self._state)
            if plan or state:
                try:
                    self._write_sync(plan, state)
                    self._wrote(plan, state)
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


_errlog = RateLimitedLog(log, interval=10.0)
