"""Appending records to a store that no gateway has open (``gateway buffer import|resend-dead``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.buffer.cachefile import (
    BOOTS_KEY,
    HEADS_KEY,
    IMPORTS_KEY,
    STORE_FILE,
    _create,
    check_name,
    hold,
    load_json,
    open_cache,
    record_key,
    seq_of,
)
from gateway.buffer.chunks import MAX_ITEM, decode, encode
from gateway.buffer.dirlock import holder
from gateway.buffer.layout import boots_json, first_live, merge_boots, parse_boots, saved_head


class StoreInUse(Exception):
    """Another process (a running gateway) has the store open: it may not be written."""


class BufferFull(Exception):
    """The records to import do not fit in a buffer's bound: importing would drop some."""


class AlreadyImported(Exception):
    """This file's records went into these buffers before: importing again would double them."""


def import_records(
    directory: Path,
    batches: Mapping[str, Sequence[str]],
    *,
    bounds: Mapping[str, int],
    boots: Iterable[tuple[str, int | None]] = (),
    busy_timeout: float = 1.0,
    digest: str | None = None,
    force: bool = False,
) -> dict[str, int]:
    """Append records to the buffers of a store that no process has open, in one transaction.

    For ``gateway buffer import`` and ``resend-dead`` (blocking). A running
    gateway keeps each buffer's sequence numbers in memory: rows written behind
    its back would be overwritten by its next commit, and it would never
    deliver them. So the import takes an exclusive ``flock`` on the file (a
    gateway holds a shared one while it has the store open), waiting
    ``busy_timeout`` for it, and keeps it until the import is done (a gateway
    starting meanwhile holds its records in memory until it can open the file).

    Args:
        directory: the buffer directory (created 0700 when missing).
        batches: buffer name → records in the formats of :mod:`gateway.records`,
            appended after what the buffer holds, in this order.
        bounds: buffer name → its bound (``max_records``): an import never makes
            a buffer drop records.
        boots: (boot id, learned clock offset or None) for the boots the
            records' stamps name; a boot the store already knows keeps its offset.
        busy_timeout: seconds to wait for other connections to close.
        digest: what identifies the file the records come from (its SHA-256);
            the store remembers which buffers each digest went into, in the
            same transaction as the records, so that the same export is not
            imported twice by mistake.
        force: import even if ``digest`` went into one of these buffers before.

    Returns:
        How many records each buffer of ``batches`` received.

    Raises:
        StoreInUse: another process has the store open.
        BufferFull: a buffer would exceed its bound; nothing was written.
        AlreadyImported: ``digest`` went into one of ``batches``' buffers
            before (and not ``force``); nothing was written.
        sqlite3.Error, OSError, diskcache.Timeout: the store cannot be opened or written.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / STORE_FILE
    names = [check_name(name) for name in dict.fromkeys([*bounds, *batches])]
    if not path.exists():
        _create(path)
    fd = _hold_alone(path, busy_timeout)
    try:
        cache = open_cache(directory, "full", names)
        try:
            return _append(cache, batches, bounds, boots, digest, force)
        finally:
            cache.close()
    finally:
        os.close(fd)


def _hold_alone(path: Path, busy_timeout: float) -> int:
    """The exclusive lock on the store, waiting up to ``busy_timeout`` for a gateway to go."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            return hold(path, exclusive=True)
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StoreInUse(
                    f"buffer store {path} is open in another process ({_who(path.parent)}); "
                    "stop it first"
                ) from None
            time.sleep(0.05)


def _who(directory: Path) -> str:
    """Who has the store open, as far as the buffer directory's lock tells."""
    try:
        in_use = holder(directory)
    except OSError:
        in_use = None
    if in_use is None or in_use.pid is None:
        return "a running gateway?"
    return f"a running gateway, pid {in_use.pid}"


def _append(
    cache: Any,
    batches: Mapping[str, Sequence[str]],
    bounds: Mapping[str, int],
    boots: Iterable[tuple[str, int | None]],
    digest: str | None = None,
    force: bool = False,
) -> dict[str, int]:
    c = cache
    added: dict[str, int] = {}
    with c.transact():
        imports = load_json(c.get(IMPORTS_KEY), {})
        if digest is not None:
            before = sorted(set(imports.get(digest, [])) & set(batches))
            if before and not force:
                raise AlreadyImported(
                    f"this file was imported into {', '.join(before)} before: importing it "
                    "again would double its records; nothing was imported (give --force to "
                    "import it again anyway)"
                )
            imports[digest] = sorted({*imports.get(digest, []), *batches})
            c.set(IMPORTS_KEY, json.dumps(imports))
        heads = load_json(c.get(HEADS_KEY), {})
        for name, values in batches.items():
            front, _ = c.peek(prefix=name, side="front")
            back, last_run = c.peek(prefix=name, side="back")
            end = seq_of(back) + len(decode(last_run)) if back is not None else 1
            first = first_live(seq_of(front), saved_head(heads, name)) if front is not None else end
            count = max(0, end - first)
            bound = bounds.get(name)
            if bound is not None and count + len(values) > bound:
                raise BufferFull(
                    f"{name}: {count} record(s) waiting + {len(values)} to import exceed "
                    f"the buffer's bound of {bound}; nothing was imported"
                )
            # Runs of at most MAX_ITEM records, as the store writes them.
            for at in range(0, len(values), MAX_ITEM):
                c.set(record_key(name, end + at), encode(list(values[at : at + MAX_ITEM])))
            added[name] = len(values)
        known = parse_boots(load_json(c.get(BOOTS_KEY), {}))
        merged = merge_boots(
            known, boots, keep_known=True
        )  # a boot the store knows keeps its offset
        if merged != known:
            c.set(BOOTS_KEY, boots_json(merged))
    return added
