"""Salvage of a corrupt store: what can still be read goes into the new one.

SQLite calls a store corrupt when one of its pages is damaged (a bad sector,
a card that wore out, a file overwritten by something else). Usually most of
its pages can still be read, so before the store is replaced, its records are
read back from a copy, two ways, and the union kept:

- SQLite's own recovery, the ``sqlite3`` command-line tool's ``.recover``,
  loaded into a fresh database: it also finds rows whose page no longer hangs
  from the table (``lost_and_found``). It needs the ``sqlite_dbpage`` virtual
  table, which some builds of the library leave out (Debian 12's does); then
  it reads nothing and only the second way counts.
- Item by item through :mod:`sqlite3`: the ``Cache`` table in ``rowid`` order,
  stepping over the range of rows a damaged page holds (see :func:`_scan`).

Each buffer's live records (from its saved head on, see
:mod:`gateway.buffer.chunks`) are then written, oldest first and within the
buffer's bound, into the new store under their own sequence numbers, with
the ``boots`` and ``alert_state`` documents where they are readable. The
store adopts them like any file it opens, before records held in memory.

Everything here is blocking; the store calls it on its own thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.buffer.cachefile import (
    ALERT_STATE_KEY,
    BOOTS_KEY,
    BUFFERS_KEY,
    FORMAT_KEY,
    FORMAT_VERSION,
    HEADS_KEY,
    SEQ_DIGITS,
    StoreFormatError,
    open_cache,
    record_key,
    valid_name,
)
from gateway.buffer.chunks import MAX_ITEM, decode, encode
from gateway.config.sections import Durability

log = logging.getLogger(__name__)

_RAW = 1  # diskcache's MODE_RAW: the value column holds the value itself
# Rows after ``rowid``, in order: where a damaged page stops a scan, it goes on.
_SCAN = "SELECT rowid, key, raw, mode, value FROM Cache WHERE rowid > ? ORDER BY rowid"
_PROBE = "SELECT rowid FROM Cache WHERE rowid > ? ORDER BY rowid LIMIT 1"
_TOP_ROWID = 2**62  # where probing stops when the largest rowid cannot be read
RECOVER_TIMEOUT = 300.0  # seconds ``.recover`` may take before it is given up
# Documents worth carrying over; the others the new store writes itself.
_DOCUMENTS = (BOOTS_KEY, ALERT_STATE_KEY)


@dataclass
class Salvage:
    """What could be read from a corrupt store.

    ``records`` are each buffer's live records, oldest first, the first of
    them numbered ``first``. ``lost`` counts records of the live range that
    could not be read; it can only count what the readable rows bound:

    - records in a gap between two recovered items, and between the saved
      head (the ``heads`` document) and the first recovered item;
    - not records after the last recovered item (nothing says where the
      buffer ended), nor those of lost items at the front when the ``heads``
      document itself is lost or names no head for the buffer.

    Likewise a lost ``heads`` document makes the first item's acknowledged
    records come back (delivered twice, never lost). ``over_bound`` counts the
    oldest records left out to keep each buffer within its bound.
    """

    source: Path
    records: dict[str, list[str]] = field(default_factory=dict)
    first: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    over_bound: dict[str, int] = field(default_factory=dict)
    documents: dict[str, str] = field(default_factory=dict)
    # Whether SQLite's own recovery ran (False: item by item only).
    recovered_by_sqlite: bool = False

    def count(self, name: str) -> int:
        """Records of buffer ``name`` salvaged."""
        return len(self.records.get(name, ()))

    def summary(self) -> str:
        """``mqtt 990 salvaged, 9 lost; influx …`` for a log line."""
        parts = [
            f"{name} {self.count(name)} salvaged, {self.lost.get(name, 0)} lost"
            + (f", {self.over_bound[name]} over the bound" if self.over_bound.get(name) else "")
            for name in self.records
        ]
        return "; ".join(parts) or "no buffer"


def move_aside(path: Path, exc: BaseException) -> Path:
    """Rename a corrupt store (with its WAL and index) to ``buffer.corrupt-<stamp>.db``.

    The file stays for the operator; the caller logs what was salvaged from it.
    """
    stamp = time.strftime("%Y%m%dT%H%M%S")
    n = 0
    while True:
        # A second corruption within the same second gets a name of its own.
        stem = f"buffer.corrupt-{stamp}" + (f"-{n}" if n else "")
        aside = path.parent / f"{stem}.db"
        if not aside.exists():
            break
        n += 1
    log.error(
        "buffer store %s is corrupt (%s); moving it aside to %s, salvaging what can be read "
        "and starting a new one",
        path,
        exc,
        aside,
    )
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    return aside


def replace(
    path: Path, exc: BaseException, bounds: Mapping[str, int], durability: Durability
) -> tuple[Path, Salvage | None]:
    """Move the corrupt store at ``path`` aside and start a new one with what it salvaged.

    Returns:
        Where the corrupt file is now (kept for the operator), and what was
        salvaged from it: None when nothing could be (a store of another
        format, whose records are not this version's, or a copy that failed).

    Raises:
        sqlite3.Error, OSError, diskcache.Timeout: the new store cannot be written.
    """
    aside = move_aside(path, exc)
    if isinstance(exc, StoreFormatError):
        return aside, None
    try:
        found = salvage(aside, list(bounds), bounds=bounds, work_dir=path.parent)
    except (OSError, sqlite3.Error) as err:  # a copy that failed, a recovery's own file
        log.error("buffer store %s: nothing salvaged (%s)", aside, err)
        return aside, None
    with contextlib.closing(open_cache(path.parent, durability, list(bounds))) as cache:
        write_salvage(cache, found)
    log.log(
        logging.ERROR if any(found.lost.values()) else logging.WARNING,
        "buffer store %s: %s (the file is kept; the new store holds what was salvaged)",
        aside,
        found.summary(),
    )
    return aside, found


def salvage(
    path: Path,
    names: Sequence[str] | None = None,
    *,
    bounds: Mapping[str, int] | None = None,
    work_dir: Path | None = None,
) -> Salvage:
    """Read every record of a corrupt store that can still be read, without writing it.

    The file (and its WAL) is copied into a temporary directory under
    ``work_dir`` (the system's when None), and only the copy is read: both
    ways of reading open it for writing.

    Args:
        path: the corrupt store.
        names: the buffers to salvage; None: those the store names or holds.
        bounds: buffer → its bound; the oldest records beyond it are left out.
        work_dir: where the copy is made.

    Raises:
        OSError: the copy could not be made (the file is unreadable, no room).
        sqlite3.Error: the database ``.recover`` wrote could not be read.
    """
    with tempfile.TemporaryDirectory(prefix=".salvage-", dir=work_dir) as tmp:
        copy = Path(tmp) / "copy.db"
        shutil.copyfile(path, copy)
        with contextlib.suppress(FileNotFoundError):
            # The WAL holds the newest commits; the index (-shm) is rebuilt from it.
            shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        rows: dict[str, list[object]] = {}
        by_sqlite = False
        for key, value in _recover(copy, Path(tmp) / "recovered.db"):
            by_sqlite = True
            rows.setdefault(key, []).append(value)
        for key, value in _scan(copy):
            rows.setdefault(key, []).append(value)
    out = _assemble(path, rows, names, bounds or {})
    out.recovered_by_sqlite = by_sqlite
    return out


def write_salvage(cache: Any, found: Salvage) -> None:
    """Write what was salvaged into a new, empty store's ``cache``: one transaction.

    Each buffer's records go in runs of at most ``MAX_ITEM`` under their own
    sequence numbers, so that the first one is the buffer's head (no
    ``heads`` entry needed).
    """
    with cache.transact():
        for name, values in found.records.items():
            first = found.first[name]
            for i in range(0, len(values), MAX_ITEM):
                cache.set(record_key(name, first + i), encode(values[i : i + MAX_ITEM]))
        for key, text in found.documents.items():
            cache.set(key, text)


# -- reading -----------------------------------------------------------------------------


def _recover(copy: Path, out: Path) -> Iterator[tuple[str, object]]:
    """Rows SQLite's ``.recover`` finds, loaded into ``out``: (key, value) of raw items."""
    cli = shutil.which("sqlite3")
    if cli is None:
        log.warning("salvage: no sqlite3 command-line tool; reading item by item only")
        return
    errors = out.with_suffix(".err")
    try:
        with open(errors, "wb") as err:
            dump = subprocess.Popen(
                [cli, str(copy), ".recover"], stdout=subprocess.PIPE, stderr=err
            )
            assert dump.stdout is not None
            try:
                # The loader goes on past a statement that fails (a duplicate key).
                subprocess.run(
                    [cli, str(out)],
                    stdin=dump.stdout,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=RECOVER_TIMEOUT,
                    check=False,
                )
            finally:
                dump.stdout.close()
                dump.kill()
                dump.wait()
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("salvage: sqlite3 .recover failed (%s); reading item by item only", exc)
        return
    if dump.returncode not in (0, -9):
        why = errors.read_text(errors="replace").strip().splitlines()
        log.warning(
            "salvage: sqlite3 .recover failed (%s); reading item by item only",
            # "no such table: sqlite_dbpage": a build without the table it needs.
            " / ".join(why[-2:]) if why else f"exit {dump.returncode}",
        )
    yield from _recovered_rows(out)


def _recovered_rows(db: Path) -> Iterator[tuple[str, object]]:
    """The raw items in what ``.recover`` wrote: the ``Cache`` table and orphaned rows."""
    if not db.exists():
        return
    con = sqlite3.connect(db, isolation_level=None)
    try:
        queries = (
            "SELECT key, raw, mode, value FROM Cache",
            # Rows of pages no longer in the table: fields c0…c11 are Cache's
            # columns (c0, the rowid alias, stored as NULL).
            "SELECT c1, c2, c9, c11 FROM lost_and_found WHERE nfield = 12",
        )
        for sql in queries:
            try:
                found = con.execute(sql).fetchall()
            except sqlite3.Error:
                continue  # no such table: nothing of that kind recovered
            for key, raw, mode, value in found:
                if raw == 1 and mode == _RAW and isinstance(key, str):
                    yield key, value
    finally:
        con.close()


def _scan(copy: Path) -> Iterator[tuple[str, object]]:
    """The ``Cache`` table's raw items, row by row, stepping over damaged pages.

    A full scan stops at the first damaged page. Rows are read in ``rowid``
    order instead; where a read fails, :func:`_past_damage` finds the next
    ``rowid`` that can be reached, so only the rows of the damaged page (or
    of the subtree under a damaged inner page) are missed.
    """
    try:
        con = sqlite3.connect(copy, isolation_level=None)
    except sqlite3.Error as exc:
        log.warning("salvage: %s cannot be opened item by item (%s)", copy.name, exc)
        return
    try:
        try:
            top = con.execute("SELECT max(rowid) FROM Cache").fetchone()[0]
        except sqlite3.Error:
            top = None  # the table's right edge is damaged (or its schema is gone)
        after: int | None = -1
        while after is not None:
            try:
                for rowid, key, raw, mode, value in con.execute(_SCAN, (after,)):
                    after = rowid
                    if raw == 1 and mode == _RAW and isinstance(key, str):
                        yield key, value
                break
            except sqlite3.DatabaseError:
                after = _past_damage(con, after, top if isinstance(top, int) else _TOP_ROWID)
    finally:
        con.close()


def _past_damage(con: sqlite3.Connection, after: int, top: int) -> int | None:
    """Where to go on after a read past ``after`` failed; None: nothing more to read.

    A seek for the first row past ``x`` fails exactly when the page it lands
    on (or one above it) is damaged: the failing ``x`` form one range of
    rowids. Search forward in doubling steps for one that works, then back
    by halving for the first that does.
    """
    try:
        found = con.execute(_PROBE, (after,)).fetchone()
    except sqlite3.DatabaseError:
        found = None
    else:
        # The next row is reachable, so reading that row failed: skip it.
        return None if found is None else int(found[0])
    step = 1
    while True:
        if after + step > top:
            return None
        if _reachable(con, after + step):
            break
        step *= 2
    bad, good = after + step // 2, after + step  # bad failed (or is where it began)
    while good - bad > 1:
        mid = (bad + good) // 2
        if _reachable(con, mid):
            good = mid
        else:
            bad = mid
    return good


def _reachable(con: sqlite3.Connection, after: int) -> bool:
    try:
        con.execute(_PROBE, (after,)).fetchone()
    except sqlite3.DatabaseError:
        return False
    return True


# -- what the rows hold ------------------------------------------------------------------


def _document(candidates: Sequence[object] | None) -> Any:
    """The first candidate that is a JSON document, parsed (None if none is)."""
    for text in candidates or ():
        if isinstance(text, str):
            try:
                return json.loads(text)
            except ValueError:
                continue
    return None


def _assemble(
    path: Path,
    rows: Mapping[str, Sequence[object]],
    names: Sequence[str] | None,
    bounds: Mapping[str, int],
) -> Salvage:
    """Each buffer's live records from the rows found (key → every value read for it)."""
    out = Salvage(path)
    version = next((v for v in rows.get(FORMAT_KEY, ()) if isinstance(v, int)), None)
    if version is not None and version != FORMAT_VERSION:
        log.warning(
            "salvage: %s is of format %s, not %s: nothing salvaged", path, version, FORMAT_VERSION
        )
        return out
    heads_doc = _document(rows.get(HEADS_KEY))
    heads = heads_doc if isinstance(heads_doc, dict) else {}
    items: dict[str, dict[int, list[str]]] = {}
    for key, candidates in rows.items():
        name, _, digits = key.rpartition("-")
        if len(digits) != SEQ_DIGITS or not digits.isdigit() or not valid_name(name):
            continue
        for value in candidates:
            try:
                values = decode(value)
            except ValueError:
                continue  # damaged bytes inside a readable row: try the next copy
            if values:
                items.setdefault(name, {})[int(digits)] = values
                break
    if names is None:
        listed = _document(rows.get(BUFFERS_KEY))
        known = [n for n in listed if valid_name(n)] if isinstance(listed, list) else []
        names = list(dict.fromkeys([*known, *items]))
    for name in names:
        head = heads.get(name)
        head = head if isinstance(head, int) else None
        records: list[str] = []
        lost = 0
        first = expected = None
        for start in sorted(items.get(name, {})):
            values = items[name][start]
            begin = max(start, head or 0, expected or 0)
            if begin >= start + len(values):
                continue  # acknowledged (below the head), or already taken
            if expected is not None:
                lost += begin - expected  # lost items between two read ones
            elif head is not None:
                lost += begin - head  # lost items between the head and the first read one
            if first is None:
                first = begin
            records += values[begin - start :]
            expected = start + len(values)
        over = max(0, len(records) - bounds[name]) if name in bounds else 0
        out.records[name] = records[over:]
        out.first[name] = (first or 0) + over
        out.lost[name] = lost
        if over:
            out.over_bound[name] = over
    for key in _DOCUMENTS:
        doc = _document(rows.get(key))
        if isinstance(doc, dict):
            out.documents[key] = json.dumps(doc)
    return out
