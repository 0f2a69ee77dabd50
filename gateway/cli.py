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
import functools  # noqa: E402
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

    from gateway.buffer import Record, StoreReader

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


def cmd_homeassistant(args: argparse.Namespace) -> int:
    """``gateway homeassistant --remove``: clear this gateway's discovery configs."""
    import trio_asyncio

    from gateway.errors import leaf
    from gateway.sinks.mqtt import RETRYABLE, describe_error, remove_discovery

    cfg = _load(args)

    async def run() -> int:
        with trio.fail_after(cfg.mqtt.connect_timeout + 30):
            async with trio_asyncio.open_loop():
                return await remove_discovery(cfg.mqtt, cfg.gateway.id)

    try:
        removed = trio.run(run)
    except (*RETRYABLE, ExceptionGroup) as exc:
        failure = leaf(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(failure, RETRYABLE):
            raise
        where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
        print(f"gateway: {where}: {describe_error(failure)}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"removed {removed} Home Assistant discovery config(s) of gateway {cfg.gateway.id}")
    return EXIT_OK


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


def _export_boots(store: StoreReader) -> None:
    """The boots whose clock offset the store learned, as the export's first lines.

    A stamp taken while the clock was not known right names its boot; with the
    boot's offset an import or a replay elsewhere can still put it right.
    """
    from gateway.replay import boot_line

    for key, (boot_id, offset) in store.boots().items():
        if offset is not None:
            sys.stdout.write(boot_line(key, boot_id, offset) + "\n")


def _buffer_target(args: argparse.Namespace) -> tuple[Path, dict[str, int]]:
    """The buffer directory to write and each buffer's bound (from the config, if read)."""
    from gateway.config import InfluxSection, MqttSection

    if args.buffer_dir and not args.config:
        # No config to read: the default bounds (a larger bound needs --config).
        mqtt_max = MqttSection.buffer_max_messages
        influx_max = InfluxSection.buffer_max_points
        return Path(args.buffer_dir), {"mqtt": mqtt_max, "influx": influx_max}
    cfg = _load(args)
    bounds = {"mqtt": cfg.mqtt.buffer_max_messages, "influx": cfg.influxdb.buffer_max_points}
    return Path(cfg.gateway.buffer_dir), bounds


def _write_store(
    buffer_dir: Path,
    bounds: dict[str, int],
    batches: dict[str, list[str]],
    boots: Sequence[tuple[str, int | None]] = (),
) -> dict[str, int] | None:
    """Append to the store in one transaction; None (reported) if it cannot be done."""
    import sqlite3

    from gateway.buffer import BufferFull, StoreInUse, import_records

    try:
        return import_records(buffer_dir, batches, bounds=bounds, boots=boots)
    except (StoreInUse, BufferFull) as exc:
        _error(str(exc))
    except (sqlite3.Error, OSError) as exc:
        _error(f"cannot write the buffer store in {buffer_dir}: {exc}")
    return None


def cmd_buffer_import(args: argparse.Namespace) -> int:
    """``gateway buffer import FILE``: an export's records back into the buffers, stamps kept."""
    from gateway.replay import CaptureError, read_export

    if not args.file:
        _error("buffer import: give the export to import (a file, or - for stdin)")
        return EXIT_CONFIG
    buffer_dir, bounds = _buffer_target(args)
    source = "<stdin>" if args.file == "-" else args.file
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        # The whole file is checked before anything is written: a bad line
        # anywhere imports nothing, so the import can simply be run again.
        capture = read_export(data, source)
    except OSError as exc:
        _error(f"cannot read {source}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except CaptureError as exc:
        _error(f"{exc}; nothing was imported")
        return EXIT_FAILURE
    sinks = [args.sink] if args.sink else ["mqtt", "influx"]
    batches = {sink: capture.records[sink] for sink in sinks}
    boots = [(b.boot_id, b.offset_ns) for b in capture.boots]
    added = _write_store(buffer_dir, bounds, batches, boots)
    if added is None:
        return EXIT_FAILURE
    unparsed = f" ({capture.unparsed} that did not parse, as they were)" if capture.unparsed else ""
    with _stdout():
        print(
            f"imported {added.get('mqtt', 0)} MQTT message(s) and {added.get('influx', 0)} "
            f"point(s) into {buffer_dir}{unparsed}"
        )
    return EXIT_OK


def cmd_buffer_resend_dead(args: argparse.Namespace) -> int:
    """``gateway buffer resend-dead``: dead letters back into the buffers, once."""
    from gateway.replay import dead_letter_path, read_dead_letters, set_aside

    buffer_dir, bounds = _buffer_target(args)
    sinks = [args.sink] if args.sink else ["influx", "mqtt"]
    found = {}
    for sink in sinks:
        path = dead_letter_path(buffer_dir, sink)
        try:
            found[sink] = read_dead_letters(path, sink)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _error(f"cannot read {path}: {exc.strerror or exc}")
            return EXIT_FAILURE
        for lineno, why in found[sink].skipped:
            _error(f"{path}:{lineno}: {why}: not sent again")
    batches = {sink: dead.records for sink, dead in found.items() if dead.records}
    if batches and _write_store(buffer_dir, bounds, batches) is None:
        return EXIT_FAILURE
    with _stdout():
        for sink in sinks:
            dead = found.get(sink)
            if dead is None or not dead.records:
                print(f"{sink}: no dead letters to send again")
                continue
            # Set aside once the records are committed: a second run finds no
            # file and sends nothing twice. (A crash in between sends them
            # twice, like any at-least-once delivery.)
            aside = set_aside(dead.path)
            kept = f"; {len(dead.skipped)} line(s) not sent again" if dead.skipped else ""
            print(
                f"{sink}: {len(dead.records)} record(s) back in the buffer, "
                f"{dead.path.name} moved to {aside.name}{kept}"
            )
    return EXIT_OK


def cmd_buffer(args: argparse.Namespace) -> int:
    """``gateway buffer stats|export|import|resend-dead``."""
    if args.action == "import":
        return cmd_buffer_import(args)
    if args.file:
        _error(f"buffer {args.action} takes no file")
        return EXIT_CONFIG
    if args.action == "resend-dead":
        return cmd_buffer_resend_dead(args)
    return _buffer_read(args)


def _buffer_read(args: argparse.Namespace) -> int:
    """``gateway buffer stats|export``: what is waiting on disk, read without writing."""
    from gateway.buffer import StoreError, StoreReader

    buffer_dir = Path(args.buffer_dir or _load(args).gateway.buffer_dir)
    sinks = [args.sink] if args.sink else ["mqtt", "influx"]
    now = time.time_ns()
    report: dict[str, dict[str, float | int | None]] = {}
    try:
        # Reading while a gateway runs is safe: SQLite WAL lets readers in.
        with StoreReader(buffer_dir) as store, _stdout():
            if args.action == "export":
                _export_boots(store)
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


def cmd_replay(args: argparse.Namespace) -> int:
    """``gateway replay FILE``: a capture or an export to broker and database, stamps kept."""
    from gateway.replay import DEAD_LETTER_FILES, CaptureError, read_capture, replay

    cfg = _load(args)
    source = "<stdin>" if args.file == "-" else args.file
    sinks = [args.sink] if args.sink else ["mqtt", "influx"]
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        capture = read_capture(data, source, cfg, now=args.now, sinks=sinks)
    except OSError as exc:
        _error(f"cannot read {source}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except CaptureError as exc:
        _error(f"{exc}; nothing was replayed")
        return EXIT_FAILURE
    if capture.rejected:
        log.warning("replay: %d line(s) rejected as the gateway rejects them", capture.rejected)
    if not capture.count():
        _error(f"{source} holds nothing to replay")
        return EXIT_FAILURE
    try:
        outcome = trio.run(
            functools.partial(
                replay,
                cfg,
                capture,
                stall_after=args.timeout,
                dead_letter_dir=Path(args.dead_letter_dir),
            )
        )
    except KeyboardInterrupt:
        # Not "done" (exit 0), as Ctrl-C is for the other commands.
        _error("replay interrupted: not every record was acknowledged")
        return EXIT_FAILURE
    failed = False
    what = {"mqtt": "MQTT message(s)", "influx": "point(s)"}
    for sink, result in outcome.items():
        failed = failed or not result.ok
        done = result.records - result.left - result.dead_letters
        line = f"{sink}: {done} of {result.records} {what[sink]} delivered"
        if result.unsynced:
            line += f" ({result.unsynced} with their best-known time, tagged clock=unsynced)"
        if result.dead_letters:
            where = Path(args.dead_letter_dir) / DEAD_LETTER_FILES[sink]
            _error(f"{sink}: {result.dead_letters} record(s) refused for good, written to {where}")
        if result.left:
            why = result.error or "no acknowledgement"
            target = cfg.influxdb.url if sink == "influx" else f"{cfg.mqtt.host}:{cfg.mqtt.port}"
            _error(
                f"{sink}: {result.left} of {result.records} {what[sink]} not acknowledged "
                f"by {target} within --timeout {args.timeout:g} s: {why}"
            )
        with _stdout():
            print(line)
    return EXIT_FAILURE if failed else EXIT_OK


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
    return [*parts, sinks, values]


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {text!r}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text!r}")
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

    ha = sub.add_parser(
        "homeassistant",
        help="manage Home Assistant discovery configs",
        description="Clear the retained Home Assistant discovery configs this gateway "
        "published (its entities disappear from Home Assistant).",
    )
    ha.add_argument("--config", help=CONFIG_HELP)
    ha.add_argument(
        "--remove", action="store_true", required=True, help="clear every retained config"
    )
    ha.set_defaults(func=cmd_homeassistant)

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
        help="inspect, export and import the disk buffers",
        description="Inspect and export the disk buffers without changing them (safe while a "
        "gateway runs); import an export, or send dead letters again (stop the gateway first).",
    )
    buf.add_argument(
        "action",
        choices=["stats", "export", "import", "resend-dead"],
        help="stats: records waiting per sink; export: every waiting record as a JSON line; "
        "import FILE: the records of an export into the buffers, with their stamps; "
        "resend-dead: the dead letters back into the buffers (the files are renamed "
        "*.resent-TIME)",
    )
    buf.add_argument(
        "file", nargs="?", help="import: the export to import (- for stdin)", metavar="FILE"
    )
    buf.add_argument(
        "--config", help=CONFIG_HELP + "; read for its [gateway] buffer_dir and buffer bounds"
    )
    buf.add_argument("--buffer-dir", help="the buffer directory (default: from the config)")
    buf.add_argument("--sink", choices=["mqtt", "influx"], help="only this sink's buffer")
    buf.add_argument("--json", action="store_true", help="stats as one JSON object")
    buf.set_defaults(func=cmd_buffer)

    rep = sub.add_parser(
        "replay",
        help="deliver a capture or an export to broker and database",
        description="Deliver the records of an export (gateway buffer export) to the MQTT "
        "broker and InfluxDB with the stamps they carry: MQTT not retained, under the client "
        "id {client_id}-replay. Exit 0 when every record is acknowledged.",
    )
    rep.add_argument("file", metavar="FILE", help="the export or capture to replay (- for stdin)")
    rep.add_argument("--config", help=CONFIG_HELP)
    rep.add_argument(
        "--now",
        action="store_true",
        help="accept raw firmware lines (they carry no time) and stamp them now; "
        "records of an export keep their stamps",
    )
    rep.add_argument("--sink", choices=["mqtt", "influx"], help="replay to this sink only")
    rep.add_argument(
        "--timeout",
        type=positive_float,
        default=60.0,
        help="give up on a sink after this many seconds without an acknowledgement (default: 60)",
    )
    rep.add_argument(
        "--dead-letter-dir",
        default="replay-dead-letter",
        help="where records refused for good are written (default: ./replay-dead-letter, "
        "created only if needed)",
    )
    rep.set_defaults(func=cmd_replay)
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
