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
    """The /api/status URL of a ``[status] listen`` address (``host:port``) or a base URL."""
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

    console = Console(highlight=False)
    with _stdout():
        for part in rendered:
            console.print(part)
    return EXIT_OK


def _status_tables(doc: dict[str, Any]) -> list[Text | Table]:
    """The status document as a line and two tables; every value is plain text, not markup."""
    from rich.table import Column, Table
    from rich.text import Text

    def cell(value: object) -> Text:
        return Text("" if value is None else str(value))

    if doc["healthy"]:
        state = Text("healthy", style="green")
    else:
        state = Text.assemble(("UNHEALTHY", "red"), ": " + "; ".join(map(str, doc["reasons"])))
    src = doc["source"]
    line = Text.assemble(
        "gateway ",
        (str(doc["gateway"]["id"]), "bold"),
        " ",
        state,
        f"  source {src['kind']} {src['state']}, {src['packets']} packets, "
        f"last {src['last_packet_age_s']} s ago, restarts {_restarts(src['restarts'])}",
    )
    # Long text folds onto more lines rather than losing its end to an ellipsis.
    sinks = Table(
        "sink",
        Column("target", overflow="fold"),
        "up",
        "backlog",
        "oldest (s)",
        "coverage (h)",
        "delivered",
        "dropped",
        "dead letters",
        Column("last error", overflow="fold"),
    )
    for name, s in doc["sinks"].items():
        # InfluxDB's "healthy" is None before its first request: "?" rather than "no".
        up = s.get("healthy", s.get("connected"))
        sinks.add_row(
            cell(name),
            cell(s["target"]),
            cell({True: "yes", False: "no"}.get(up, "?")),
            cell(s["backlog"]),
            cell(s["oldest_age_s"] or "-"),
            cell("-" if s.get("coverage_h") is None else s["coverage_h"]),
            cell(s["delivered"]),
            cell(s["dropped"]),
            cell(s["dead_letters"]),
            cell(s["last_error"]),
        )
    values = Table("group", "metric", "latest", "unit", "age (s)")
    for group, metrics in sorted(doc["values"].items()):
        for metric, info in sorted(metrics.items()):
            values.add_row(
                cell(group),
                cell(metric),
                cell(info["value"]),
                cell(info["unit"]),
                cell(info["age_s"]),
            )
    parts: list[Text | Table] = [line]
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
    tables: list[Text | Table] = [*parts, sinks, values]
    # Older gateways have no "alerts" field.
    if doc.get("alerts"):
        alerts = Table("alert", "metric", "value", "since", "firing for (s)", style="red")
        for a in doc["alerts"]:
            alerts.add_row(
                cell(a["name"]),
                cell(a["metric"]),
                cell(a["value"]),
                cell(a["since"]),
                cell(a["firing_for_s"]),
            )
        tables.insert(1, alerts)  # active alerts right after the first line
    return tables
