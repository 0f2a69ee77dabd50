"""The SQLite file itself: opening it with the store's pragmas and tables, and its identity."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from gateway import records
from gateway.buffer.legacy import upgrade
from gateway.buffer.queue import table_name

log = logging.getLogger(__name__)

Durability = Literal["full", "normal"]
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}

STORE_FILE = "buffer.db"
# 1 KiB pages: a packet's rows for both sinks touch a handful of pages, and each
# page written costs its full size in the WAL (4 KiB pages wrote twice the bytes).
PAGE_SIZE = 1024
# The store's layout and its records' formats (gateway.records) together.
FORMAT_VERSION = records.FORMAT_VERSION
BOOTS_TABLE = "boots"  # one row per boot: its id and the clock offset it learned
ALERT_STATE_TABLE = "alert_state"  # key → text, owned by gateway.alerts


def _connect(
    path: Path,
    durability: Durability,
    sinks: Iterable[str],
    *,
    exclusive: bool = False,
    timeout: float = 10.0,
) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    try:
        if exclusive:
            # Before the first access, so that the write lock taken below is
            # held until close. In WAL mode that is the only way to learn that
            # another process has the file open: its connection holds a shared
            # lock on the file, which an exclusive one has to wait for, while
            # BEGIN EXCLUSIVE alone would let it go on reading and writing.
            con.execute("PRAGMA locking_mode = EXCLUSIVE")
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
        con.execute("BEGIN IMMEDIATE")
        for name in sinks:
            con.execute(
                f'CREATE TABLE IF NOT EXISTS "{table_name(name)}"'
                " (seq INTEGER PRIMARY KEY, value TEXT NOT NULL)"
            )
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {BOOTS_TABLE}"
            " (key TEXT PRIMARY KEY, boot_id TEXT NOT NULL, offset_ns INTEGER)"
        )
        con.execute(
            f"CREATE TABLE IF NOT EXISTS {ALERT_STATE_TABLE}"
            " (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        if 0 < version < FORMAT_VERSION:
            upgrade(con, version)
        if version < FORMAT_VERSION:
            con.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        con.execute("COMMIT")
    except BaseException:
        con.close()
        raise
    return con


def store_bytes(path: Path) -> int:
    """Bytes of a store's files on disk (the file, its WAL and its index)."""
    size = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            size += os.stat(f"{path}{suffix}").st_size
    return size


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of ``path``; None when it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """True for a damaged file; False for a disk that is full, read-only or gone."""
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or any(
        marker in text for marker in ("malformed", "not a database", "quick_check", "corrupt")
    )
