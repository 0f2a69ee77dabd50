"""Opening the store's file: read what it holds, or move a corrupt one aside and salvage it.

Opening reads every item once (damage ``quick_check`` missed shows here) and
finds, per buffer, its live range (:func:`gateway.buffer.layout.live_range`)
and where its protected records are; the store hands those to each buffer
(:meth:`DiskBuffer.adopt`). A corrupt file goes to
:func:`gateway.buffer.recovery.replace`, and the new file is opened instead.

:class:`StoreFile` is the file itself: its ``diskcache.Cache``, the flock that
keeps imports out, and which file it is (so that one deleted under us is
noticed). Everything here runs on the store's thread.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.buffer import recovery
from gateway.buffer.cachefile import (
    ALERT_STATE_KEY,
    BOOTS_KEY,
    HEADS_KEY,
    SEQ_DIGITS,
    STORE_ERRORS,
    STORE_FILE,
    CorruptItem,
    _create,
    _file_identity,
    _is_corruption,
    hold,
    integrity_check,
    load_json,
    open_cache,
)
from gateway.buffer.chunks import Chunks, decode
from gateway.buffer.layout import Boots, live_range, parse_boots, saved_head
from gateway.config.sections import Durability
from gateway.metrics import RateLimitedLog

log = logging.getLogger("gateway.buffer.store")
_errlog = RateLimitedLog(log, interval=10.0)


@dataclass
class Opened:
    """What opening the file found (on the store's thread, installed in Trio's)."""

    cache: Any
    fd: int  # holds the flock that keeps imports out
    ranges: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)
    protected: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    chunks: dict[str, Chunks] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    boots: Boots = field(default_factory=dict)
    alert_rows: dict[str, str] = field(default_factory=dict)


@dataclass
class Replaced:
    """A corrupt file moved aside: where it is, and what was salvaged from it (None: nothing)."""

    aside: Path
    found: recovery.Salvage | None


def open_store(
    directory: Path,
    durability: Durability,
    bounds: Mapping[str, int],
    markers: Mapping[str, str | None],
) -> tuple[Opened | None, Replaced | None]:
    """Open the file (moving a corrupt one aside); None if the disk refuses.

    Args:
        directory: the buffer directory (created 0700 if missing).
        durability: see :class:`~gateway.buffer.store.BufferStore`.
        bounds: buffer name → its bound, dead-letter queues included.
        markers: buffer name → the marker of its protected records, if any.
    """
    path = directory / STORE_FILE
    replaced = None
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return _open_read(directory, durability, markers), None
        except STORE_ERRORS as exc:
            if not _is_corruption(exc):
                raise
            aside, found = recovery.replace(path, exc, bounds, durability)
            replaced = Replaced(aside, found)
            return _open_read(directory, durability, markers), replaced
    except STORE_ERRORS as exc:
        _errlog.log(
            logging.ERROR,
            "open",
            "buffer store %s cannot be opened (%s): keeping records IN MEMORY ONLY "
            "(bounded) until it can; they are lost if the process dies",
            path,
            exc,
        )
        return None, replaced


def _open_file(directory: Path, durability: Durability, names: list[str]) -> Opened:
    path = directory / STORE_FILE
    if not path.exists():
        _create(path)
    try:
        fd = hold(path, exclusive=False)
    except BlockingIOError:
        raise OSError(errno.EBUSY, "locked by `gateway buffer import`") from None
    try:
        cache = open_cache(directory, durability, names)
    except BaseException:
        os.close(fd)
        raise
    return Opened(cache, fd)


def _open_read(
    directory: Path, durability: Durability, markers: Mapping[str, str | None]
) -> Opened:
    opened = _open_file(directory, durability, list(markers))
    try:
        _read_state(opened, markers)  # every item is read: damage quick_check missed shows here
    except BaseException as exc:
        opened.cache.close()
        os.close(opened.fd)
        if isinstance(exc, ValueError):  # an item or a document that does not decode
            raise CorruptItem(str(exc)) from exc
        raise
    return opened


def _read_state(opened: Opened, markers: Mapping[str, str | None]) -> None:
    cache = opened.cache
    opened.heads = {k: int(v) for k, v in load_json(cache.get(HEADS_KEY), {}).items()}
    opened.chunks = {name: Chunks() for name in markers}
    opened.protected = {name: [] for name in markers}
    # One pass over the keys (diskcache lists no key range): each item once.
    for key in cache.iterkeys():
        if not isinstance(key, str):
            continue
        name, _, digits = key.rpartition("-")
        if name not in markers or len(digits) != SEQ_DIGITS or not digits.isdigit():
            continue
        start = int(digits)
        values = decode(cache.get(key))
        if not values:
            continue
        opened.chunks[name].add(start, len(values))
        marker = markers[name]
        if marker:
            # The drop must know where protected records are.
            head = saved_head(opened.heads, name)
            opened.protected[name] += [
                (seq, v) for seq, v in enumerate(values, start) if marker in v and seq >= head
            ]
    for name, chunks in opened.chunks.items():
        first_item = chunks.starts[0] if chunks else None
        opened.ranges[name] = live_range(first_item, chunks.end, saved_head(opened.heads, name))
    opened.boots = parse_boots(load_json(cache.get(BOOTS_KEY), {}))
    opened.alert_rows = dict(load_json(cache.get(ALERT_STATE_KEY), {}))


class StoreFile:
    """The store's file while it is open, and the corrupt ones it replaced.

    Args:
        directory: the buffer directory.
        durability: see :class:`~gateway.buffer.store.BufferStore`.
        bounds: buffer name → its bound, dead-letter queues included.
        markers: buffer name → the marker of its protected records, if any.
        sinks: the sinks' buffers, whose salvage is counted from 0.
    """

    def __init__(
        self,
        directory: Path,
        durability: Durability,
        bounds: Mapping[str, int],
        markers: Mapping[str, str | None],
        sinks: Iterable[str],
    ) -> None:
        self.directory = directory
        self.path = directory / STORE_FILE
        self.durability = durability
        self._bounds = dict(bounds)
        self._markers = dict(markers)
        self.cache: Any = None  # the diskcache.Cache, None while the file cannot be opened
        self._fd: int | None = None  # holds the flock that keeps imports out
        self._identity: tuple[int, int] | None = None
        self.corrupt_moved: list[Path] = []
        # Records salvaged from corrupt files, and those of their live range lost.
        self.salvaged = dict.fromkeys(sinks, 0)
        self.salvage_lost = dict.fromkeys(self.salvaged, 0)

    def open(self) -> Opened | None:
        """Open the file (moving a corrupt one aside); None if the disk refuses."""
        opened, replaced = open_store(self.directory, self.durability, self._bounds, self._markers)
        if replaced is not None:
            found = replaced.found
            self.corrupt_moved.append(replaced.aside)
            for name in self._bounds:  # dead-letter queues included
                got, lost = (found.count(name), found.lost.get(name, 0)) if found else (0, 0)
                self.salvaged[name] = self.salvaged.get(name, 0) + got
                self.salvage_lost[name] = self.salvage_lost.get(name, 0) + lost
        return opened

    def install(self, opened: Opened) -> None:
        """Use an opened file from now on."""
        self.cache, self._fd = opened.cache, opened.fd
        self._identity = _file_identity(self.path)

    def reopen(self) -> bool:
        """Close the file and open the one the path names now; False if the disk refuses."""
        self.close()
        opened = self.open()
        if opened is not None:
            self.install(opened)
        return opened is not None

    def was_replaced(self) -> bool:
        """True when the path no longer names the file we have open (deleted, replaced).

        SQLite would go on writing to the unlinked file: no error, and the
        whole backlog gone at the next start. One stat per commit finds it.
        """
        return self.cache is not None and _file_identity(self.path) != self._identity

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` of the file ("ok" when healthy)."""
        if self.cache is None:
            return "not open"
        return integrity_check(self.path)

    def close(self) -> None:
        """Close the cache and let go of the flock."""
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
