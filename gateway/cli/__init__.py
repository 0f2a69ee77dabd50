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
import gc  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import trio  # noqa: E402

from gateway import __version__  # noqa: E402
from gateway.cli.buffer import cmd_buffer, cmd_replay  # noqa: E402
from gateway.cli.common import (  # noqa: E402
    CONFIG_HELP,
    EXIT_CONFIG,
    EXIT_DATA_LOST,
    EXIT_FAILURE,
    EXIT_IN_USE,
    EXIT_OK,
    STATE,
    StdoutClosed,
    _error,
    _load,
    _stdout,
    log,
    setup_logging,
)
from gateway.cli.homeassistant import cmd_homeassistant  # noqa: E402
from gateway.cli.status import cmd_status  # noqa: E402
from gateway.errors import BufferDirInUse, ConfigError  # noqa: E402

__all__ = ["build_parser", "main"]


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
    try:
        trio.run(gateway.run)
    except BufferDirInUse as exc:
        _error(str(exc))
        return EXIT_IN_USE
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
    "3 (run) records that never reached the disk were lost; "
    "4 (run) another gateway runs on the buffer directory. "
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
        "published (its entities disappear from Home Assistant). Refused while a gateway "
        "with this config runs, unless --force.",
    )
    ha.add_argument("--config", help=CONFIG_HELP)
    ha.add_argument(
        "--remove", action="store_true", required=True, help="clear every retained config"
    )
    ha.add_argument(
        "--force",
        action="store_true",
        help="remove even while a gateway with this config runs (it publishes them "
        "again at its next connect if its discovery is on)",
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
        help="a port on this machine, the [status] listen address (host:port) or a URL "
        "(default: 127.0.0.1:9108)",
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
    buf.add_argument(
        "--force",
        action="store_true",
        help="import: import a file again although the store remembers importing it",
    )
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

    setup_logging(args.log_level, args.log_format)
    STATE.log_format = args.log_format
    try:
        # Every command, whatever it prints: `gateway check | head -1` is not a failure.
        with _stdout():
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
