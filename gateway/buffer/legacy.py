"""Buffers written by earlier versions: read once, then written in today's format."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)


def upgrade(con: sqlite3.Connection, version: int) -> None:
    """Rewrite the records of an older format in place (inside the open transaction).

    Format 1 stored a point as ``<line protocol> <ns>``; format 2 stores the
    stamp first and adds the timestamp when the point is sent. Format 1
    records always had a right clock: their stamp is the plain time.
    """
    if (
        version == 1
        and con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'influx'"
        ).fetchone()
    ):
        rows = con.execute("SELECT seq, value FROM influx").fetchall()
        upgraded = []
        for seq, value in rows:
            body, _, ns = value.rpartition(" ")
            if body and ns.isdigit():
                upgraded.append((f"{ns} {body}", seq))
        con.executemany("UPDATE influx SET value = ? WHERE seq = ?", upgraded)
        log.warning("buffer store: %d point(s) of format 1 rewritten as format 2", len(upgraded))


def import_diskcache(directory: Path) -> list[str]:
    """The records of a buffer written by the earlier diskcache format, oldest first."""
    import diskcache  # only for buffers written by earlier versions

    with diskcache.Cache(str(directory), eviction_policy="none", size_limit=2**62) as cache:
        keys = sorted(k for k in cache.iterkeys() if isinstance(k, int))
        values = [cache.get(k) for k in keys]
    return [v for v in values if isinstance(v, str)]
