"""The status page's first paint, rendered on the server from the status document.

``page.html`` is one self-contained page whose script rebuilds its parts from
``/api/status`` every two seconds. So that the state is there without the
script (a screenshot, a text browser, a page saved while a gateway failed),
:func:`render_page` fills the same parts, with the same markup, in advance:
each part sits between ``<!--slot:NAME-->`` and ``<!--/slot:NAME-->`` in the
template, and the script replaces those elements' children as it always did.
The two renderers are kept alike by the tests of the page, which look for the
same text with and without JavaScript.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

_SLOT = re.compile(r"<!--slot:(\w+)-->.*?<!--/slot:\1-->", re.S)
SPARK_W, SPARK_H = 160, 28


def fill(template: str, parts: Mapping[str, str]) -> str:
    """``template`` with each ``<!--slot:NAME-->…<!--/slot:NAME-->`` replaced by ``parts[NAME]``."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        return parts[name] if name in parts else match.group(0)

    return _SLOT.sub(one, template)


def render_page(template: str, doc: Mapping[str, Any]) -> str:
    """The page with ``doc`` (a :func:`gateway.status.app.status_document`) filled in."""
    return fill(
        template,
        {
            "gwid": escape(str(doc["gateway"]["id"])),
            "health": health_badge(doc),
            "about": about(doc["gateway"]),
            "alerts": "".join(alert(a) for a in doc.get("alerts", [])),
            "reasons": "".join(el("li", {}, r) for r in doc["reasons"]),
            "cards": "".join(cards(doc)),
            "values": "".join(value_rows(doc["values"])),
        },
    )


def el(tag: str, attrs: Mapping[str, str], *kids: str, raw: bool = False) -> str:
    """An element; its text children are escaped unless ``raw`` (already markup)."""
    attr = "".join(f' {k}="{escape(str(v))}"' for k, v in attrs.items())
    body = "".join(kids) if raw else "".join(escape(str(k)) for k in kids)
    return f"<{tag}{attr}>{body}</{tag}>"


def age(seconds: float | None) -> str:
    """A duration as the page writes it (the script's ``age()``)."""
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def badge_class(doc: Mapping[str, Any]) -> str:
    """Green only when healthy with nothing firing: a firing alert is not "all good"."""
    if not doc["healthy"]:
        return "bad"
    return "warn" if doc.get("alerts") else "ok"


def health_badge(doc: Mapping[str, Any]) -> str:
    """The header's badge: health and firing alerts in one text."""
    text = doc.get("summary") or ("healthy" if doc["healthy"] else "UNHEALTHY")
    return el("span", {"id": "health", "class": "badge " + badge_class(doc)}, text)


def about(gateway: Mapping[str, Any]) -> str:
    """Version and uptime, for the header."""
    return escape(f"v{gateway.get('version', '?')} · up {age(gateway.get('uptime_s'))}")


def alert(a: Mapping[str, Any]) -> str:
    """One firing alert, as a banner."""
    return el(
        "div",
        {"class": "alert", "data-alert": a["name"]},
        el("strong", {}, "ALERT " + str(a["name"])),
        escape(f"{a['metric']} = {a['value']}"),
        el("span", {}, f" · firing for {age(a['firing_for_s'])} · since {a['since']}"),
        raw=True,
    )


def error_line(text: str, since: str | None) -> str:
    """A stage's last error and since when."""
    if not text:
        return ""
    when = f" (since {since})" if since else ""
    return el("div", {"class": "err"}, f"last error: {text}{when}")


def card(title: str, badge: str, cls: str, rows: Iterable[tuple[str, object]], error: str) -> str:
    """One stage's card: a title with a badge, figures, and its last error if any."""
    dl = "".join(el("dt", {}, k) + el("dd", {}, str(v)) for k, v in rows)
    return el(
        "div",
        {"class": "card"},
        el("h2", {}, escape(title), el("span", {"class": "badge " + cls}, badge), raw=True),
        el("dl", {}, dl, raw=True),
        error,
        raw=True,
    )


def batching_note(k: Mapping[str, Any]) -> str:
    """Why InfluxDB's points "wait" about a second: they wait for their batch."""
    oldest, interval = k.get("oldest_age_s"), k.get("batch_interval_s")
    # One more second: the oldest record's age is read once a second.
    if oldest is None or interval is None or oldest > interval + 1:
        return ""
    return f" (its batch: up to {interval:g} s is normal)"


def cards(doc: Mapping[str, Any]) -> Iterable[str]:
    """The source, sink and clock cards."""
    src = doc["source"]
    restarts = sum(src["restarts"].values())
    yield card(
        f"Source ({src['kind']})",
        src["state"],
        "ok" if src["state"] == "running" else "bad",
        [
            ("last packet", age(src["last_packet_age_s"])),
            ("packets", src["packets"]),
            ("pid", "–" if src["pid"] is None else src["pid"]),
            ("restarts", restarts),
        ],
        error_line(src.get("last_error", ""), src.get("last_error_since")),
    )
    for name, key, up in [
        ("MQTT", "mqtt", doc["sinks"]["mqtt"]["connected"]),
        ("InfluxDB", "influx", doc["sinks"]["influx"]["healthy"]),
    ]:
        k = doc["sinks"][key]
        mqtt = key == "mqtt"
        if up:
            state, cls = ("connected" if mqtt else "writing"), "ok"
        elif up is None:
            state, cls = "idle", "warn"
        else:
            state, cls = ("disconnected" if mqtt else "failing"), "bad"
        dead = str(k["dead_letters"])
        if k.get("dead_letters_waiting"):
            dead += f" ({k['dead_letters_waiting']} waiting: file refuses)"
        rows: list[tuple[str, object]] = [
            ("backlog", f"{k['backlog']}" + (f" / {k['max_records']}" if k["max_records"] else "")),
            ("oldest waiting", age(k["oldest_age_s"]) + batching_note(k)),
            ("last delivery", age(k["last_delivery_age_s"])),
            ("delivered", k["delivered"]),
            ("dropped", k["dropped"]),
            ("dead letters", dead),
        ]
        if k.get("salvaged") or k.get("salvage_lost"):
            rows.append(("salvaged / lost", f"{k['salvaged']} / {k['salvage_lost']}"))
        if mqtt:
            rows += [
                ("protocol", f"MQTT {k['protocol']}"),
                ("window", k["window"]),
                ("refused (PUBACK)", k["refused"]),
                ("taken over", k["takeovers"]),
            ]
        text = k["takeover"] if mqtt and k.get("takeover") else k["last_error"]
        yield card(
            f"{name} · {k['target']}", state, cls, rows, error_line(text, k.get("last_error_since"))
        )
    c = doc["clock"]
    yield card(
        f"Clock ({c['policy']})",
        "right" if c["synchronized"] else "not known right",
        "ok" if c["synchronized"] else "warn",
        [("since", c["since"] or "–"), ("points held", c["points_held"]), ("how", c["how"])],
        "",
    )


def sparkline(points: list[list[float]]) -> str:
    """The last minutes of a metric as a small SVG line (the script's ``sparkline()``)."""
    w, h = SPARK_W, SPARK_H
    line = ""
    if len(points) >= 2:
        ts, vs = [p[0] for p in points], [p[1] for p in points]
        t0, t1, v0, v1 = min(ts), max(ts), min(vs), max(vs)

        def x(t: float) -> float:
            return ((t - t0) / (t1 - t0) if t1 > t0 else 1) * (w - 2) + 1

        def y(v: float) -> float:
            return h - 2 - ((v - v0) / (v1 - v0) if v1 > v0 else 0.5) * (h - 4)

        line = el("polyline", {"points": " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)})
    return el("svg", {"width": str(w), "height": str(h)}, line, raw=True)


def value_rows(values: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Iterable[str]:
    """The latest-values table's rows: a row per node, then one per metric."""
    for node, metrics in values.items():
        yield el("tr", {"class": "node"}, el("td", {"colspan": "5"}, node), raw=True)
        for metric, m in metrics.items():
            yield el(
                "tr",
                {"data-node": node, "data-metric": metric},
                el("td", {}, metric),
                el("td", {"class": "num"}, str(m["value"])),
                el("td", {}, m.get("unit_symbol") or m["unit"]),
                el("td", {}, age(m["age_s"])),
                el("td", {}, sparkline(m["history"]), raw=True),
                raw=True,
            )
