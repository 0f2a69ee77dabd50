"""DiskBuffer against a model: a bounded deque, through appends, peeks, acks and reopens.

The blocking halves (``_append_sync``, ``_peek_sync``, ``_ack_sync``) are what the
async methods run on a worker thread; driving them directly keeps the state
machine free of an event loop while exercising the same SQLite transactions.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from gateway.buffer import DiskBuffer, Record

MAX_RECORDS = 8


class DiskBufferModel(RuleBasedStateMachine):
    """Every step, the buffer holds exactly what the deque model holds, in order."""

    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.path = self.tmp / "influx"
        self.buffer = DiskBuffer(self.path, max_records=MAX_RECORDS, name="influx")
        self.model: deque[str] = deque()
        self.counter = 0
        self.dropped = 0

    def teardown(self) -> None:
        self.buffer.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _new_values(self, n: int) -> list[str]:
        values = [f"r{self.counter + i}" for i in range(n)]
        self.counter += n
        return values

    @rule(n=st.integers(1, 5))
    def push(self, n: int) -> None:
        values = self._new_values(n)
        count, dropped = self.buffer._append_sync(values)
        self.model.extend(values)
        expected_drop = max(0, len(self.model) - MAX_RECORDS)
        for _ in range(expected_drop):
            self.model.popleft()
        assert dropped == expected_drop
        assert count == len(self.model)

    @rule(n=st.integers(MAX_RECORDS + 1, 3 * MAX_RECORDS))
    def overflow(self, n: int) -> None:
        before = len(self.model)
        values = self._new_values(n)
        count, dropped = self.buffer._append_sync(values)
        assert dropped == before + n - MAX_RECORDS
        self.model = deque(values[-MAX_RECORDS:])
        assert count == MAX_RECORDS

    @rule(target=batches, limit=st.integers(1, MAX_RECORDS + 2))
    def peek(self, limit: int) -> list[Record]:
        batch = self.buffer._peek_sync(limit)
        assert [r.value for r in batch] == list(self.model)[:limit]
        return batch

    @rule(batch=batches, data=st.data())
    def ack(self, batch: list[Record], data: st.DataObject) -> None:
        # Ack all of a batch or a subset of it; the batch may be stale (its
        # records already acked, or dropped by overflow): those are ignored.
        chosen = data.draw(st.lists(st.sampled_from(batch), unique=True)) if batch else []
        count = self.buffer._ack_sync(chosen)
        # Values are unique, so the model can match them by value.
        gone = {r.value for r in chosen}
        self.model = deque(v for v in self.model if v not in gone)
        assert count == len(self.model)

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def ack_oldest(self) -> None:
        batch = self.buffer._peek_sync(1)
        assert self.buffer._ack_sync(batch) == len(self.model) - 1
        self.model.popleft()

    @rule()
    def reopen(self) -> None:
        self.buffer.close()
        self.buffer = DiskBuffer(self.path, max_records=MAX_RECORDS, name="influx")
        assert self.buffer.corrupt_moved == []
        assert self.buffer.count.value == len(self.model)

    @invariant()
    def same_contents(self) -> None:
        assert len(self.buffer._cache) == len(self.model)
        assert [r.value for r in self.buffer.iter_all()] == list(self.model)


TestDiskBufferModel = DiskBufferModel.TestCase
TestDiskBufferModel.settings = settings(max_examples=50, stateful_step_count=30, deadline=None)
