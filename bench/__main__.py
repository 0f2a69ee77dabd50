"""`make bench`: drain after an outage, sustained ingest, field-rate footprint, start-up.

Each benchmark starts its own Mosquitto and VictoriaMetrics, runs the real
`gateway run` process and measures it from outside (/proc, an independent
subscriber). Results go to bench/results.md and stdout.

Without a subcommand, every benchmark runs (`make bench`). Subcommands run one:

- ``drain``: the drain rows (bench/drain.py);
- ``field``: the field-rate rows, durability full with write_delay 0 and 2
  (bench/field.py; ``footprint`` is the old name);
- ``scale``: the sustained-ingest search (bench/scale.py);
- ``startup``: start-up to the first message (bench/startup.py);
- ``window``: the drain for several ``mqtt.max_inflight``, a table on stdout
  only (bench/window.py; the default window's basis, not part of `make bench`);
- ``fleet``: bench/fleet.py's own ``main(argv)``, given the arguments after
  ``fleet``; imported only when asked for.

Each module is imported only by the subcommand that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from bench.report import RESULTS, Row, report


def run_all(rows: list[Row]) -> None:
    """Every row of `make bench`, in the order of bench/results.md."""
    from bench.drain import drain_rows
    from bench.field import footprint_rows
    from bench.scale import sustained_rows
    from bench.startup import startup_rows

    drain_rows(rows)
    sustained_rows(rows)
    for durability in ("full", "normal"):
        footprint_rows(rows, durability)
    footprint_rows(rows, "full", write_delay=2.0)
    startup_rows(rows)


def fleet(argv: list[str]) -> int:
    """`python -m bench fleet ...`: hand the rest of the command line to bench.fleet."""
    try:
        module = importlib.import_module("bench.fleet")
    except ModuleNotFoundError as exc:
        if exc.name != "bench.fleet":
            raise
        print("python -m bench fleet: not available (no bench/fleet.py here)", file=sys.stderr)
        return 2
    return int(module.main(argv))


def parser() -> argparse.ArgumentParser:
    """The command line: no subcommand is the whole of `make bench`."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of the real `gateway run` process against real servers.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="where the results table goes (default: bench/results.md)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    drain = sub.add_parser("drain", help="the drain after an outage, on every path")
    drain.add_argument("--runs", type=int, default=None, help="runs per path (default 3)")
    field = sub.add_parser(
        "field", aliases=["footprint"], help="field-rate footprint, durability full"
    )
    field.add_argument("--runs", type=int, default=None, help="runs per case (default 2)")
    field.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per run (default 60)"
    )
    scale = sub.add_parser("scale", help="sustained ingest: the highest rate kept up")
    scale.add_argument(
        "--seconds", type=float, default=None, help="seconds at each rate (default 60)"
    )
    startup = sub.add_parser("startup", help="start-up to the first message")
    startup.add_argument("--runs", type=int, default=None, help="start-ups (default 5)")
    window = sub.add_parser("window", help="drain rate for several mqtt.max_inflight (stdout)")
    window.add_argument("--runs", type=int, default=None, help="runs per point (default 3)")
    sub.add_parser("fleet", help="many gateways at once (bench/fleet.py), if present")
    return p


def main(argv: list[str]) -> int:
    """Run what ``argv`` asks for; see the module docstring."""
    if argv[:1] == ["fleet"]:  # its options are its own
        return fleet(argv[1:])
    args = parser().parse_args(argv)
    given = {k: v for k, v in vars(args).items() if k in ("runs", "seconds") and v is not None}
    if args.command == "window":
        from bench.window import window_sweep

        window_sweep(**given)
        return 0
    started = time.time()
    rows: list[Row] = []
    if args.command == "drain":
        from bench.drain import drain_rows

        drain_rows(rows, **given)
    elif args.command in ("field", "footprint"):
        from bench.field import field_rows

        field_rows(rows, **given)
    elif args.command == "scale":
        from bench.scale import sustained_rows

        sustained_rows(rows, **given)
    elif args.command == "startup":
        from bench.startup import startup_rows

        startup_rows(rows, **given)
    else:
        run_all(rows)
    report(rows, started, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
