"""``gateway status``: a running gateway's ``/api/status`` as tables."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_FAILURE, EXIT_OK, _error, _stdout

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text


def status_url(address: str) -> str:
    """The /api/status URL of a port, a ``[status] listen`` address (``host:port``) or a URL.

    A bare port (``9118``) means this machine: it is what someone who knows
    only the listen port types.
    """
    address = address.strip()
    if address.isdigit():
        address = f"127.0.0.1:{address}"
    elif address.startswith(":") and address[1:].isdigit():
        address = "127.0.0.1" + address
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/") + "/api/status"


def _restarts(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{reason} {count}" for reason, count in value.items()) or "0"
    return str(value or 0)


def cmd_status(args: argparse.Namespace) -> int:
    """``gateway status``: a running gateway's /api/status as tables."""
    import urllib.error
    import urllib.request

    url = status_url(args.url)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _error(f"cannot read {url}: {exc}")
        return EXIT_FAILURE
    try:
        rendered = _status_tables(doc)
    except (KeyError, TypeError, AttributeError) as exc:
        _error(f"{url} did not answer with a gateway status document ({exc!r})")
        return EXIT_FAILURE
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own answer is exit 1; a closed reader is not a failure here.
            raise BrokenPipeError

    console = _Console(highlight=False)
    with _stdout():
        for part in rendered:
            console.print(part)
    return EXIT_OK


def _age(seconds: object) -> str:
    return "-" if seconds is None else f"{seconds} s"


def _since(text: object, since: object) -> str:
    return f"{text} (since {since})" if since else str(text)


def _status_tables(doc: dict[str, Any]) -> list[Text | Table]:
    """The status document as lines and tables that fit 80 columns.

    Each sink is a vertical two-column table (field, value) rather than one
    row of nine columns: a long target or error folds inside its value cell
    instead of squeezing every other column. Every value is plain text, not markup.
    """
    from rich.table import Column, Table
    from rich.text import Text

    def cell(value: object) -> Text:
        return Text("" if value is None else str(value))

    firing = len(doc.get("alerts") or [])
    # Older gateways have no "summary": build it the same way.
    summary = doc.get("summary") or ("healthy" if doc["healthy"] else "UNHEALTHY")
    colour = "red" if not doc["healthy"] else ("yellow" if firing else "green")
    state = Text(str(summary), style=colour)
    if not doc["healthy"]:
        state.append(": " + "; ".join(map(str, doc["reasons"])))
    gw = doc["gateway"]
    about = []
    if gw.get("version"):
        about.append(f"v{gw['version']}")
    if gw.get("uptime_s") is not None:
        about.append(f"up {gw['uptime_s']} s")
    line = Text.assemble(
        "gateway ",
        (str(gw["id"]), "bold"),
        f" ({', '.join(about)}) " if about else " ",
        state,
    )
    src = doc["source"]
    source = Text(
        f"source {src['kind']} {src['state']}, {src['packets']} packets, "
        f"last {_age(src['last_packet_age_s'])} ago, restarts {_restarts(src['restarts'])}"
    )
    if src.get("last_error"):
        source.append("\n  last error: ", style="red")
        source.append(_since(src["last_error"], src.get("last_error_since")))
    parts: list[Text | Table] = [line, source]
    clock = doc.get("clock")
    if isinstance(clock, dict):
        # A document from an older gateway has no clock object.
        if clock.get("synchronized"):
            parts.append(Text(f"clock right since {clock.get('since')} ({clock.get('how')})"))
        else:
            parts.append(
                Text.assemble(
                    ("clock NOT known right", "yellow"),
                    f" since {clock.get('since')} ({clock.get('how')}); "
                    f"{clock.get('points_held', 0)} InfluxDB point(s) held until it is",
                )
            )
    # Older gateways have no "alerts" field.
    if firing:
        alerts = Table(
            "alert",
            "metric",
            "value",
            Column("since", overflow="fold"),
            "firing for",
            style="red",
        )
        for a in doc["alerts"]:
            alerts.add_row(
                cell(a["name"]),
                cell(a["metric"]),
                cell(a["value"]),
                cell(a["since"]),
                cell(_age(a["firing_for_s"])),
            )
        parts.insert(1, alerts)  # active alerts right after the first line
    for name, s in doc["sinks"].items():
        # InfluxDB's "healthy" is None before its first request: "?" rather than "no".
        up = s.get("healthy", s.get("connected"))
        sink = Table(
            Column("sink", style="bold", no_wrap=True),
            Column(str(name), overflow="fold"),
            show_header=False,
            title=Text(f"{name} · {s['target']}"),
            title_justify="left",
        )
        rows = [
            ("up", {True: "yes", False: "no"}.get(up, "?")),
            ("backlog", s["backlog"]),
            ("oldest", _age(s["oldest_age_s"])),
            ("coverage", "-" if s.get("coverage_h") is None else f"{s['coverage_h']} h"),
            ("delivered", s["delivered"]),
            ("dropped", s["dropped"]),
            ("dead letters", s["dead_letters"]),
        ]
        if s.get("last_error"):
            rows.append(("last error", _since(s["last_error"], s.get("last_error_since"))))
        for key, value in rows:
            sink.add_row(cell(key), cell(value))
        parts.append(sink)
    values = Table("group", "metric", "latest", "unit", "age (s)")
    for group, metrics in sorted(doc["values"].items()):
        for metric, info in sorted(metrics.items()):
            values.add_row(
                cell(group),
                cell(metric),
                cell(info["value"]),
                cell(info.get("unit_symbol") or info["unit"]),
                cell(info["age_s"]),
            )
    parts.append(values)
    return parts
