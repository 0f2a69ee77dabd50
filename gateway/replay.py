"""``gateway replay``: deliver a capture or an export with its own time, then exit.

It connects with its own client id (``{client_id}-replay``) and publishes
without retain, through the gateway's own sinks over a temporary store (the
format: :mod:`gateway.capture`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import trio
import trio_asyncio

from gateway.buffer import BufferStore, DiskBuffer
from gateway.capture import DEAD_LETTER_FILES, REPLAY_BOOT, SINKS, Capture
from gateway.clock import ClockTracker
from gateway.config import Config
from gateway.config.sections import MqttSection
from gateway.deadletter import DeadLetterFile, DeadLetterMover
from gateway.errors import leaf
from gateway.metrics import Metrics
from gateway.records import (
    StampResolver,
    parse_stamp,
    status_topic,
)
from gateway.sinks import influx, mqtt

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
SHUTDOWN_GRACE = 5.0
# The MQTT sink announces itself retained under {topic_prefix}/gateway/status.
# A replay must not touch the gateway's own presence, so its sink gets this
# prefix instead, and the replay clears what it left there when it is done.
PRESENCE_SUFFIX = "-replay"
_STAMP = re.compile(r"[0-9]+(?:~[0-9a-z]+~[0-9]+)?")
_DIGITS = re.compile(r"[0-9]+")


# -- replay -----------------------------------------------------------------------------


@dataclass
class SinkOutcome:
    """How a replay went for one sink.

    Attributes:
        records: records to deliver.
        left: records not acknowledged when the replay ended.
        dead_letters: records the server refused for good (in the dead-letter dir).
        unsynced: InfluxDB points whose stamp cannot be put right (their boot's
            offset is not in the capture): sent with their best-known time,
            tagged ``clock=unsynced``.
        error: the sink's last error, when it did not finish.
    """

    records: int
    left: int = 0
    dead_letters: int = 0
    unsynced: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        """Every record acknowledged, none refused."""
        return self.left == 0 and self.dead_letters == 0


def unsynced_points(values: Iterable[str], offsets: Mapping[str, int]) -> int:
    """Points whose right time cannot be known: stamped while the clock was wrong, no offset."""
    n = 0
    for value in values:
        stamp = parse_stamp(value.split(" ", 1)[0])
        n += not stamp.synced and stamp.boot not in offsets
    return n


async def _drain(buffer: DiskBuffer, stall_after: float, stop: Callable[[], None]) -> None:
    """Wait until ``buffer`` is empty, or until it made no progress for ``stall_after`` s; stop.

    A bound on progress, not on the whole replay: a long capture over a slow
    link may take far longer than that while records keep being acknowledged,
    but a server that is unreachable ends it after ``stall_after``.
    """
    try:
        while (left := buffer.count.value) > 0:
            with trio.move_on_after(stall_after) as waiting:
                await buffer.count.wait_value(functools.partial(operator.gt, left))
            if waiting.cancelled_caught:
                return
    finally:
        stop()


async def _clear_presence(cfg: MqttSection) -> None:
    """Delete the retained presence the replay's MQTT sink left (an empty retained message)."""

    async def clear() -> None:
        async with mqtt.new_client(cfg, cfg.client_id) as client:
            await client.publish(status_topic(cfg.topic_prefix), b"", qos=1, retain=True)

    try:
        with trio.fail_after(cfg.connect_timeout + mqtt.STATUS_TIMEOUT):
            await trio_asyncio.aio_as_trio(clear)()
    except* (aiomqtt.MqttError, OSError, trio.TooSlowError) as group:
        log.warning(
            "replay: could not clear its presence topic %s (%s)",
            status_topic(cfg.topic_prefix),
            mqtt.describe_error(leaf(group)),
        )


def replay_mqtt_section(cfg: MqttSection) -> MqttSection:
    """``[mqtt]`` as a replay uses it: not retained, its own client id and presence topic.

    History must never become the retained "current" value; a client id of its
    own keeps a running gateway connected (a broker drops the older of two
    sessions with one id).
    """
    return dataclasses.replace(
        cfg,
        retain=False,
        client_id=f"{cfg.client_id}-replay",
        topic_prefix=cfg.topic_prefix + PRESENCE_SUFFIX,
    )


async def replay(
    cfg: Config,
    capture: Capture,
    *,
    stall_after: float = DEFAULT_TIMEOUT,
    dead_letter_dir: Path,
) -> dict[str, SinkOutcome]:
    """Deliver ``capture`` to the broker and the database with the stamps it carries.

    The records go into a temporary store and out through the gateway's own
    sinks, so delivery is what the daemon does (windows, retries, splitting a
    refused batch, dead letters), with these differences: MQTT messages are
    not retained, under a client id of their own (:func:`replay_mqtt_section`);
    InfluxDB points get the time of their stamp, corrected with the capture's
    boot offsets where a stamp was taken while the clock was wrong, else their
    best-known time tagged ``clock=unsynced``; nothing is held for a clock.
    Only sinks with records connect.

    Args:
        cfg: the configuration naming broker, database, tags.
        capture: what to deliver (:func:`read_capture`).
        stall_after: seconds a sink may go without an acknowledgement before
            the replay gives up on it (``--timeout``).
        dead_letter_dir: where records refused for good are written (created
            only when there are some).

    Returns:
        Each sink's outcome (only sinks with records).
    """
    wanted = [s for s in SINKS if capture.records[s]]
    if not wanted:
        return {}
    outcome = {s: SinkOutcome(len(capture.records[s])) for s in wanted}
    mqtt_cfg = replay_mqtt_section(cfg.mqtt)
    # Everything is in the buffer already: waiting for a fuller batch gains nothing.
    influx_cfg = dataclasses.replace(cfg.influxdb, flush_interval=0.0)
    metrics = Metrics()
    offsets = {b.key: b.offset_ns for b in capture.boots}
    # Its boot is no stamp's: only the capture's offsets correct a stamp.
    resolver = StampResolver(ClockTracker("none", boot=REPLAY_BOOT), offsets)
    if "influx" in outcome:
        outcome["influx"].unsynced = unsynced_points(capture.records["influx"], offsets)
    with tempfile.TemporaryDirectory(prefix="gateway-replay-") as tmp:
        # Bounds that hold the whole capture: a replay drops nothing.
        bounds = {s: max(1, len(capture.records[s])) for s in SINKS}
        store = await BufferStore.open(Path(tmp), bounds, durability="normal", ack_delay=0)
        try:
            buffers = store.buffers
            await store.commit({buffers[s]: capture.records[s] for s in wanted})
            sinks: dict[str, mqtt.MqttSink | influx.InfluxSink] = {}
            movers: list[DeadLetterMover] = []
            for name in wanted:
                dead = DeadLetterFile(dead_letter_dir / DEAD_LETTER_FILES[name])
                queue = buffers[name].dead
                assert queue is not None  # every store's buffer has one
                movers.append(DeadLetterMover(queue, dead, metrics.sink(name)))
                if name == "mqtt":
                    sinks[name] = mqtt.MqttSink(
                        mqtt_cfg, buffers[name], metrics, dead, gateway_id=cfg.gateway.id
                    )
                else:
                    sinks[name] = influx.InfluxSink(
                        influx_cfg, buffers[name], metrics, dead, resolver=resolver
                    )
            async with trio_asyncio.open_loop() as loop:
                loop.set_exception_handler(mqtt.asyncio_exception)
                async with trio.open_nursery() as nursery:
                    for name in wanted:
                        await nursery.start(sinks[name].run)
                    async with trio.open_nursery() as drains:
                        for name in wanted:
                            drains.start_soon(_drain, buffers[name], stall_after, sinks[name].stop)
                    # Stopped: the sinks land what is in flight, then return.
                    nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE
                if metrics.mqtt.connects:
                    await _clear_presence(mqtt_cfg)
            for mover in movers:
                # The store is a temporary one: its dead letters go to the file now.
                await mover.flush()
            for name in wanted:
                figures = metrics.sink(name)
                queue = buffers[name].dead
                # Dead letters the file refused are lost with the temporary store: left.
                outcome[name].left = buffers[name].count.value + (queue.count.value if queue else 0)
                outcome[name].dead_letters = figures.dead_letters
                outcome[name].error = sinks[name].last_error
        finally:
            store.close()
    return outcome
