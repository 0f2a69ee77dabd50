"""The store's file: one ``diskcache.Cache`` in the buffer directory, and its identity.

diskcache needs a hand in a few places, and only there is :mod:`sqlite3` used
directly: the file is created with 1 KiB pages before diskcache creates its
tables (``page_size`` cannot change later, and a packet's writes touch a
handful of pages, each written whole to the WAL); a ``quick_check`` before
opening tells a damaged file from a disk that refuses writes; an
``integrity_check`` on request; and :mod:`gateway.buffer.reader` reads the file
without writing it, which opening a ``Cache`` would.

Keys (all strings, so that diskcache stores them raw):

- ``<buffer>-<15 digits>``: a run of records of a buffer (a JSON list, see
  :mod:`gateway.buffer.chunks`), under the sequence number of its first, in
  the key format of diskcache's own queues (``peek``/``pull`` with
  ``prefix=<buffer>``).
- :data:`FORMAT_KEY`: the store's format version, checked at every open.
- :data:`BUFFERS_KEY`, :data:`BOOTS_KEY`, :data:`ALERT_STATE_KEY`,
  :data:`HEADS_KEY`, :data:`IMPORTS_KEY`: small JSON documents (see each).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import diskcache

from gateway import records
from gateway.config.sections import Durability

_SYNCHRONOUS = {"full": 2, "normal": 1}  # SQLite's FULL and NORMAL

STORE_FILE: str = diskcache.core.DBNAME  # "cache.db"
# 1 KiB pages: a packet's rows for both sinks touch a handful of pages, and each
# page written costs its full size in the WAL (4 KiB pages wrote twice the bytes).
PAGE_SIZE = 1024
# The store's layout and its records' formats (gateway.records) together.
FORMAT_VERSION = records.FORMAT_VERSION
FORMAT_KEY = "format"
BUFFERS_KEY = "buffers"  # JSON list of the buffers' names, for readers
BOOTS_KEY = "boots"  # JSON {key: [boot id, learned offset or null]}, one entry per boot
ALERT_STATE_KEY = "alert_state"  # JSON {key: text}, owned by gateway.alerts
DEAD_SUFFIX = "_dead"  # buffer "mqtt" keeps its dead letters in the buffer "mqtt_dead"
HEADS_KEY = "heads"  # JSON {buffer: seq}: its first live record, when inside a run
IMPORTS_KEY = "imports"  # JSON {sha256 of an imported file: [buffers it went into]}
SEQ_DIGITS = 15  # diskcache's queue keys: "<prefix>-<15 digits>"

# Errors of a store that cannot be opened, read or written. diskcache raises
# Timeout when another connection holds the write lock.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError, diskcache.Timeout)


class StoreFormatError(sqlite3.DatabaseError):
    """The file is not a store of this format (a newer version's, or another cache)."""


class CorruptItem(sqlite3.DatabaseError):
    """An item or a document SQLite reads back but that does not decode: damaged bytes."""


def valid_name(name: object) -> bool:
    """Whether ``name`` may name a buffer (what :func:`check_name` accepts)."""
    return isinstance(name, str) and name.isidentifier() and name.isascii()


def check_name(name: str) -> str:
    """A buffer's name (an ASCII identifier, checked): its records' key prefix."""
    if not valid_name(name):
        raise ValueError(f"invalid buffer name {name!r}")
    return name


def record_key(name: str, seq: int) -> str:
    """The key of record ``seq`` of buffer ``name``."""
    return f"{name}-{seq:0{SEQ_DIGITS}d}"


def key_range(name: str) -> tuple[str, str]:
    """The first and last possible record key of buffer ``name``."""
    return record_key(name, 0), f"{name}-{'9' * SEQ_DIGITS}"


def seq_of(key: str) -> int:
    """The sequence number in a record key."""
    return int(key.rsplit("-", 1)[1])


def _create(path: Path) -> None:
    """Create ``path`` with the store's page size and WAL, before diskcache makes its tables."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        # diskcache's own default (FULL), which it can no longer set once the
        # header below exists; freed pages are given back at each commit
        # (measured: fewer bytes per packet than with none).
        con.execute("PRAGMA auto_vacuum = FULL")
        # Setting WAL writes the header: the page size is fixed from now on.
        con.execute("PRAGMA journal_mode = WAL")
    finally:
        con.close()


def quick_check(path: Path, *, timeout: float = 10.0) -> None:
    """Raise :class:`sqlite3.DatabaseError` unless ``path`` passes SQLite's quick_check."""
    con = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    try:
        row = con.execute("PRAGMA quick_check").fetchone()
    finally:
        con.close()
    if row is None or row[0] != "ok":
        raise sqlite3.DatabaseError(f"quick_check failed: {row!r}")


def integrity_check(path: Path) -> str:
    """SQLite's ``PRAGMA integrity_check`` of the file ("ok" when healthy)."""
    con = sqlite3.connect(path, isolation_level=None, timeout=10.0)
    try:
        row = con.execute("PRAGMA integrity_check").fetchone()
    finally:
        con.close()
    return str(row[0]) if row else "no result"


def open_cache(
    directory: Path, durability: Durability, names: list[str], *, timeout: float = 10.0
) -> diskcache.Cache:
    """Open (creating if missing) the store's cache in ``directory`` (blocking).

    Raises:
        sqlite3.DatabaseError: the file is damaged, or :class:`StoreFormatError`:
            of a format this version cannot read.
        sqlite3.Error, OSError, diskcache.Timeout: the disk refuses.
    """
    path = directory / STORE_FILE
    if not path.exists():
        _create(path)
    quick_check(path, timeout=timeout)
    cache = diskcache.Cache(
        str(directory),
        timeout=timeout,
        # The bound is ours, enforced and counted by the buffers: never evict.
        eviction_policy="none",
        # Nothing expires: skip the expiry query every set() would run.
        cull_limit=0,
        sqlite_synchronous=_SYNCHRONOUS[durability],
        # Every value in SQLite, under its transactions and fsyncs: diskcache
        # writes larger ones to files of their own, without fsync.
        disk_min_file_size=2**31 - 1,
    )
    try:
        version = cache.get(FORMAT_KEY)
        if version is None:
            if len(cache) > 0:
                raise StoreFormatError("not a buffer store (a cache without a format version)")
            cache.set(FORMAT_KEY, FORMAT_VERSION)
        elif version != FORMAT_VERSION:
            raise StoreFormatError(
                f"not a store this version can read (format {version!r}, expected {FORMAT_VERSION})"
            )
        known = load_json(cache.get(BUFFERS_KEY), [])
        if not set(names) <= set(known):
            cache.set(BUFFERS_KEY, json.dumps(list(dict.fromkeys([*known, *names]))))
    except BaseException:
        cache.close()
        raise
    return cache


def load_json(text: object, default: Any) -> Any:
    """A JSON document stored under a key, or ``default`` when there is none."""
    if not isinstance(text, str):
        return default
    return json.loads(text)


def hold(path: Path, *, exclusive: bool) -> int:
    """Lock the store file against imports (shared) or everyone (exclusive); the fd.

    SQLite's own locks last only as long as a transaction, so a running
    gateway holds a shared ``flock`` on the file from open to close, and an
    import takes an exclusive one: neither writes behind the other's back.

    Raises:
        BlockingIOError: the other kind of lock is held.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


def _is_corruption(exc: BaseException) -> bool:
    """True for a damaged file; False for a disk that is full, read-only or gone."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc).lower()
    return not isinstance(exc, sqlite3.OperationalError) or any(
        marker in text for marker in ("malformed", "not a database", "quick_check", "corrupt")
    )
