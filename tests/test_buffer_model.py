"""DiskBuffer against a model: a bounded deque, through appends, reads, acks, reopens and crashes.

The model keeps two deques: what a sink may deliver now (``live``) and what a
process starting after a crash would find (``durable``: the state of the last
commit, since acknowledgements reach the disk only with a commit), and how
many of ``live`` the read cursor has handed out (``handed``). A tiny memory
cache makes peeks and reads use both SQLite and memory.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from pathlib import Path

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from gateway.buffer import BufferStore, DiskBuffer, Record
from gateway.buffer import queue as buffer_module

MAX_RECORDS = 8


class DiskBufferModel(RuleBasedStateMachine):
    """Every step, the buffer holds exactly what the model holds, in order."""

    batches = Bundle("batches")

    def __init__(self) -> None:
        super().__init__()
        self.saved_cache = buffer_module.CACHE_RECORDS
        buffer_module.CACHE_RECORDS = 3
        self.tmp = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.buffer = self._open()
        self.live: deque[str] = deque()
        self.durable: deque[str] = deque()
        self.counter = 0
        self.handed = 0  # live records read() handed out: the cursor is that far ahead
        # Sequence numbers restart when a store is opened empty: batches from
        # an earlier opening are never acked (a real sink never keeps one).
        self.epoch = 0

    def _open(self) -> DiskBuffer:
        # A long ack_delay and no flusher: acks reach the disk only with commits.
        store = BufferStore(self.tmp, {"influx": MAX_RECORDS}, ack_delay=3600)
        assert store.corrupt_moved == []
        return store.buffers["influx"]

    def teardown(self) -> None:
        self.buffer.store.close()
        buffer_module.CACHE_RECORDS = self.saved_cache
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _append(self, n: int) -> None:
        values = [f"r{self.counter + i}" for i in range(n)]
        self.counter += n
        dropped = trio.run(self.buffer.append, values)
        self.live.extend(values)
        expected = max(0, len(self.live) - MAX_RECORDS)
        for _ in range(expected):
            self.live.popleft()
        self.handed = max(0, self.handed - expected)  # dropped ones are never handed out
        assert dropped == expected
        self.durable = deque(self.live)

    @rule(n=st.integers(1, 5))
    def push(self, n: int) -> None:
        self._append(n)

    @rule(n=st.integers(MAX_RECORDS + 1, 3 * MAX_RECORDS))
    def overflow(self, n: int) -> None:
        self._append(n)

    @rule(target=batches, limit=st.integers(1, MAX_RECORDS + 2))
    def peek(self, limit: int) -> tuple[int, list[Record]]:
        batch = trio.run(self.buffer.peek, limit)
        assert [r.value for r in batch] == list(self.live)[self.handed : self.handed + limit]
        return self.epoch, batch

    @rule(target=batches, limit=st.integers(1, MAX_RECORDS + 2))
    def read(self, limit: int) -> tuple[int, list[Record]]:
        batch = trio.run(self.buffer.read, limit)
        assert [r.value for r in batch] == list(self.live)[self.handed : self.handed + limit]
        self.handed += len(batch)
        return self.epoch, batch

    @rule()
    def rewind(self) -> None:
        self.buffer.rewind()
        self.handed = 0

    @rule(batch=batches, data=st.data())
    def ack(self, batch: tuple[int, list[Record]], data: st.DataObject) -> None:
        # Ack some records of a batch; acking one acks every older record. The
        # batch may be stale (its records acked already, or dropped).
        epoch, records = batch
        if epoch != self.epoch:
            return
        chosen = data.draw(st.lists(st.sampled_from(records), unique=True)) if records else []
        trio.run(self.buffer.ack, chosen)
        live = list(self.live)
        acked = [i for i, value in enumerate(live) if value in {r.value for r in chosen}]
        if acked:
            self.live = deque(live[max(acked) + 1 :])
            self.handed = max(0, self.handed - (max(acked) + 1))

    @rule()
    def reopen(self) -> None:
        self.buffer.store.close()  # a clean stop writes the pending acks
        self.buffer = self._open()
        self.durable = deque(self.live)
        self.handed = 0
        self.epoch += 1

    @rule()
    def crash(self) -> None:
        store = self.buffer.store
        cache, store.file.cache = store.file.cache, None
        assert cache is not None
        store._thread.call(cache.close)  # kill -9: whatever was not committed stays undone
        self.buffer = self._open()
        self.live = deque(self.durable)
        self.handed = 0
        self.epoch += 1

    @invariant()
    def same_contents(self) -> None:
        assert self.buffer.count.value == len(self.live)
        assert self.buffer.unread.value == len(self.live) - self.handed
        # Everything waiting, handed out or not: rewind, peek, and read the
        # handed-out ones again (the cursor ends where it was).
        self.buffer.rewind()
        everything = trio.run(self.buffer.peek, MAX_RECORDS + 1)
        assert [r.value for r in everything] == list(self.live)
        if self.handed:
            assert len(trio.run(self.buffer.read, self.handed)) == self.handed
        assert self.buffer.unread.value == len(self.live) - self.handed


TestDiskBufferModel = DiskBufferModel.TestCase
TestDiskBufferModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
