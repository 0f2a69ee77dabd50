"""The store's write path: what a write takes from each buffer, and the transaction itself.

A write takes, per buffer, the ledger's plan (delete below the head, write up
to the tail) with the rows its buffer holds in memory
(:meth:`DiskBuffer.unwritten`), and commits all of them in one
``Cache.transact()``. :class:`FileIndex` is what the file holds as last
written (each buffer's items, the ``heads`` document, the boots and the alert
state), so that neither a write nor a read has to list the file's keys.

Everything here but :func:`plan` runs on the store's thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.buffer.cachefile import ALERT_STATE_KEY, BOOTS_KEY, HEADS_KEY, record_key
from gateway.buffer.chunks import MAX_ITEM, Chunks, decode, encode
from gateway.buffer.layout import Boots, apply_state, boots_json, merge_boots
from gateway.buffer.ledger import WritePlan
from gateway.buffer.queue import DiskBuffer, Record


@dataclass(frozen=True, slots=True)
class Step:
    """One buffer's part of a write: its ledger's plan and the rows to write."""

    buf: DiskBuffer
    write: WritePlan
    rows: list[tuple[int, str]]


Plan = list[Step]


def plan(buffers: Iterable[DiskBuffer], *, due_by: float | None, write_delay: float) -> Plan:
    """What is not yet on disk, buffer by buffer.

    ``due_by`` (:meth:`BufferStore.run`'s writes, with write-behind): a
    buffer's records only once they are due by then
    (:meth:`DiskBuffer.records_due`); its deletions always. A write made for
    acks alone must not write records that would be acknowledged in time:
    each of them would cost a deletion, written alone, and that write would
    take the next records along, and so on, once a second for ever.
    """
    buffers = list(buffers)
    for buf in buffers:
        buf.ledger.settle()
    out: Plan = []
    for buf in buffers:
        if not buf.pending():
            continue
        if due_by is not None:
            due = buf.records_due(write_delay)
            if due is None or due > due_by:
                if buf.ledger.deletes_pending():
                    out.append(Step(buf, buf.ledger.plan(records=False), []))
                continue
        out.append(Step(buf, buf.ledger.plan(), buf.unwritten()))
    return out


class FileIndex:
    """What the store's file holds besides the records' text, as last written."""

    def __init__(self, names: Iterable[str]) -> None:
        self.chunks: dict[str, Chunks] = {name: Chunks() for name in names}
        self.heads: dict[str, int] = {}
        self.boots: Boots = {}
        self.alert_rows: dict[str, str] = {}
        self._decoded: tuple[str, int, list[str]] | None = None  # the last item read

    def take(
        self,
        chunks: dict[str, Chunks],
        heads: dict[str, int],
        boots: Boots,
        alert_rows: dict[str, str],
    ) -> None:
        """What opening a file found."""
        self.chunks, self.heads, self.boots, self.alert_rows = chunks, heads, boots, alert_rows
        self._decoded = None

    def forget_records(self) -> None:
        """The file is gone: none of its items exists any more (boots and alerts are kept)."""
        self.chunks = {name: Chunks() for name in self.chunks}
        self.heads = {}
        self._decoded = None

    def save_boot(self, cache: Any, boot_id: str, offset_ns: int | None) -> None:
        """Remember a boot and the offset it learned (written once per boot and offset)."""
        boots = merge_boots(self.boots, [(boot_id, offset_ns)], keep_known=False)
        if boots != self.boots:
            if cache is not None:
                cache.set(BOOTS_KEY, boots_json(boots))
            self.boots = boots

    def write_documents(self, cache: Any) -> None:
        """A new file: the boots and the alert state as last written to the old one."""
        cache.set(BOOTS_KEY, boots_json(self.boots))
        cache.set(ALERT_STATE_KEY, json.dumps(self.alert_rows))

    def read(self, cache: Any, name: str, start: int, end: int) -> list[Record]:
        """Records ``start <= seq < end`` of buffer ``name``."""
        out = []
        for item in list(self.chunks[name].overlapping(start, end)):
            # A sink reads on where its last read ended: often in the same item.
            if self._decoded is not None and self._decoded[:2] == (name, item):
                values = self._decoded[2]
            else:
                values = decode(cache.get(record_key(name, item)))
                self._decoded = (name, item, values)
            for seq in range(max(start, item), min(end, item + len(values))):
                out.append(Record(seq, values[seq - item]))
        return out

    def write(self, cache: Any, plan: Plan, state: Mapping[str, str | None] | None) -> None:
        """One transaction: each buffer's deletions and rows, the alert state."""
        rows_after = apply_state(self.alert_rows, state or {})
        heads = dict(self.heads)
        # The index changes only once the transaction is committed.
        removed: list[tuple[str, int]] = []
        added: list[tuple[str, int, int]] = []
        with cache.transact():
            for step in plan:
                name = step.buf.name
                gone, new, inside = _write_buffer(cache, name, self.chunks[name], step)
                removed += [(name, start) for start in gone]
                added += [(name, start, count) for start, count in new]
                if inside:
                    heads[name] = step.write.head  # the first live record is inside an item
                else:
                    heads.pop(name, None)
            if heads != self.heads:
                cache.set(HEADS_KEY, json.dumps(heads))
            if state:
                cache.set(ALERT_STATE_KEY, json.dumps(rows_after))
        for name, start in removed:
            self.chunks[name].remove(start)
        for name, start, count in added:
            self.chunks[name].add(start, count)
        self.heads = heads
        self._decoded = None
        self.alert_rows = rows_after
        for step in plan:
            step.buf.ledger.written(step.write)


def _write_buffer(
    cache: Any, name: str, chunks: Chunks, step: Step
) -> tuple[list[int], list[tuple[int, int]], bool]:
    """One buffer's part of a transaction: (items deleted, items added, head inside an item)."""
    head = step.write.head
    gone = chunks.below(head)  # every record in them acknowledged
    for start in gone:
        cache.delete(record_key(name, start))
    end = chunks.end
    # Rows inside items on disk: protected records moved into their slots.
    rewrites: dict[int, dict[int, str]] = {}
    new: list[tuple[int, str]] = []
    for seq, value in step.rows:
        item = chunks.containing(seq) if seq < end else None
        if item is None:
            new.append((seq, value))
        else:
            rewrites.setdefault(item, {})[seq - item] = value
    for item, slots in rewrites.items():
        values = decode(cache.get(record_key(name, item)))
        for offset, value in slots.items():
            if offset < len(values):
                values[offset] = value
        cache.set(record_key(name, item), encode(values))
    added: list[tuple[int, int]] = []
    for start, values in _runs(sorted(new)):
        cache.set(record_key(name, start), encode(values))
        added.append((start, len(values)))
    live = [s for s in chunks.starts if s not in gone] + [start for start, _ in added]
    return gone, added, bool(live) and min(live) < head


def _runs(rows: list[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Sorted rows as items: runs of consecutive sequence numbers, MAX_ITEM at most."""
    runs: list[tuple[int, list[str]]] = []
    for seq, value in rows:
        if runs and runs[-1][0] + len(runs[-1][1]) == seq and len(runs[-1][1]) < MAX_ITEM:
            runs[-1][1].append(value)
        else:
            runs.append((seq, [value]))
    return runs
