"""The sliding window: send the buffer's records, settle their PUBACKs, read ahead, wait.

One :class:`Window` per sink; :meth:`Window.run` drives one connection. Up to
the connection's window of messages is in flight at all times; as PUBACKs
arrive, the oldest acknowledged run of them is acknowledged in the buffer
(one call per wake-up) and as many new records are sent. Messages go onto
the wire through :class:`~gateway.sinks.mqtt.wire.Wire`, the only user of
aiomqtt's and paho's internals.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import aiomqtt
import trio
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.buffer import DiskBuffer, Record
from gateway.metrics import SinkMetrics
from gateway.sinks.mqtt.properties import refused_letter
from gateway.sinks.mqtt.wire import Landing, Wire

# Messages queued on paho between two looks at the event loop. Small groups
# put the first of a refill on the wire at once and keep the stream smooth
# over a long round trip; while PUBACKs keep arriving the sink is busy rather
# than waiting for the link, and larger groups cost less CPU per message.
# What each measured: bench/results.md (the drain rows).
SEND_GROUP = 8
SEND_GROUP_BUSY = 32

# topic, payload, retain, properties: what a record is published as.
Message = tuple[str, str, bool, Properties | None]
Encode = Callable[[str], Message | None]  # None: the record is no message


class InFlight(Landing):
    """One message sent and not acknowledged yet; stands in for aiomqtt's Event.

    aiomqtt's PUBACK dispatch calls :meth:`set`, in this thread: it only
    notes it and wakes the window, which acknowledges records in order. A
    record that is no message, or that paho refuses, counts as landed at once
    and carries its ``dead`` letter.
    """

    __slots__ = ("acked", "dead", "mid", "record", "refused", "window")

    def __init__(self, record: Record, window: Window) -> None:
        self.record = record
        self.window = window
        self.acked = False
        self.mid: int | None = None
        self.dead: str | None = None
        self.refused: ReasonCode | None = None  # the PUBACK's reason code, if a refusal

    def set(self) -> None:
        self.acked = True
        self.window.wake.set()

    def refuse(self, code: ReasonCode) -> None:
        self.refused = code


class Window:
    """What is in flight, oldest first, the records to send next, and their delivery.

    ``wake`` is set by a PUBACK, by records read ahead and by the store's
    write of acknowledgements; ``hungry`` asks for more records once fewer
    than a window's worth wait in ``ahead``.

    Args:
        buffer: the sink's disk buffer.
        figures: the sink's counters (deliveries, refusals).
        bound: ``mqtt.max_inflight``: read ahead at most this many, and keep
            at most this many that a crash would deliver again.
        qos: the messages' QoS.
        patience: seconds without a single PUBACK, with messages in flight,
            after which the broker counts as hung.
        encode: a record's value → the message to publish (None: it is no message).
        dead_lettered: told of the dead letters that left with an ack.
        stop: set when the sink stops: let what is in flight land, send no more.
    """

    def __init__(
        self,
        buffer: DiskBuffer,
        figures: SinkMetrics,
        *,
        bound: int,
        qos: int,
        patience: float,
        encode: Encode,
        dead_lettered: Callable[[list[str]], None],
        stop: trio.Event,
    ) -> None:
        self.buffer = buffer
        self.figures = figures
        self.bound = bound
        self.qos = qos
        self.patience = patience
        self.encode = encode
        self.dead_lettered = dead_lettered
        self.stop = stop
        self.size = bound  # the current connection's window
        self.generation = 0  # the buffer's numbering the keys belong to (set by run())
        self.slots: deque[InFlight] = deque()
        self.ahead: deque[Record] = deque()
        self.wake = trio.Event()
        self.hungry = trio.Event()
        self.progress_at = 0.0  # trio time of the last PUBACK or of a send into an empty window
        self.last_delivery: float | None = None  # trio time of the last acknowledgement
        # Cancelled by interrupt(): waiting for records costs no extra tasks this way.
        self._idle = trio.CancelScope()

    def interrupt(self) -> None:
        """Wake the window from waiting for records (the sink is stopping)."""
        self._idle.cancel()

    async def run(self, wire: Wire, size: int) -> None:
        """Keep ``size`` messages in flight until stopped; return once they landed."""
        buffer = self.buffer
        # A new connection: whatever the last one had in flight goes again.
        buffer.rewind()
        self.size = size
        self.generation = buffer.generation
        self.slots.clear()
        self.ahead.clear()
        self.wake = trio.Event()
        self.hungry = trio.Event()
        wire.note_refusals()
        try:
            group = SEND_GROUP
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_ahead)
                nursery.start_soon(self._wake_on_sync)
                while True:
                    if self.wake.is_set():
                        self.wake = trio.Event()
                    if buffer.generation != self.generation:
                        # The store renumbered its records (it adopted a file it
                        # could not open before): acks by the old keys would hit
                        # other records. Start over from the head.
                        self._forget(wire)
                        self.generation = buffer.generation
                        buffer.rewind()
                    await self._settle()
                    stopping = self.stop.is_set()
                    if stopping and not self.slots:
                        nursery.cancel_scope.cancel()
                        return
                    room = self._room()
                    if not stopping and room > 0 and self.ahead:
                        with wire.written_at_once():
                            self._send(wire, self._take(min(room, group)))
                        await trio.lowlevel.checkpoint()
                        group = SEND_GROUP_BUSY if self.wake.is_set() else SEND_GROUP
                        continue
                    await self._wait(stopping=stopping)
        finally:
            self._forget(wire)

    def _take(self, n: int) -> list[Record]:
        """Up to ``n`` of the records read ahead, oldest first."""
        ahead = self.ahead
        batch = [ahead.popleft() for _ in range(min(n, len(ahead)))]
        if len(ahead) < self.size:
            self.hungry.set()
        return batch

    def _forget(self, wire: Wire) -> None:
        """Drop what is in flight and read ahead; out of aiomqtt's map (mids are reused)."""
        for slot in self.slots:
            if slot.mid is not None:
                wire.untrack(slot.mid, slot)
        self.slots.clear()
        self.ahead.clear()
        self.hungry.set()

    def _room(self) -> int:
        """How many more messages may be sent now.

        At most the connection's window in flight; and at most
        ``mqtt.max_inflight`` that a crash now would deliver again: those in
        flight plus those acknowledged whose deletion is not on disk yet (the
        store writes them within DRAIN_ACK_DELAY during a drain). That keeps a
        kill -9 or a power cut to at most one window of duplicates. Once the
        deletions waiting use half the slack the connection's window leaves
        (all of it under 3.1.1, where the two are one), the store is asked to
        write them now, before they hold the window back.
        """
        inflight = len(self.slots)
        unsynced = self.buffer.unsynced_acks
        if unsynced and unsynced * 2 >= self.bound - self.size:
            self.buffer.hurry_acks()
        return min(self.size - inflight, self.bound - inflight - unsynced)

    async def _wake_on_sync(self) -> None:
        """Wake the window when the store wrote acknowledgements: room may have come free."""
        unsynced = self.buffer.unsynced
        while True:
            await unsynced.wait_transition(lambda new, old: new < old)
            self.wake.set()

    async def _read_ahead(self) -> None:
        """Keep up to a window of records read and waiting to be sent.

        Reading the buffer can take milliseconds (SQLite on a worker thread,
        waiting for the store's write of the acknowledgements): done here, it
        overlaps with sending instead of leaving the link idle meanwhile.
        """
        buffer = self.buffer
        while True:
            while len(self.ahead) >= self.bound:
                self.hungry = trio.Event()
                await self.hungry.wait()
            await buffer.unread.wait_value(_positive)
            records = await buffer.read(self.bound)
            if records:
                self.ahead.extend(records)
                self.wake.set()

    async def _wait(self, *, stopping: bool) -> None:
        """Sleep until a PUBACK or records to send arrive (or stop, or a hung broker)."""
        if not self.slots:
            if not stopping:
                with trio.CancelScope() as self._idle:
                    await self.wake.wait()
            return
        limit = self.patience
        with trio.move_on_at(self.progress_at + limit) as timer:
            if stopping:
                await self.wake.wait()  # from now on only PUBACKs count
            else:
                with trio.CancelScope() as self._idle:
                    await self.wake.wait()
        if timer.cancelled_caught:
            raise trio.TooSlowError(f"no PUBACK within {limit:g} s")

    def _send(self, wire: Wire, batch: Sequence[Record]) -> None:
        """Queue ``batch`` on paho (written when the caller's ``written_at_once`` ends).

        aiomqtt's publish() costs an asyncio task, an Event and a timer per
        message, plus a trio→asyncio crossing. paho's publish() is
        synchronous and aiomqtt's callbacks run in this thread, so messages
        are queued right here, and aiomqtt's own PUBACK dispatch calls each
        one's :meth:`InFlight.set`.
        """
        qos, encode, publish, track = self.qos, self.encode, wire.publish, wire.track
        slots = self.slots
        if not slots:
            self.progress_at = trio.current_time()
        for record in batch:
            slot = InFlight(record, self)
            slots.append(slot)
            message = encode(record.value)
            if message is None:
                slot.dead = record.value  # not a message at all
                slot.acked = True
                continue
            topic, payload, retained, properties = message
            try:
                info = publish(topic, payload, qos, retained, properties)
            except ValueError as exc:  # paho's verdict on the message itself
                slot.dead = f"{topic} {payload} ({exc})"
                slot.acked = True
                continue
            if info.rc != 0:
                raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
            if info.is_published():
                slot.acked = True
            else:
                # PUBACKs are read in this thread, so none can arrive before this.
                slot.mid = info.mid
                track(info.mid, slot)

    async def _settle(self) -> None:
        """Acknowledge the oldest run of landed messages: one buffer call, not one each."""
        slots = self.slots
        if not slots or not slots[0].acked:
            return
        newest = slots[0]
        landed: list[InFlight] = []
        dead: list[str] = []
        while slots and slots[0].acked:
            newest = slots.popleft()
            landed.append(newest)
            if newest.refused is not None:
                newest.dead = refused_letter(newest.record.value, newest.refused)
                self.figures.refused.inc(f"0x{newest.refused.value:02x}")
            if newest.dead is not None:
                dead.append(newest.dead)
        self.progress_at = trio.current_time()
        buffer = self.buffer
        if buffer.generation != self.generation:
            return  # renumbered meanwhile: run() starts over, nothing is acked
        # Records the bound dropped while in flight (below the head now) count
        # as dropped, not as published.
        head = buffer.head
        published = sum(1 for slot in landed if slot.dead is None and slot.record.key >= head)
        # Dead letters leave with the ack, into the store's dead-letter queue:
        # one transaction, so a crash can repeat them but never lose them.
        # Records read ahead and not sent yet make it a drain: its acks are
        # written soon, or _room would wait for ack_delay.
        await buffer.ack([newest.record], dead=dead, more=bool(self.ahead))
        if dead:
            self.dead_lettered(dead)
        self.figures.note_delivery(published, buffer.count.value)
        self.last_delivery = trio.current_time()


def _positive(n: int) -> bool:
    return n > 0
