"""Appending records to a store that no gateway has open (``gateway buffer import|resend-dead``)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from gateway import records
from gateway.buffer.queue import table_name
from gateway.buffer.sqlite import BOOTS_TABLE, STORE_FILE, _connect


class StoreInUse(Exception):
    """Another process (a running gateway) has the store open: it may not be written."""


class BufferFull(Exception):
    """The records to import do not fit in a buffer's bound: importing would drop some."""


def import_records(
    directory: Path,
    batches: Mapping[str, Sequence[str]],
    *,
    bounds: Mapping[str, int],
    boots: Iterable[tuple[str, int | None]] = (),
    busy_timeout: float = 1.0,
) -> dict[str, int]:
    """Append records to the buffers of a store that no process has open, in one transaction.

    For ``gateway buffer import`` and ``resend-dead`` (blocking). A running
    gateway keeps each buffer's sequence numbers in memory: rows written behind
    its back would be overwritten by its next commit, and it would never
    deliver them. So the file is opened with SQLite's exclusive locking mode,
    which waits ``busy_timeout`` for every other connection to go and then
    keeps them out until the import is done (a gateway starting meanwhile waits
    for the lock, or holds its records in memory until it can open the file).

    Args:
        directory: the buffer directory (created 0700 when missing).
        batches: buffer name → records in the formats of :mod:`gateway.records`,
            appended after what the buffer holds, in this order.
        bounds: buffer name → its bound (``max_records``): an import never makes
            a buffer drop records.
        boots: (boot id, learned clock offset or None) for the boots the
            records' stamps name; a boot the store already knows keeps its offset.
        busy_timeout: seconds to wait for other connections to close.

    Returns:
        How many records each buffer of ``batches`` received.

    Raises:
        StoreInUse: another process has the store open.
        BufferFull: a buffer would exceed its bound; nothing was written.
        sqlite3.Error, OSError: the store cannot be opened or written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / STORE_FILE
    names = list(dict.fromkeys([*bounds, *batches]))
    try:
        con = _connect(path, "full", names, exclusive=True, timeout=busy_timeout)
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):
            raise StoreInUse(
                f"buffer store {path} is open in another process (a running gateway?); "
                "stop it first"
            ) from exc
        raise
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            added: dict[str, int] = {}
            for name, values in batches.items():
                table = table_name(name)
                count, last = con.execute(f'SELECT COUNT(*), MAX(seq) FROM "{table}"').fetchone()
                bound = bounds.get(name)
                if bound is not None and count + len(values) > bound:
                    raise BufferFull(
                        f"{name}: {count} record(s) waiting + {len(values)} to import exceed "
                        f"the buffer's bound of {bound}; nothing was imported"
                    )
                start = (last or 0) + 1
                con.executemany(
                    f'INSERT INTO "{table}" VALUES (?, ?)', enumerate(values, start=start)
                )
                added[name] = len(values)
            con.executemany(
                f"INSERT INTO {BOOTS_TABLE} (key, boot_id, offset_ns) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE"
                " SET offset_ns = COALESCE(offset_ns, excluded.offset_ns)",
                [(records.boot_key(boot_id), boot_id, offset) for boot_id, offset in boots],
            )
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return added
