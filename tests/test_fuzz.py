"""Fuzzing gateway.telemetry: no input makes the parser raise, and every object
either parses or is rejected with a reason.

``FUZZ_EXAMPLES`` sets the number of Hypothesis examples per test (``make fuzz``
runs two million); the seeded mutation sweep parses thirty times that many lines.
"""

from __future__ import annotations

import json
import math
import os
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.telemetry import (
    BAD_NAME,
    BAD_VERSION,
    INVALID_JSON,
    INVALID_UTF8,
    NAME_RE,
    NO_METRICS,
    NOT_A_NUMBER,
    NOT_FINITE,
    NOT_OBJECT,
    TOO_DEEP,
    LineSplitter,
    Parsed,
    parse_line,
)

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "3000"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LINE_REASONS = {INVALID_UTF8, INVALID_JSON, NOT_OBJECT, TOO_DEEP, BAD_VERSION, NO_METRICS}
METRIC_REASONS = {NOT_A_NUMBER, NOT_FINITE, BAD_NAME}
REAL_LINE = (
    b'{"v":1,"seq":42,"uptime_ms":420113,'
    b'"node1":{"temperature":26.7,"humidity":55.4,"gas_resistance":101169},'
    b'"node2":{"temperature":24.3,"pressure":1013.25},'
    b'"signal":{"rssi":-33,"snr":13},'
    b'"stats":{"packets_received":42,"crc_errors":0}}'
)
# Bytes that matter to the parser, to make mutations likelier to hit something.
INTERESTING = b'{}[]",:\\\r\n\x00\x1b\xef\xbb\xbf\xff0123456789.-+eENaIfinity /#'


def check(parsed: Parsed | None) -> None:
    """The invariants of any parse result."""
    if parsed is None:
        return
    if parsed.packet is None:
        assert parsed.line_reason in LINE_REASONS
    else:
        assert parsed.line_reason is None
        assert parsed.packet.count() > 0
        for group, metric, value in parsed.packet.metrics():
            assert NAME_RE.fullmatch(group)
            assert NAME_RE.fullmatch(metric)
            assert isinstance(value, int | float)
            assert not isinstance(value, bool)
            assert math.isfinite(value)
    for _, _, why in parsed.rejected:
        assert why in METRIC_REASONS


def framings(line: bytes) -> list[bytes]:
    """The ways a line can reach the parser: bare, defmt-prefixed, coloured, CRLF, BOM."""
    return [
        line,
        b"0.512 INFO  " + line + b" (node2 src/main.c:42)",
        b"\x1b[32m" + line + b"\x1b[0m",
        b"\xef\xbb\xbf" + line,
    ]


def parse_all(data: bytes) -> None:
    """Parse ``data`` in every framing, and as a stream through a LineSplitter."""
    for framed in framings(data):
        check(parse_line(framed, 1))
    splitter = LineSplitter(4096)
    for line in splitter.feed(data + b"\r\n"):
        check(parse_line(line, 1))
    rest = splitter.flush()
    if rest is not None:
        check(parse_line(rest, 1))


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parse_all(data)
    parse_all(b"{" + data + b"}")


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """A real line with a few insertions, deletions, replacements and truncations."""
    line = bytearray(REAL_LINE)
    byte = st.one_of(st.sampled_from(INTERESTING), st.integers(0, 255))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "duplicate"]))
        pos = draw(st.integers(0, len(line)))
        if op == "insert":
            line[pos:pos] = bytes(draw(st.lists(byte, min_size=1, max_size=8)))
        elif op == "delete":
            del line[pos : pos + draw(st.integers(1, 8))]
        elif op == "replace" and pos < len(line):
            line[pos] = draw(byte)
        elif op == "truncate":
            del line[pos:]
        elif op == "duplicate":
            end = draw(st.integers(pos, len(line)))
            line[pos:pos] = line[pos:end]
    return bytes(line)


@FUZZ
@given(mutated_lines())
def test_mutations_of_a_real_line_never_raise(line: bytes) -> None:
    parse_all(line)


def test_seeded_mutation_sweep() -> None:
    """Cheap bulk mutations (no shrinking) to cover many more lines than Hypothesis does."""
    rng = random.Random(20240901)
    lines = 0
    for _ in range(FUZZ_EXAMPLES * 30):
        line = bytearray(REAL_LINE)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(line) + 1)
            choice = rng.random()
            if choice < 0.4:
                line[pos:pos] = bytes([rng.choice(INTERESTING)])
            elif choice < 0.7:
                del line[pos : pos + rng.randint(1, 4)]
            elif pos < len(line):
                line[pos] = rng.randrange(256)
        check(parse_line(bytes(line), 1))
        lines += 1
    assert lines == FUZZ_EXAMPLES * 30


# -- JSON-ish objects: the parse agrees with an independent model ------------------

NAMES = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True),
    st.sampled_from(["v", "seq", "a/b", "+", "#", "a b", "\x00", "x" * 64, "x" * 65, ""]),
    st.text(max_size=6),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -(10**300), 2**1023 * 3]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(NAMES, children, max_size=3)
    ),
    max_leaves=6,
)
# Groups are mostly numbers (like real lines), with some of everything else.
GROUPS = st.dictionaries(NAMES, st.one_of(SCALARS, SCALARS, JSON_VALUES), max_size=5)
OBJECTS = st.dictionaries(NAMES, st.one_of(SCALARS, GROUPS, JSON_VALUES), max_size=6)


def is_metric(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def expected_groups(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the contract says survives: valid names, finite numbers, non-empty groups."""
    groups = {}
    for group, values in obj.items():
        if isinstance(values, dict) and NAME_RE.fullmatch(group):
            kept = {m: v for m, v in values.items() if NAME_RE.fullmatch(m) and is_metric(v)}
            if kept:
                groups[group] = kept
    return groups


@FUZZ
@given(OBJECTS, st.booleans())
def test_json_objects_parse_or_give_a_reason(obj: dict[str, Any], versioned: bool) -> None:
    if versioned:
        obj = {"v": 1, **obj}
    line = json.dumps(obj).encode()
    parsed = parse_line(line, 7)
    assert parsed is not None
    check(parsed)
    version = obj.get("v", 1)
    groups = expected_groups(obj)
    if isinstance(version, bool) or version != 1:
        assert parsed.line_reason == BAD_VERSION
    elif not groups:
        assert parsed.line_reason == NO_METRICS
    else:
        assert parsed.packet is not None
        assert parsed.packet.received_ns == 7
        assert parsed.packet.groups == groups
        meta = {k: v for k, v in obj.items() if not isinstance(v, dict | list)}
        # repr, not ==: a NaN in the metadata is kept as it came and NaN != NaN.
        assert repr(dict(parsed.packet.meta)) == repr(meta)
