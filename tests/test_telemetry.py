"""gateway.telemetry: the v1 line protocol, plausibility, line splitting, sequence gaps."""

from __future__ import annotations

import json

import pytest

from gateway.config.sections import DEFAULT_PLAUSIBILITY
from gateway.telemetry import (
    BAD_NAME,
    BAD_VERSION,
    IMPLAUSIBLE,
    INVALID_JSON,
    INVALID_UTF8,
    NO_METRICS,
    NOT_A_NUMBER,
    NOT_FINITE,
    TOO_DEEP,
    LineSplitter,
    Packet,
    SequenceTracker,
    check_plausibility,
    format_value,
    parse_line,
)
from tests.support import DESIGN_EXAMPLE

RECEIVED_NS = 1795773905582000000
EXAMPLE = DESIGN_EXAMPLE
EXAMPLE_GROUPS = {
    "node1": {"temperature": 26.7, "humidity": 55.4, "gas_resistance": 101169},
    "node2": {"temperature": 24.3, "pressure": 1013.25},
    "signal": {"rssi": -33, "snr": 13},
    "stats": {"packets_received": 42, "crc_errors": 0},
}


# Node 2's heartbeat (firmware/README.md): its own reading and stats after a
# silence, no node1 and no signal; seq goes on, packets_received does not.
HEARTBEAT = (
    b'{"v":1,"seq":43,"uptime_ms":450113,"node2":{"temperature":24.30,"pressure":1013.25},'
    b'"stats":{"packets_received":42,"crc_errors":0}}'
)


def parse(line: bytes) -> Packet:
    """Parse a line that must yield a packet."""
    parsed = parse_line(line, RECEIVED_NS)
    assert parsed is not None
    assert parsed.line_reason is None, parsed
    assert parsed.packet is not None
    return parsed.packet


def reason(line: bytes) -> str | None:
    """The line rejection reason of a line that carries an object."""
    parsed = parse_line(line, RECEIVED_NS)
    assert parsed is not None
    assert parsed.packet is None
    return parsed.line_reason


def line_with(groups: dict[str, object]) -> bytes:
    return json.dumps({"v": 1, "seq": 1, **groups}).encode()


# -- parse_line -----------------------------------------------------------------


def test_example_line() -> None:
    parsed = parse_line(EXAMPLE, RECEIVED_NS)
    assert parsed is not None
    assert parsed.line_reason is None
    assert parsed.rejected == []
    packet = parsed.packet
    assert packet is not None
    assert packet.count() == 9
    assert packet.groups == EXAMPLE_GROUPS
    assert dict(packet.meta) == {"v": 1, "seq": 42, "uptime_ms": 420113}
    assert packet.received_ns == RECEIVED_NS
    assert list(packet.metrics())[:3] == [
        ("node1", "temperature", 26.7),
        ("node1", "humidity", 55.4),
        ("node1", "gas_resistance", 101169),
    ]


def test_heartbeat_line_is_a_packet_like_any_other() -> None:
    parsed = parse_line(HEARTBEAT, RECEIVED_NS)
    assert parsed is not None
    assert parsed.rejected == []
    packet = parsed.packet
    assert packet is not None
    assert dict(packet.meta) == {"v": 1, "seq": 43, "uptime_ms": 450113}
    assert packet.groups == {
        "node2": {"temperature": 24.3, "pressure": 1013.25},
        "stats": {"packets_received": 42, "crc_errors": 0},
    }
    kept, rejected = check_plausibility(packet, DEFAULT_PLAUSIBILITY)
    assert kept is packet
    assert rejected == []


def test_received_ns_is_stamped_now_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.telemetry.time.time_ns", lambda: 1234567890123456789)
    parsed = parse_line(EXAMPLE)
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.received_ns == 1234567890123456789


def test_defmt_prefix_and_location_suffix() -> None:
    line = b"0.512 INFO  " + EXAMPLE + b" (node2 src/main.c:42)"
    assert parse(line).groups == EXAMPLE_GROUPS


def test_probe_rs_level_brackets() -> None:
    line = b"0.123456 [INFO ] " + EXAMPLE + b" (node2 src/main.c:42)"
    assert parse(line).groups == EXAMPLE_GROUPS


def test_ansi_colours_around_the_object() -> None:
    line = (
        b"\x1b[2m0.512\x1b[0m \x1b[32mINFO \x1b[0m "
        + EXAMPLE
        + b" \x1b[2m(node2 src/main.c:42)\x1b[0m"
    )
    assert parse(line).groups == EXAMPLE_GROUPS


def test_crlf_line_through_the_splitter() -> None:
    splitter = LineSplitter(65536)
    lines = splitter.feed(EXAMPLE + b"\r\n")
    assert lines == [EXAMPLE]
    assert parse(lines[0]).groups == EXAMPLE_GROUPS


def test_bom_before_the_object() -> None:
    assert parse(b"\xef\xbb\xbf" + EXAMPLE).groups == EXAMPLE_GROUPS


def test_invalid_utf8_inside_the_object() -> None:
    line = b'{"v":1,"node1":{"temperature":26.7},"note":"\xff\xfe"}'
    assert reason(line) == INVALID_UTF8


def test_invalid_utf8_outside_the_object_is_harmless() -> None:
    assert parse(b"\xff\xfe garbage " + EXAMPLE).groups == EXAMPLE_GROUPS


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_metric_is_rejected_rest_kept(constant: str) -> None:
    line = (
        b'{"v":1,"node1":{"temperature":' + constant.encode() + b',"humidity":55.4},'
        b'"node2":{"pressure":1013.25}}'
    )
    parsed = parse_line(line, RECEIVED_NS)
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.groups == {"node1": {"humidity": 55.4}, "node2": {"pressure": 1013.25}}
    assert parsed.rejected == [("node1", "temperature", NOT_FINITE)]


def test_float_overflow_is_not_finite() -> None:
    parsed = parse_line(b'{"v":1,"g":{"a":1e400,"b":1}}', RECEIVED_NS)
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.groups == {"g": {"b": 1}}
    assert parsed.rejected == [("g", "a", NOT_FINITE)]


@pytest.mark.parametrize("value", ["26.7", True, False, None, {"x": 1}, [1, 2]])
def test_non_number_metric_is_rejected(value: object) -> None:
    parsed = parse_line(line_with({"node1": {"temperature": value, "humidity": 55.4}}))
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.groups == {"node1": {"humidity": 55.4}}
    assert parsed.rejected == [("node1", "temperature", NOT_A_NUMBER)]


BAD_NAMES = ["a/b", "+", "#", "a b", " ", "a\x00b", "x" * 65, "", "tëmp", "a.b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_metric_name_is_rejected(name: str) -> None:
    parsed = parse_line(line_with({"node1": {name: 1.0, "humidity": 55.4}}))
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.groups == {"node1": {"humidity": 55.4}}
    assert len(parsed.rejected) == 1
    group, label, why = parsed.rejected[0]
    assert (group, why) == ("node1", BAD_NAME)
    # The label is printable and bounded, whatever the name was.
    assert label.isprintable()
    assert len(label) <= 4 * 64


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_group_name_is_rejected(name: str) -> None:
    parsed = parse_line(line_with({name: {"temperature": 1.0}, "node2": {"pressure": 1000}}))
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.groups == {"node2": {"pressure": 1000}}
    assert [(why, metric) for _, metric, why in parsed.rejected] == [(BAD_NAME, "*")]


def test_name_of_64_chars_is_fine() -> None:
    name = "n" * 64
    assert parse(line_with({name: {name: 1}})).groups == {name: {name: 1}}


def test_huge_int_metric_is_not_finite() -> None:
    parsed = parse_line(line_with({"g": {"a": 10**400, "b": 2}}))
    assert parsed is not None
    assert parsed.packet is not None
    assert parsed.packet.groups == {"g": {"b": 2}}
    assert parsed.rejected == [("g", "a", NOT_FINITE)]


def test_5000_digit_int_is_invalid_json_not_an_exception() -> None:
    line = b'{"v":1,"g":{"a":' + b"7" * 5000 + b"}}"
    assert reason(line) == INVALID_JSON


def test_deep_nesting_never_raises() -> None:
    assert parse_line(b"[" * 100000) is None  # no object at all
    assert reason(b"{" + b"[" * 100000 + b"}") in (TOO_DEEP, INVALID_JSON)
    deep = b'{"a":' * 100000 + b"1" + b"}" * 100000
    assert reason(deep) in (TOO_DEEP, INVALID_JSON)
    nested_list = b'{"v":1,"g":' + b"[" * 100000 + b"]" * 100000 + b"}"
    assert reason(nested_list) in (TOO_DEEP, INVALID_JSON)


@pytest.mark.parametrize(
    "line", [EXAMPLE[:40], b"0.512 INFO  " + EXAMPLE[:-3], b"} log text {", b"{"]
)
def test_an_object_that_never_closes_is_invalid_not_ignored(line: bytes) -> None:
    assert reason(line) == INVALID_JSON


def test_two_objects_on_one_line_are_invalid() -> None:
    assert reason(EXAMPLE + b" " + EXAMPLE) == INVALID_JSON


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"INFO  flashing 42%",
        b"    Finished in 0.8s",
        b"\x1b[31mERROR\x1b[0m probe not found",
    ],
)
def test_lines_without_an_object_are_ignored(line: bytes) -> None:
    assert parse_line(line) is None


@pytest.mark.parametrize("version", [2, 0, "1", True, None, 1.5])
def test_other_versions_are_refused(version: object) -> None:
    line = json.dumps({"v": version, "g": {"a": 1}}).encode()
    assert reason(line) == BAD_VERSION


def test_missing_version_means_v1() -> None:
    assert parse(b'{"g":{"a":1}}').groups == {"g": {"a": 1}}


def test_object_without_groups_has_no_metrics() -> None:
    assert reason(b"x {} y") == NO_METRICS
    assert reason(b'{"v":1,"seq":3}') == NO_METRICS
    # Text after the last '}' is not part of the object.
    assert reason(b'{"v":1,"seq":3} trailing [1,2]') == NO_METRICS


def test_new_group_appears_without_code_changes() -> None:
    line = line_with({"node3": {"co2": 612, "temperature": 21.5}})
    assert parse(line).groups == {"node3": {"co2": 612, "temperature": 21.5}}


def test_top_level_list_is_not_meta() -> None:
    parsed = parse_line(line_with({"node1": {"temperature": 1}, "extra": [1, 2]}))
    assert parsed is not None
    assert parsed.packet is not None
    assert "extra" not in parsed.packet.meta
    assert parsed.rejected == [("extra", "*", NOT_A_NUMBER)]


# -- format_value ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [(26.7, "26.7"), (101169, "101169"), (-33, "-33"), (1013.25, "1013.25"), (0.0, "0.0")],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_format_value_round_trips_the_parsed_text() -> None:
    packet = parse(EXAMPLE)
    assert [format_value(v) for _, _, v in packet.metrics()] == [
        "26.7",
        "55.4",
        "101169",
        "24.3",
        "1013.25",
        "-33",
        "13",
        "42",
        "0",
    ]


# -- check_plausibility ------------------------------------------------------------


def test_plausibility_removes_out_of_range_values() -> None:
    line = line_with(
        {
            "node1": {"temperature": 26.7, "humidity": 140, "gas_resistance": 101169},
            "node2": {"temperature": 24.3, "pressure": 5242.88},
        }
    )
    packet = parse(line)
    kept, rejected = check_plausibility(packet, DEFAULT_PLAUSIBILITY)
    assert kept is not None
    assert kept.groups == {
        "node1": {"temperature": 26.7, "gas_resistance": 101169},
        "node2": {"temperature": 24.3},
    }
    assert rejected == [("node1", "humidity", IMPLAUSIBLE), ("node2", "pressure", IMPLAUSIBLE)]
    assert kept.received_ns == packet.received_ns
    assert kept.meta == packet.meta


def test_plausibility_bounds_are_inclusive() -> None:
    packet = parse(line_with({"node1": {"temperature": 85, "humidity": 0}}))
    kept, rejected = check_plausibility(packet, DEFAULT_PLAUSIBILITY)
    assert kept is packet
    assert rejected == []


def test_plausibility_drops_a_packet_with_nothing_left() -> None:
    packet = parse(line_with({"node2": {"pressure": 5242.88}}))
    kept, rejected = check_plausibility(packet, DEFAULT_PLAUSIBILITY)
    assert kept is None
    assert rejected == [("node2", "pressure", IMPLAUSIBLE)]


def test_plausibility_disabled_with_empty_ranges() -> None:
    packet = parse(line_with({"node2": {"pressure": 5242.88}, "node1": {"humidity": 140}}))
    kept, rejected = check_plausibility(packet, {})
    assert kept is packet
    assert rejected == []


# -- LineSplitter ------------------------------------------------------------------


def test_splitter_joins_lines_across_chunks() -> None:
    splitter = LineSplitter(1024)
    data = b"first line\nsecond\r\nthird one\n"
    out: list[bytes] = []
    for i in range(len(data)):
        out += splitter.feed(data[i : i + 1])
    assert out == [b"first line", b"second", b"third one"]
    assert splitter.flush() is None


def test_splitter_many_lines_in_one_chunk() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b"a\nb\n\nc") == [b"a", b"b", b""]
    assert splitter.feed(b"d\n") == [b"cd"]


def test_splitter_flush_returns_the_partial_last_line() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b"done\npartial") == [b"done"]
    assert splitter.flush() == b"partial"
    assert splitter.flush() is None


def test_splitter_line_of_exactly_the_cap_is_kept() -> None:
    splitter = LineSplitter(64)
    assert splitter.feed(b"x" * 64 + b"\n") == [b"x" * 64]
    assert splitter.too_long == 0


def test_splitter_drops_a_long_line_without_holding_it() -> None:
    cap = 4096
    splitter = LineSplitter(cap)
    long_line = b"{" + b"y" * (200 * 1024) + b"}\n"
    out = splitter.feed(b"before\n")
    high_water = 0
    for i in range(0, len(long_line), 1024):
        out += splitter.feed(long_line[i : i + 1024])
        high_water = max(high_water, len(splitter._buf))
    out += splitter.feed(b"after\n")
    assert out == [b"before", b"after"]
    assert splitter.too_long == 1
    assert high_water <= cap


def test_splitter_drops_a_long_line_that_arrives_in_one_chunk() -> None:
    splitter = LineSplitter(100)
    assert splitter.feed(b"a" * 101 + b"\nok\n") == [b"ok"]
    assert splitter.too_long == 1


def test_splitter_long_partial_line_at_end_of_stream() -> None:
    splitter = LineSplitter(100)
    splitter.feed(b"z" * 300)
    assert splitter.flush() is None
    assert splitter.too_long == 1
    assert splitter.feed(b"next\n") == [b"next"]


# -- SequenceTracker -----------------------------------------------------------------


def stats_packet(seq: int, received: int) -> Packet:
    return parse(line_with({"seq": seq, "stats": {"packets_received": received, "crc_errors": 0}}))


def test_sequence_tracker_counts_gaps() -> None:
    tracker = SequenceTracker()
    assert tracker.observe(stats_packet(1, 1)) == (0, False)
    assert tracker.observe(stats_packet(2, 2)) == (0, False)
    assert tracker.observe(stats_packet(6, 6)) == (3, False)
    assert tracker.observe(stats_packet(7, 7)) == (0, False)


def test_sequence_tracker_seq_backwards_is_a_reset() -> None:
    tracker = SequenceTracker()
    tracker.observe(stats_packet(100, 100))
    # After a reset the counters restart: no bogus gap is reported.
    assert tracker.observe(stats_packet(1, 1)) == (0, True)
    assert tracker.observe(stats_packet(2, 3)) == (1, False)


def test_sequence_tracker_received_backwards_is_a_reset() -> None:
    tracker = SequenceTracker()
    tracker.observe(stats_packet(10, 10))
    assert tracker.observe(stats_packet(11, 2)) == (0, True)


def test_sequence_tracker_heartbeat_between_frames_is_no_gap_and_no_reset() -> None:
    tracker = SequenceTracker()
    assert tracker.observe(parse(EXAMPLE)) == (0, False)  # seq 42, packets_received 42
    assert tracker.observe(parse(HEARTBEAT)) == (0, False)  # seq 43, packets_received 42
    assert tracker.observe(stats_packet(44, 42)) == (0, False)  # another heartbeat
    assert tracker.observe(stats_packet(45, 43)) == (0, False)  # the next frame


def test_sequence_tracker_gap_after_a_heartbeat_is_still_counted() -> None:
    tracker = SequenceTracker()
    tracker.observe(stats_packet(42, 42))
    assert tracker.observe(stats_packet(43, 42)) == (0, False)  # heartbeat
    # The line of the next frame (seq 44, packets_received 43) was lost.
    assert tracker.observe(stats_packet(45, 44)) == (1, False)


def test_sequence_tracker_heartbeat_first_after_a_reset_is_a_reset() -> None:
    tracker = SequenceTracker()
    tracker.observe(stats_packet(100, 90))
    # Node 2 restarted and heard nothing yet: a heartbeat with seq 1.
    assert tracker.observe(stats_packet(1, 0)) == (0, True)
    assert tracker.observe(stats_packet(2, 1)) == (0, False)


def test_splitter_ends_lines_at_a_lone_cr() -> None:
    splitter = LineSplitter(1000)
    assert splitter.feed(b"a\rb\r\nc\n") == [b"a", b"b", b"c"]
    # A CRLF split across chunks is one line end.
    assert splitter.feed(b"d\r") == [b"d"]
    assert splitter.feed(b"\ne\n") == [b"e"]
