"""gateway.sinks.influx and the point format of gateway.records.

Points, error classification against a real HTTP server of our own, dead
letters, splitting, retries, and batch timing under a virtual clock."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from gateway.buffer import DiskBuffer, open_buffer
from gateway.clock import ClockTracker, SyncVerdict
from gateway.config.sections import InfluxSection
from gateway.deadletter import DeadLetterFile, DeadLetterMover
from gateway.errors import InfluxWriteError
from gateway.metrics import Metrics
from gateway.records import (
    StampResolver,
    packet_points,
    point_line,
    point_time_ns,
    split_point,
    stamp_text,
    tag_suffix,
)
from gateway.sinks.influx import DEAD_LETTER_FILE, InfluxSink, InfluxWriter, classify
from gateway.telemetry import parse_line
from tests.support import DESIGN_EXAMPLE, HttpRequest, HttpResponse, StubHttp, json_response

RECEIVED_NS = 1795773905582000000
EXAMPLE = DESIGN_EXAMPLE

# -- points -------------------------------------------------------------------------


def example_points(static_tags: str = "") -> list[str]:
    parsed = parse_line(EXAMPLE, RECEIVED_NS)
    assert parsed is not None
    assert parsed.packet is not None
    records = packet_points(parsed.packet, static_tags, str(RECEIVED_NS))
    return [point_line(split_point(r)[1], split_point(r)[0].wall_ns) for r in records]


def records_of(lines: list[str]) -> list[str]:
    """The buffer records of line-protocol points (clock right: the stamp is the time)."""
    out = []
    for line in lines:
        body, ns = line.rsplit(" ", 1)
        out.append(f"{ns} {body}")
    return out


def test_packet_points_of_the_design_example() -> None:
    ns = RECEIVED_NS
    assert example_points() == [
        f"temperature,node=node1,unit=celsius value=26.7 {ns}",
        f"humidity,node=node1,unit=percent value=55.4 {ns}",
        f"gas_resistance,node=node1,unit=ohms value=101169.0 {ns}",
        f"temperature,node=node2,unit=celsius value=24.3 {ns}",
        f"pressure,node=node2,unit=hpa value=1013.25 {ns}",
        f"rssi,node=signal,unit=dbm value=-33.0 {ns}",
        f"snr,node=signal,unit=db value=13.0 {ns}",
        f"packets_received,node=stats value=42.0 {ns}",
        f"crc_errors,node=stats value=0.0 {ns}",
    ]
    assert (
        example_points()[0] == "temperature,node=node1,unit=celsius value=26.7 1795773905582000000"
    )
    assert all(point_time_ns(r) == ns for r in records_of(example_points()))


def test_static_tags_are_sorted_and_escaped() -> None:
    suffix = tag_suffix({"site": "north field", "rack": "a,b=c\\d", "empty": ""})
    assert suffix == ",rack=a\\,b\\=c\\\\d,site=north\\ field"
    assert example_points(suffix)[0] == (
        "temperature,node=node1,unit=celsius,rack=a\\,b\\=c\\\\d,site=north\\ field "
        f"value=26.7 {RECEIVED_NS}"
    )
    assert tag_suffix({}) == ""


# -- a small InfluxDB of our own: answers what the test scripts --------------------


@dataclass
class Request:
    path: str  # with the query
    lines: list[str]
    status: int


class FakeInflux:
    """InfluxDB's write endpoint on a :class:`StubHttp`; ``respond(lines)`` picks each answer."""

    def __init__(self) -> None:
        self.respond: Callable[[list[str]], tuple[int, dict[str, str]]] = lambda lines: (204, {})
        self.http = StubHttp({"/api/v2/write": self._write})
        self.url = self.http.url

    def _write(self, request: HttpRequest) -> HttpResponse:
        status, headers = self.respond(request.lines)
        return json_response(
            status, None if status == 204 else {"code": "x", "message": "m"}, headers
        )

    @property
    def log(self) -> list[Request]:
        return [Request(r.target, r.lines, status) for r, status in self.http.log]

    def accepted(self) -> list[str]:
        return [line for r in self.log if 200 <= r.status < 300 for line in r.lines]


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    fake = FakeInflux()
    yield fake
    fake.http.close()


def section(url: str, **kwargs: object) -> InfluxSection:
    defaults: dict[str, object] = {
        "url": url,
        "org": "test-org",
        "bucket": "test-bucket",
        "token": "test-token",
        "timeout": 5.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
    }
    defaults.update(kwargs)
    return InfluxSection(**defaults)  # type: ignore[arg-type]


def write_error(url: str, lines: Sequence[str]) -> InfluxWriteError:
    writer = InfluxWriter(section(url))
    try:
        with pytest.raises(InfluxWriteError) as info:
            writer.write(lines)
    finally:
        writer.close()
    return info.value


def test_successful_write_reaches_the_server(influx: FakeInflux) -> None:
    writer = InfluxWriter(section(influx.url))
    writer.write(example_points())
    writer.close()
    assert len(influx.log) == 1
    assert influx.log[0].path.startswith("/api/v2/write?")
    assert "bucket=test-bucket" in influx.log[0].path
    assert "precision=ns" in influx.log[0].path
    assert influx.accepted() == example_points()


@pytest.mark.parametrize(
    ("status", "retryable", "split"),
    [
        (400, False, True),
        (401, True, False),
        (403, True, False),
        (404, True, False),
        (413, True, True),
        (422, False, True),
        (500, True, False),
        (503, True, False),
    ],
)
def test_http_errors_are_classified(
    influx: FakeInflux, status: int, retryable: bool, split: bool
) -> None:
    influx.respond = lambda lines: (status, {})
    err = write_error(influx.url, example_points()[:2])
    assert err.status == status
    assert err.retryable is retryable
    assert err.split is split
    assert err.retry_after is None
    # One request: the client itself must not retry behind our backoff.
    assert len(influx.log) == 1


def test_429_honours_retry_after(influx: FakeInflux) -> None:
    influx.respond = lambda lines: (429, {"Retry-After": "7"})
    err = write_error(influx.url, example_points()[:1])
    assert err.status == 429
    assert err.retryable is True
    assert err.split is False
    assert err.retry_after == 7.0


@pytest.mark.parametrize(("status", "hint"), [(401, "token"), (404, "bucket")])
def test_config_problems_say_what_to_check(influx: FakeInflux, status: int, hint: str) -> None:
    influx.respond = lambda lines: (status, {})
    assert hint in str(write_error(influx.url, example_points()[:1]))


def test_refused_port_is_a_retryable_network_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The socket is closed: nothing listens on the port any more.
    err = write_error(f"http://127.0.0.1:{port}", example_points()[:1])
    assert err.status is None
    assert err.retryable is True
    assert err.split is False
    assert "network" in str(err)


def test_classify_passes_our_errors_through_and_never_retries_a_bug() -> None:
    ours = InfluxWriteError("x", status=400, retryable=False)
    assert classify(ours) is ours
    assert classify(ConnectionResetError("reset")).retryable is True
    # A bug of ours is not a server's doing: it is raised, not retried for ever.
    bug = RuntimeError("boom")
    with pytest.raises(RuntimeError) as raised:
        classify(bug)
    assert raised.value is bug


async def test_a_bug_in_the_writer_ends_the_sink(tmp_path: Path) -> None:
    class BrokenWriter:
        def write(self, lines: Sequence[str]) -> None:
            raise TypeError("a bug")

        def close(self) -> None:
            pass

        def abort(self) -> None:
            pass

    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    await buffer.append(records_of(example_points()))
    sink = InfluxSink(
        section("http://127.0.0.1:9", batch_size=1),
        buffer,
        Metrics(),
        DeadLetterFile(tmp_path / "dead" / DEAD_LETTER_FILE),
        writer=BrokenWriter(),  # type: ignore[arg-type]
    )
    with pytest.raises(ExceptionGroup) as raised, trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
    buffer.store.close()
    assert raised.group_contains(TypeError, match="a bug")


async def test_dead_letters_on_a_disk_that_refuses_stay_in_the_store(
    influx: FakeInflux, tmp_path: Path
) -> None:
    """A point rejected for good while the dead-letter directory cannot be made."""
    influx.respond = lambda lines: (400, {})
    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    metrics = Metrics()
    await buffer.append(records_of(example_points()[:3]))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the dead-letter directory should be")
    dead = DeadLetterFile(blocker / "dead-letter" / DEAD_LETTER_FILE)
    sink = InfluxSink(section(influx.url, batch_size=3), buffer, metrics, dead)
    assert buffer.dead is not None
    mover = DeadLetterMover(buffer.dead, dead, metrics.influx, retry_interval=0.05)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            await nursery.start(mover.run)
            await buffer.count.wait_value(0)
            # A figure, with no event to wait on: the mover tried, and was refused.
            while metrics.influx.dead_letters_waiting < 3:  # noqa: ASYNC110
                await trio.sleep(0.01)
            # Out of the sink's queue, but durable in the store's dead-letter queue.
            assert buffer.dead.count.value == 3
            blocker.unlink()  # the directory can be made again: they move
            await buffer.dead.count.wait_value(0)
            sink.stop()
            nursery.cancel_scope.cancel()
    buffer.store.close()
    lines = (blocker / "dead-letter" / DEAD_LETTER_FILE).read_text().splitlines()
    assert len(lines) == 3
    assert metrics.influx.dead_letters == 3
    assert metrics.influx.dead_letters_waiting == 0
    assert dead.write_errors >= 1
    assert metrics.influx.errors.get("400") >= 1  # 400s are counted as write errors


# -- InfluxSink against the fake server -----------------------------------------------


async def run_sink_until_drained(
    cfg: InfluxSection, buffer: DiskBuffer, metrics: Metrics, dead_dir: Path
) -> InfluxSink:
    dead = DeadLetterFile(dead_dir / DEAD_LETTER_FILE)
    sink = InfluxSink(cfg, buffer, metrics, dead)
    assert buffer.dead is not None
    mover = DeadLetterMover(buffer.dead, dead, metrics.influx)
    with trio.fail_after(30):
        async with trio.open_nursery() as movers:
            await movers.start(mover.run)
            async with trio.open_nursery() as sinks:
                await sinks.start(sink.run)
                await buffer.count.wait_value(0)
                await buffer.dead.count.wait_value(0)
                # The count reaches 0 inside the last ack: let the sink finish
                # that ack (and count it) and return by itself, not cancelled.
                sink.stop()
            movers.cancel_scope.cancel()
    return sink


async def test_bad_point_goes_to_dead_letter_the_rest_is_written(
    influx: FakeInflux, tmp_path: Path
) -> None:
    points = [f"temperature,node=n{i} value={i}.5 {RECEIVED_NS + i}" for i in range(10)]
    marker = points[6]
    influx.respond = lambda lines: (400, {}) if marker in lines else (204, {})
    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    metrics = Metrics()
    await buffer.append(records_of(points))
    cfg = section(influx.url, batch_size=10, flush_interval=0.05)
    await run_sink_until_drained(cfg, buffer, metrics, tmp_path / "dead-letter")
    buffer.store.close()

    accepted = influx.accepted()
    assert sorted(accepted) == sorted(p for p in points if p != marker)
    assert len(accepted) == 9  # each good point written exactly once
    dead = (tmp_path / "dead-letter" / DEAD_LETTER_FILE).read_text().splitlines()
    assert dead == [marker]
    assert metrics.influx.dead_letters == 1
    assert metrics.influx.delivered == 9


async def test_too_large_requests_are_split_until_accepted(
    influx: FakeInflux, tmp_path: Path
) -> None:
    points = [f"pressure,node=n{i} value=1000.{i} {RECEIVED_NS + i}" for i in range(10)]
    influx.respond = lambda lines: (413, {}) if len(lines) > 4 else (204, {})
    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    metrics = Metrics()
    await buffer.append(records_of(points))
    await run_sink_until_drained(section(influx.url), buffer, metrics, tmp_path / "dead")
    buffer.store.close()

    assert influx.accepted() == points  # all of them, in order, once
    assert all(len(r.lines) <= 4 for r in influx.log if r.status == 204)
    assert not (tmp_path / "dead" / DEAD_LETTER_FILE).exists()
    assert metrics.influx.dead_letters == 0


async def test_unavailable_then_available_loses_nothing(influx: FakeInflux, tmp_path: Path) -> None:
    points = [f"rssi,node=signal value=-{i}.0 {RECEIVED_NS + i}" for i in range(10)]
    answers = iter([503, 503])
    influx.respond = lambda lines: (next(answers, 204), {})
    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    metrics = Metrics()
    await buffer.append(records_of(points))
    sink = await run_sink_until_drained(section(influx.url), buffer, metrics, tmp_path / "dead")
    buffer.store.close()

    assert [r.status for r in influx.log] == [503, 503, 204]
    assert influx.log[-1].lines == points
    assert influx.accepted() == points
    assert metrics.influx.errors.get("503") == 2
    assert sink.healthy is True
    assert sink.last_error == ""


# -- batching, in virtual time ----------------------------------------------------------
#
# The sink runs writer.write and the buffer's SQLite work on worker threads. The
# autojump clock jumps as soon as every task is blocked, and a task waiting for a
# thread counts as blocked: so these tests never leave a timer of their own
# pending while a thread runs (they wait on events, not sleeps), hold the clock
# (autojump_threshold = inf) around a thread call made while the sink's own timer
# is pending, and the fake writer reads the virtual clock through trio.from_thread.


class RecordingWriter:
    """A writer that accepts instantly and notes the virtual time of each write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, list[str]]] = []
        self.closed = False
        self.wrote = trio.Event()

    def write(self, lines: Sequence[str]) -> None:
        now = trio.from_thread.run_sync(trio.current_time)
        self.writes.append((now, list(lines)))
        trio.from_thread.run_sync(self.wrote.set)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def points(n: int, start: int = 0) -> list[str]:
    return [f"snr,node=signal value={i}.0 {RECEIVED_NS + i}" for i in range(start, start + n)]


async def start_sink(
    nursery: trio.Nursery, tmp_path: Path, writer: RecordingWriter, **cfg: object
) -> tuple[InfluxSink, DiskBuffer]:
    buffer = await open_buffer(tmp_path / "influx", max_records=1000)
    sink = InfluxSink(
        section("http://127.0.0.1:9", **cfg),
        buffer,
        Metrics(),
        DeadLetterFile(tmp_path / "dead" / DEAD_LETTER_FILE),
        writer=writer,  # type: ignore[arg-type]
    )
    await nursery.start(sink.run)
    return sink, buffer


async def test_partial_batch_waits_exactly_flush_interval(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    writer = RecordingWriter()
    async with trio.open_nursery() as nursery:
        sink, buffer = await start_sink(
            nursery, tmp_path, writer, batch_size=10, flush_interval=2.5
        )
        await trio.sleep(100.0)  # nothing waiting: nothing written
        assert writer.writes == []
        arrived = trio.current_time()
        await buffer.append(records_of(points(3)))
        await writer.wrote.wait()
        await buffer.count.wait_value(0)
        sink.stop()
    assert writer.writes == [(arrived + 2.5, points(3))]
    assert writer.closed


async def test_full_batch_is_written_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    writer = RecordingWriter()
    async with trio.open_nursery() as nursery:
        sink, buffer = await start_sink(
            nursery, tmp_path, writer, batch_size=10, flush_interval=2.5
        )
        await trio.sleep(1.0)
        arrived = trio.current_time()
        await buffer.append(records_of(points(10)))
        await writer.wrote.wait()
        await buffer.count.wait_value(0)
        sink.stop()
    assert writer.writes == [(arrived, points(10))]


async def test_batch_fills_up_while_waiting(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    writer = RecordingWriter()
    async with trio.open_nursery() as nursery:
        sink, buffer = await start_sink(
            nursery, tmp_path, writer, batch_size=10, flush_interval=2.5
        )
        first = trio.current_time()
        await buffer.append(records_of(points(4)))
        await trio.sleep(1.0)
        assert writer.writes == []
        # The sink's flush_interval timer is pending now: hold the clock while
        # the append's thread runs, or autojump would fire the timer meanwhile.
        autojump_clock.autojump_threshold = math.inf
        await buffer.append(records_of(points(6, start=4)))
        autojump_clock.autojump_threshold = 0
        await writer.wrote.wait()
        await buffer.count.wait_value(0)
        sink.stop()
    assert writer.writes == [(first + 1.0, points(10))]


# -- holding points while the clock is not known right ---------------------------------

TRUE_OFFSET = 1_795_000_000 * 10**9  # wall − boottime once the clock is right


class FakeClock:
    """A ClockTracker on made-up clocks: the box booted with its wall clock at 1970."""

    def __init__(self, boot: str = "11111111-2222-3333-4444-555555555555") -> None:
        self.boottime = 10**9
        self.right = False
        self.tracker = ClockTracker(
            "auto",
            boot=boot,
            wall=self.wall,
            boottime=lambda: self.boottime,
            check=lambda: SyncVerdict(self.right, "made up for the test"),
        )
        self.tracker.refresh()

    def wall(self) -> int:
        return self.boottime + (TRUE_OFFSET if self.right else 0)

    def records(self, n: int) -> tuple[list[str], list[int]]:
        """n readings 1 s apart: their records and their true times."""
        out, truth = [], []
        for i in range(n):
            self.boottime += 10**9
            stamp = self.tracker.stamp()
            out.append(f"{stamp_text(stamp)} snr,node=signal value={i}.0")
            truth.append(self.boottime + TRUE_OFFSET)
        return out, truth


WAIT_LIMIT_S = 20.0
# Nothing may be written in this window while the sink holds its points.
HOLD_OBSERVE_S = 0.3


async def until_drained(buffer: DiskBuffer, limit: float = WAIT_LIMIT_S) -> None:
    """Wait until every record of ``buffer`` is acknowledged (its count is an AsyncValue)."""
    with trio.fail_after(limit):
        await buffer.count.wait_value(0)


async def test_points_of_a_wrong_clock_are_held_then_sent_with_their_true_time(
    influx: FakeInflux, tmp_path: Path
) -> None:
    clock = FakeClock()
    records, truth = clock.records(3)
    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    metrics = Metrics()
    sink = InfluxSink(
        section(influx.url, batch_size=3),
        buffer,
        metrics,
        DeadLetterFile(tmp_path / "dead" / DEAD_LETTER_FILE),
        resolver=StampResolver(clock.tracker, {}),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        await buffer.append(records)
        with trio.fail_after(WAIT_LIMIT_S):
            await sink.holding_value.wait_value(True)
        await trio.sleep(HOLD_OBSERVE_S)
        assert influx.log == []  # nothing written with a wrong time
        assert metrics.influx.holding
        # NTP: the clock steps to the right time and is synchronised.
        clock.right = True
        clock.tracker.refresh()
        await until_drained(buffer)
        sink.stop()
    buffer.store.close()
    assert [int(line.rsplit(" ", 1)[1]) for line in influx.accepted()] == truth
    assert not metrics.influx.holding
    assert metrics.influx.unsynced == 0


async def test_points_of_an_earlier_boot_use_its_offset_or_are_tagged_unsynced(
    influx: FakeInflux, tmp_path: Path
) -> None:
    earlier = FakeClock(boot="aaaaaaaa-0000-0000-0000-000000000000")
    known, truth = earlier.records(2)
    lost = FakeClock(boot="bbbbbbbb-0000-0000-0000-000000000000")
    never, _ = lost.records(2)
    now = FakeClock()  # this boot, clock right
    now.right = True
    now.tracker.refresh()
    buffer = await open_buffer(tmp_path / "influx", max_records=100)
    metrics = Metrics()
    sink = InfluxSink(
        section(influx.url, batch_size=4),
        buffer,
        metrics,
        DeadLetterFile(tmp_path / "dead" / DEAD_LETTER_FILE),
        # The store remembers that boot aaaaaaaa learned its offset before it ended.
        resolver=StampResolver(now.tracker, {"aaaaaaaa": TRUE_OFFSET}),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        await buffer.append(known + never)
        await until_drained(buffer)
        sink.stop()
    buffer.store.close()
    accepted = influx.accepted()
    assert [int(line.rsplit(" ", 1)[1]) for line in accepted[:2]] == truth
    assert all(",clock=unsynced " not in line for line in accepted[:2])
    # Boot bbbbbbbb never saw a right clock: best-known time, said so.
    assert all(line.startswith("snr,node=signal,clock=unsynced value=") for line in accepted[2:])
    assert metrics.influx.unsynced == 2


async def test_held_points_are_released_unsynced_before_the_bound_would_drop_them(
    influx: FakeInflux, tmp_path: Path
) -> None:
    clock = FakeClock()
    records, _ = clock.records(9)
    buffer = await open_buffer(tmp_path / "influx", max_records=10)
    metrics = Metrics()
    sink = InfluxSink(
        section(influx.url, batch_size=1),
        buffer,
        metrics,
        DeadLetterFile(tmp_path / "dead" / DEAD_LETTER_FILE),
        resolver=StampResolver(clock.tracker, {}),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        await buffer.append(records[:5])
        with trio.fail_after(WAIT_LIMIT_S):
            await sink.holding_value.wait_value(True)
        await buffer.append(records[5:])  # 9 of 10: the release share
        await until_drained(buffer)
        sink.stop()
    buffer.store.close()
    assert len(influx.accepted()) == 9
    assert all(",clock=unsynced " in line for line in influx.accepted())
    assert buffer.dropped_total == 0
