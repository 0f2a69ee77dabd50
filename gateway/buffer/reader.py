"""Reading the store without writing it (``gateway buffer stats|export``)."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.buffer.queue import Record, table_name
from gateway.buffer.sqlite import (
    ALERT_STATE_TABLE,
    BOOTS_TABLE,
    FORMAT_VERSION,
    STORE_FILE,
    _is_corruption,
    store_bytes,
)


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
                if name.isidentifier()
                and name.isascii()
                and name not in (BOOTS_TABLE, ALERT_STATE_TABLE)
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
        return int(self._query(f'SELECT COUNT(*) FROM "{table_name(sink)}"')[0][0])

    def oldest(self, sink: str) -> Record | None:
        """The oldest record waiting in ``sink``'s buffer, or None."""
        if sink not in self.tables:
            return None
        rows = self._query(f'SELECT seq, value FROM "{table_name(sink)}" ORDER BY seq LIMIT 1')
        return Record(*rows[0]) if rows else None

    def records(self, sink: str) -> Iterator[Record]:
        """Every record waiting in ``sink``'s buffer, oldest first (read as iterated)."""
        if sink not in self.tables or self.con is None:
            return
        try:
            cursor = self.con.execute(f'SELECT seq, value FROM "{table_name(sink)}" ORDER BY seq')
            while rows := cursor.fetchmany(1000):
                for seq, value in rows:
                    yield Record(seq, value)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def boots(self) -> dict[str, tuple[str, int | None]]:
        """Every boot the store knows: key → (boot id, learned clock offset or None)."""
        if self.con is None or not self._query(
            f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{BOOTS_TABLE}'"
        ):
            return {}
        rows = self._query(f"SELECT key, boot_id, offset_ns FROM {BOOTS_TABLE} ORDER BY rowid")
        return {key: (boot_id, offset) for key, boot_id, offset in rows}

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
    """Every buffer in the store in ``directory`` with its records, without writing.

    Empty for a directory without a store. Raises :class:`FileNotFoundError`
    when ``directory`` does not exist and :class:`StoreError` when the store is
    corrupt or cannot be read (see :class:`StoreReader`).
    """
    with StoreReader(directory) as reader:
        return {sink: list(reader.records(sink)) for sink in reader.tables}
