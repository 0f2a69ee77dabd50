"""What a store's documents mean, for every module that reads or writes them.

The store (:mod:`gateway.buffer.store`), the read-only reader
(:mod:`gateway.buffer.reader`) and the importer (:mod:`gateway.buffer.importer`)
all need the same answers: where a buffer's live records begin (an item may
start below the saved head: its first records are acknowledged), how a boot
learned or imported merges into the ``boots`` document, and how alert-state
changes apply to the ``alert_state`` document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.clock import boot_key

Boots = dict[str, tuple[str, int | None]]  # boot key → (boot id, learned offset or None)


def saved_head(heads: Mapping[str, Any], name: str) -> int:
    """The head the ``heads`` document saved for ``name`` (0: none saved)."""
    return int(heads.get(name, 0))


def first_live(first_item: int, head: int) -> int:
    """The first live record of a buffer whose oldest item starts at ``first_item``."""
    return max(first_item, head)


def live_range(first_item: int | None, end: int, head: int) -> tuple[int | None, int | None]:
    """The live records ``(first, last)`` of items from ``first_item`` up to ``end``, or Nones."""
    if first_item is None:
        return None, None
    first, last = first_live(first_item, head), end - 1
    if first > last:
        return None, None
    return first, last


def parse_boots(document: Mapping[str, Any]) -> Boots:
    """The ``boots`` document as key → (boot id, offset or None)."""
    return {key: (str(boot_id), offset) for key, (boot_id, offset) in document.items()}


def boots_json(boots: Boots) -> str:
    """The ``boots`` document's text."""
    return json.dumps({key: [boot_id, offset] for key, (boot_id, offset) in boots.items()})


def merge_boots(
    known: Boots, boots: Iterable[tuple[str, int | None]], *, keep_known: bool
) -> Boots:
    """``known`` with ``boots`` (boot id, learned offset or None) merged in.

    A boot never loses an offset it learned to None. Otherwise ``keep_known``
    (an import: the store's own knowledge wins) keeps the offset the store
    has; without it (the running gateway's boot learned it) the new one wins.
    """
    merged = dict(known)
    for boot_id, offset in boots:
        key = boot_key(boot_id)
        old = merged.get(key)
        if old is None:
            merged[key] = (boot_id, offset)
        elif keep_known:
            merged[key] = (old[0], old[1] if old[1] is not None else offset)
        else:
            keep = offset is None and old[0] == boot_id
            merged[key] = (boot_id, old[1] if keep else offset)
    return merged


def apply_state(rows: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    """The ``alert_state`` rows after ``changes`` (key → text, None: delete)."""
    out = dict(rows)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out
