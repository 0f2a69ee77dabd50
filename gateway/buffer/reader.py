"""Reading the store without writing it (``gateway buffer stats|export``).

diskcache cannot read a cache without writing it (opening a ``Cache`` rewrites
its settings, and creates the WAL and its index), so this reads diskcache's
``Cache`` table through :mod:`sqlite3`, read-only: each run of records is a
row whose key is ``<buffer>-<15 digits>`` and whose value is the compressed
JSON itself (the store keeps every value in the table, ``mode`` 1, "raw"; see
:mod:`gateway.buffer.chunks`).
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.buffer.cachefile import (
    BOOTS_KEY,
    BUFFERS_KEY,
    DEAD_SUFFIX,
    FORMAT_KEY,
    FORMAT_VERSION,
    HEADS_KEY,
    STORE_FILE,
    _is_corruption,
    key_range,
    seq_of,
    store_bytes,
    valid_name,
)
from gateway.buffer.chunks import decode
from gateway.buffer.layout import first_live, parse_boots, saved_head
from gateway.buffer.queue import Record

_RAW = 1  # diskcache's MODE_RAW: the value column holds the value itself


class StoreError(Exception):
    """A buffer store that cannot be read: corrupt, unreadable, or of a newer format.

    ``corrupt`` is True when SQLite calls the file damaged: then
    :func:`gateway.buffer.recovery.salvage` can say what a gateway would
    salvage from it.
    """

    def __init__(self, message: str, *, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


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
        self._written = False
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
            names = self._document(BUFFERS_KEY, [])
            self.tables = [name for name in names if valid_name(name)]
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
        # A file created but never written by diskcache is an empty store.
        self._written = bool(
            self.con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'Cache'"
            ).fetchone()
        )
        if not self._written:
            return
        version = self._value(FORMAT_KEY)
        if version is not None and version != FORMAT_VERSION:
            raise StoreError(
                f"buffer store {self.path} is of another format "
                f"(format {version!r}, this version reads {FORMAT_VERSION})"
            )

    def _error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.DatabaseError) and _is_corruption(exc):
            return StoreError(f"buffer store {self.path} is corrupt ({exc})", corrupt=True)
        return StoreError(f"cannot read buffer store {self.path} ({exc})")

    def _value(self, key: str) -> Any:
        """The value stored (raw) under ``key``, or None."""
        rows = self._query_args(
            "SELECT value FROM Cache WHERE key = ? AND raw = 1 AND mode = ?", (key, _RAW)
        )
        return rows[0][0] if rows else None

    def _document(self, key: str, default: Any) -> Any:
        """A JSON document stored under ``key``, or ``default``."""
        text = self._value(key)
        try:
            return json.loads(text) if isinstance(text, str) else default
        except ValueError as exc:
            raise StoreError(f"buffer store {self.path}: {key} is not JSON ({exc})") from exc

    def _query_args(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        if self.con is None or not self._written:
            return []
        try:
            return self.con.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def count(self, sink: str) -> int:
        """Records waiting in ``sink``'s buffer (0 for a buffer the store does not hold)."""
        return sum(1 for _ in self.records(sink))

    def oldest(self, sink: str) -> Record | None:
        """The oldest record waiting in ``sink``'s buffer, or None."""
        return next(self.records(sink, limit=1), None)

    def records(self, sink: str, *, limit: int = -1) -> Iterator[Record]:
        """Every record waiting in ``sink``'s buffer, oldest first (read as iterated)."""
        if sink not in self.tables or self.con is None or not self._written:
            return
        head = saved_head(self._document(HEADS_KEY, {}), sink)
        left = limit
        try:
            cursor = self.con.execute(
                "SELECT key, value, mode FROM Cache WHERE key BETWEEN ? AND ? AND raw = 1"
                " ORDER BY key",
                key_range(sink),
            )
            while rows := cursor.fetchmany(100):
                for key, value, mode in rows:
                    if mode != _RAW or not isinstance(value, bytes):
                        raise StoreError(f"buffer store {self.path}: {key} is not a run of records")
                    try:
                        values = decode(value)
                    except ValueError as exc:
                        raise StoreError(
                            f"buffer store {self.path}: {key} is not a run of records"
                        ) from exc
                    # Records below the head are acknowledged; their run is still on disk.
                    start = seq_of(key)
                    first = first_live(start, head)
                    for seq, record in enumerate(values[first - start :], first):
                        if left == 0:
                            return
                        left -= 1
                        yield Record(seq, record)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def boots(self) -> dict[str, tuple[str, int | None]]:
        """Every boot the store knows: key → (boot id, learned clock offset or None)."""
        if self.con is None:
            return {}
        return parse_boots(self._document(BOOTS_KEY, {}))

    def disk_bytes(self) -> int:
        """Bytes of the store's files on disk."""
        return store_bytes(self.path)

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
    """Every sink's buffer in the store in ``directory`` with its records, without writing.

    Dead-letter queues (``<sink>_dead``) are not sinks' buffers: left out.

    Empty for a directory without a store. Raises :class:`FileNotFoundError`
    when ``directory`` does not exist and :class:`StoreError` when the store is
    corrupt or cannot be read (see :class:`StoreReader`).
    """
    with StoreReader(directory) as reader:
        return {
            sink: list(reader.records(sink))
            for sink in reader.tables
            if not sink.endswith(DEAD_SUFFIX)
        }
