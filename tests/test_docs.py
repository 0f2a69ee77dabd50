"""The guides against the code: every log line they quote, and README's /metrics list.

What counts as a quoted log line (the rule the guides follow):

1. Every non-empty line of a fenced code block *without* a language (a bare
   ```` ``` ````) in docs/troubleshooting.md and docs/operations.md. Blocks
   with a language (```` ```sh ````, ```` ```toml ````) are commands and
   config, not log lines.
2. Every backticked span outside fences in those two files (it may wrap over
   lines) that starts with a log line's prefix (:data:`LOG_PREFIXES`: the
   name a message starts with, e.g. ``mqtt: `` or ``buffer store ``), or with
   ``…`` followed by one of them, or with ``… `` and at least six words (the
   end of a message, whose first three words must then be the message's own
   text, not a placeholder's).

In a quote, ``…`` stands for text that varies. A quote is found in the source
when some string literal of ``gateway/`` (an f-string's fields, and ``%s``,
``%d``, ``%.1f``… placeholders, are wildcards too) can produce it: the two
patterns must have a common expansion. Only literals with at least
:data:`MIN_LITERAL` fixed characters besides a log prefix count, so that
``"%s: %s"`` or ``"buffer store %s: %s"`` do not match everything. Numbers and
names a quote shows as examples (``120 message(s)``, ``broker:1883``) fall
under the template's placeholders. Two prefixes are not the message's own:
``gateway: `` (the CLI's error lines) is left out before matching, and after
``source stderr: `` comes the child's own text, which is not checked.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUIDES = ["docs/troubleshooting.md", "docs/operations.md"]
WILD = "\x00"  # one wildcard, in both templates and quotes
MIN_LITERAL = 6
LOG_PREFIXES = (
    "mqtt: ",
    "influxdb: ",
    "source: ",
    "source stderr: ",
    "buffer store ",
    "dead letters: ",
    "salvage: ",
    "status: ",
    "alerts: ",
    "gateway: ",
)
_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?[-#0 +]*\d*(?:\.\d+)?[sdifrgxe]")


def quoted_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, quote) for each quoted log line of a guide (see the module's rule)."""
    fence: str | None = None
    prose: list[tuple[int, str]] = []  # lines outside fences, for spans that wrap
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence == "" and line.strip():
            yield number, line.strip()
        elif fence is None:
            prose.append((number, line))
    joined = "\n".join(line for _, line in prose)
    for match in re.finditer(r"`([^`]+)`", joined):
        span = " ".join(match.group(1).split())
        # A span that opens with "…" is the end of a message, if it is a sentence.
        tail = span.startswith("… ") and len(span.split()) >= 6
        if span.lstrip("… ").startswith(LOG_PREFIXES) or tail:
            yield prose[joined.count("\n", 0, match.start())][0], span


def _template(parts: list[str | None]) -> str | None:
    """Literal parts and wildcards (None) as one pattern; None if too little is fixed."""
    out = []
    for part in parts:
        if part is None:
            out.append(WILD)
        else:
            out.append(_PLACEHOLDER.sub(WILD, part).replace("%%", "%"))
    pattern = re.sub(f"{WILD}+", WILD, "".join(out))
    fixed = pattern.replace(WILD, "")
    prefix = next((p for p in LOG_PREFIXES if fixed.startswith(p)), "")
    return pattern if len(fixed) - len(prefix) >= MIN_LITERAL else None


@functools.cache
def source_templates() -> tuple[str, ...]:
    """Every string literal and f-string of the gateway package, as a pattern."""
    found: set[str] = set()
    for path in sorted((REPO / "gateway").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            parts: list[str | None] | None = None
            if isinstance(node, ast.JoinedStr):
                parts = [
                    v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else None
                    for v in node.values
                ]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = [node.value]
            if parts:
                template = _template(parts)
                if template:
                    found.add(template)
    return tuple(sorted(found))


def overlap(a: str, b: str) -> bool:
    """Whether two patterns (literals and :data:`WILD`) have a common expansion."""

    @functools.cache
    def m(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == WILD:
            return m(i + 1, j) or (j < len(b) and m(i, j + 1))
        if j < len(b) and b[j] == WILD:
            return m(i, j + 1) or (i < len(a) and m(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and m(i + 1, j + 1)

    return m(0, 0)


def _start(pattern: str) -> str:
    return pattern.split(WILD, 1)[0]


def found_in_source(quote: str) -> bool:
    """Whether some literal of the source can produce ``quote``."""
    quote = quote.removeprefix("gateway: ")
    if quote.startswith("source stderr: "):
        # The child's own text follows: only that the gateway logs it so.
        return "source stderr: %s" in (REPO / "gateway" / "source.py").read_text()
    pattern = re.sub(f"{WILD}+", WILD, quote.replace("…", WILD))
    head = _start(pattern)
    # A quote that opens with "…" could let a placeholder of the template swallow
    # its words: its first three words must be the template's own text.
    anchor = " ".join(quote.lstrip("… ").split()[:3]) if quote.startswith("…") else ""
    for template in source_templates():
        if anchor and anchor not in template:
            continue
        # Cheap first: the fixed starts must agree as far as both go.
        start = _start(template)
        n = min(len(start), len(head))
        if start[:n] == head[:n] and overlap(template, pattern):
            return True
    return False


QUOTES = [
    pytest.param(quote, id=f"{guide}:{number}")
    for guide in GUIDES
    for number, quote in quoted_lines((REPO / guide).read_text(encoding="utf-8"))
]


def test_the_guides_quote_log_lines() -> None:
    # The rule above finds them: an edit that hides every quote from it fails here.
    assert len(QUOTES) > 30


@pytest.mark.parametrize("quote", QUOTES)
def test_every_quoted_log_line_is_in_the_source(quote: str) -> None:
    assert found_in_source(quote), f"no log message in gateway/ produces: {quote}"


def test_the_matcher_tells_a_changed_line() -> None:
    assert found_in_source("source: no line for 60 s (source.stall_timeout); restarting the child")
    assert not found_in_source(
        "source: no line for 60 s (source.stall_timeout); rebooting the child"
    )
    assert overlap(f"a{WILD}c", f"ab{WILD}")
    assert not overlap("abc", f"ab{WILD}d")


def readme_metrics() -> set[str]:
    """The metric names README's /metrics item lists (labels left out)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("- `/metrics` — Prometheus text:")
    end = text.index("\n- `/healthz`", start)
    return {m for m in re.findall(r"`(gateway_[a-z_]+)(?:\{[^}]*\})?`", text[start:end])}


def collector_metrics() -> set[str]:
    """The metric names a fresh Metrics renders, as Prometheus text has them."""
    from prometheus_client import generate_latest

    from gateway.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_readme_lists_every_metric_and_no_other() -> None:
    listed, rendered = readme_metrics(), collector_metrics()
    assert listed - rendered == set(), "README lists metrics the gateway does not export"
    assert rendered - listed == set(), "the gateway exports metrics README does not list"
