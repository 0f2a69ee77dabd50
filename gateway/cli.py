"""The ``gateway`` command line: run, simulate, check, buffer, status.

Every command but ``run`` leaves the disk as it found it. Errors an operator
can act on are one line on stderr (a JSON log line with ``--log-format json``);
anything unexpected is logged with its traceback and exits 1.
"""

from __future__ import annotations

import signal

# A SIGTERM that arrives while the daemon still imports or opens its buffers
# (systemd stopping a unit that just started) must end it cleanly (exit 0), not
# by the default action: note it here, first thing; `gateway run` acts on it as
# soon as its own signal handling is up. Other commands restore the default.
EARLY_SIGNALS: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: EARLY_SIGNALS.append(signum))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import trio  # noqa: E402

from gateway import __version__  # noqa: E402
from gateway.config import Config, load_config  # noqa: E402
from gateway.errors import ConfigError  # noqa: E402

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from gateway.buffer import Record

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_DATA_LOST = 0, 1, 2, 3
CONFIG_HELP = "config file (default $GATEWAY_CONFIG or ./config.toml)"
_log_format = "text"  # set by main(): how _error() speaks


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr: plain lines (journald adds its own time stamps) or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiomqtt/paho chatter is ours to summarise, not to repeat.
    logging.getLogger("mqtt").setLevel(logging.WARNING)
    logging.getLogger("aiomqtt").setLevel(logging.WARNING)


def _error(message: str) -> None:
    """One line on stderr for the operator: ``gateway: ...``, or a JSON log line."""
    if _log_format == "json":
        log.error("%s", message)
    else:
        print(f"gateway: {message}", file=sys.stderr)


class StdoutClosed(Exception):
    """stdout's reader went away (``gateway buffer export | head -1``): not an error."""


@contextlib.contextmanager
def _stdout() -> Iterator[None]:
    """Write to stdout in this block; if the reader has gone, end the command quietly.

    As the Python docs advise (the signal module's note on SIGPIPE), stdout then
    points at /dev/null, so that the interpreter's flush at exit fails no more.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        raise StdoutClosed from None


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, buffer_dir=getattr(args, "buffer_dir", None))


def cmd_run(args: argparse.Namespace) -> int:
    """``gateway run``: the daemon."""
    from gateway.daemon import Gateway

    cfg = _load(args)
    gateway = Gateway(cfg)
    gateway.early_signals = EARLY_SIGNALS
    # The tens of thousands of objects the imports made live as long as the
    # process: keep the garbage collector from scanning them again and again
    # (about a tenth of the daemon's CPU at field rate, `make bench`).
    gc.freeze()
    # A worker thread (an InfluxDB request, a SQLite commit) must not hold the
    # GIL for the default 5 ms while the next packet waits to be published:
    # that was the p99 of line → broker latency (`make bench`).
    sys.setswitchinterval(0.0005)
    trio.run(gateway.run)
    # Records that never reached the disk were lost: say so to systemd too.
    return EXIT_DATA_LOST if gateway.lost_records else EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    """``gateway simulate``: firmware-format lines on stdout."""
    from gateway import simulate

    return simulate.run(interval=args.interval, count=args.count, seed=args.seed)


def cmd_check(args: argparse.Namespace) -> int:
    """``gateway check``: validate config and reach broker and database."""
    from gateway.check import check

    cfg = _load(args)
    return trio.run(check, cfg)


def _received_ns(sink: str, value: str) -> int | None:
    """The best-known receive time a buffered record carries; None if it does not parse."""
    from gateway.records import point_time_ns, split_record

    try:
        return split_record(value)[0].wall_ns if sink == "mqtt" else point_time_ns(value)
    except (ValueError, IndexError):
        return None


def export_line(sink: str, record: Record) -> str:
    """One record as a line of ``gateway buffer export`` (see README, "Running it").

    ``received_ns`` is the best-known receive time; ``stamp`` is the record's
    stamp as stored (with boot and boottime while the clock was not known
    right), so that an import keeps what is needed to correct it.
    """
    from gateway.records import point_line, split_point, split_record

    doc: dict[str, object] = {
        "sink": sink,
        "seq": record.key,
        "received_ns": _received_ns(sink, record.value),
    }
    if doc["received_ns"] is None:
        doc["record"] = record.value
        return json.dumps(doc)
    doc["stamp"] = record.value.split(" ", 1)[0]
    if sink == "mqtt":
        _, doc["topic"], doc["payload"] = split_record(record.value)
    else:
        stamp, body = split_point(record.value)
        doc["line"] = point_line(body, stamp.wall_ns)
    return json.dumps(doc)


def cmd_buffer(args: argparse.Namespace) -> int:
    """``gateway buffer stats|export``: what is waiting on disk, read without writing."""
    from gateway.buffer import StoreError, StoreReader

    buffer_dir = Path(args.buffer_dir or _load(args).gateway.buffer_dir)
    sinks = [args.sink] if args.sink else ["mqtt", "influx"]
    now = time.time_ns()
    report: dict[str, dict[str, float | int | None]] = {}
    try:
        # Reading while a gateway runs is safe: SQLite WAL lets readers in.
        with StoreReader(buffer_dir) as store, _stdout():
            for sink in sinks:
                if args.action == "export":
                    for rec in store.records(sink):
                        sys.stdout.write(export_line(sink, rec) + "\n")
                    continue
                first = store.oldest(sink)
                ns = _received_ns(sink, first.value) if first is not None else None
                report[sink] = {
                    "records": store.count(sink),
                    # One file holds every sink's buffer: this is its size.
                    "bytes": store.disk_bytes(),
                    "oldest_age_seconds": None if ns is None else round((now - ns) / 1e9, 3),
                }
    except FileNotFoundError:
        _error(f"buffer directory {buffer_dir} does not exist")
        return EXIT_FAILURE
    except StoreError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        _error(f"cannot read buffer directory {buffer_dir}: {exc.strerror or exc}")
        return EXIT_FAILURE
    if args.action == "stats":
        dead = buffer_dir / "dead-letter" / "influx.lp"
        dead_count = 0
        if dead.exists():
            with open(dead, "rb") as f:
                dead_count = sum(1 for _ in f)
        report["dead_letter"] = {"influx": dead_count}
        with _stdout():
            if args.json:
                print(json.dumps(report))
            else:
                for sink, row in report.items():
                    print(f"{sink:12} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    return EXIT_OK


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
    """The status document as a line and tables; every value is plain text, not markup.

    Active alerts, when there are any, come right after the first line.
    """
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
        "delivered",
        "dropped",
        "dead letters",
        Column("last error", overflow="fold"),
    )
    for name, s in doc["sinks"].items():
        up = s.get("connected", s.get("healthy"))
        sinks.add_row(
            cell(name),
            cell(s["target"]),
            cell({True: "yes", False: "no"}.get(up, "?")),
            cell(s["backlog"]),
            cell(s["oldest_age_s"] or "-"),
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
    parts: list[Text | Table] = [line, sinks, values]
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
        parts.insert(1, alerts)
    return parts


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text!r}")
    return value


DESCRIPTION = (
    "The iiot-gateway edge gateway: Node 2 LoRa sensor readings to MQTT and InfluxDB, "
    "through disk buffers that survive outages."
)
EPILOG = (
    "exit status: 0 done; 1 failed (a server unreachable, a buffer store unreadable or "
    "corrupt, an unexpected error); 2 bad usage or an invalid config; "
    "3 (run) records that never reached the disk were lost. "
    'Run "gateway COMMAND --help" for a command\'s options.'
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gateway`` command."""
    p = argparse.ArgumentParser(prog="gateway", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least severe log messages shown (default: info)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="logs, config errors and crashes on stderr as text lines or one JSON object a line "
        "(default: text)",
    )
    sub = p.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="the command to run"
    )

    run = sub.add_parser(
        "run",
        help="run the gateway daemon",
        description="Run the gateway daemon until SIGTERM or SIGINT (then exit 0).",
    )
    run.add_argument("--config", help=CONFIG_HELP)
    run.add_argument("--buffer-dir", help="override [gateway] buffer_dir")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser(
        "simulate",
        help="print simulated Node 2 lines",
        description="Print firmware-format Node 2 lines with plausible values on stdout.",
    )
    sim.add_argument(
        "--interval",
        type=non_negative_float,
        default=1.0,
        help="seconds between lines, 0 for as fast as possible (default: 1)",
    )
    sim.add_argument(
        "--count", type=non_negative_int, default=None, help="stop after N lines (default: never)"
    )
    sim.add_argument("--seed", type=int, default=None, help="random seed (repeatable output)")
    sim.set_defaults(func=cmd_simulate)

    chk = sub.add_parser(
        "check",
        help="validate config and reach broker + database",
        description="Validate the config, then connect to the MQTT broker and InfluxDB once.",
    )
    chk.add_argument("--config", help=CONFIG_HELP)
    chk.set_defaults(func=cmd_check)

    st = sub.add_parser(
        "status",
        help="show a running gateway's state",
        description="Show a running gateway's /api/status as tables.",
    )
    st.add_argument(
        "--url",
        default="127.0.0.1:9108",
        help="the [status] listen address (host:port) or a URL (default: 127.0.0.1:9108)",
    )
    st.set_defaults(func=cmd_status)

    buf = sub.add_parser(
        "buffer",
        help="inspect the disk buffers",
        description="Inspect the disk buffers without changing them (safe while a gateway runs).",
    )
    buf.add_argument(
        "action",
        choices=["stats", "export"],
        help="stats: records waiting per sink; export: every waiting record as a JSON line",
    )
    buf.add_argument("--config", help=CONFIG_HELP + "; read for its [gateway] buffer_dir")
    buf.add_argument("--buffer-dir", help="the buffer directory (default: from the config)")
    buf.add_argument("--sink", choices=["mqtt", "influx"], help="only this sink's buffer")
    buf.add_argument("--json", action="store_true", help="stats as one JSON object")
    buf.set_defaults(func=cmd_buffer)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script."""
    args = build_parser().parse_args(argv)
    if args.command != "run":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if EARLY_SIGNALS:
            return 128 + signal.SIGTERM
    global _log_format
    setup_logging(args.log_level, args.log_format)
    _log_format = args.log_format
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _error(f"config error: {exc}")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    except StdoutClosed:
        return EXIT_OK
    except Exception:
        log.exception("gateway %s failed", args.command)
        return EXIT_FAILURE
