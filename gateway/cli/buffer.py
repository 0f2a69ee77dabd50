"""``gateway buffer stats|export|import|resend-dead`` and ``gateway replay``."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from gateway.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    _error,
    _load,
    _stdout,
    log,
)

if TYPE_CHECKING:
    from gateway.buffer import Record, StoreReader


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
    from gateway.capture import boot_line

    for key, (boot_id, offset) in store.boots().items():
        if offset is not None:
            sys.stdout.write(boot_line(key, boot_id, offset) + "\n")


def _buffer_target(args: argparse.Namespace) -> tuple[Path, dict[str, int]]:
    """The buffer directory to write and each buffer's bound (from the config, if read)."""
    from gateway.config.sections import InfluxSection, MqttSection

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
    *,
    digest: str | None = None,
    force: bool = False,
) -> dict[str, int] | None:
    """Append to the store in one transaction; None (reported) if it cannot be done."""
    from gateway.buffer import (
        STORE_ERRORS,
        AlreadyImported,
        BufferFull,
        StoreInUse,
        import_records,
    )

    try:
        return import_records(
            buffer_dir, batches, bounds=bounds, boots=boots, digest=digest, force=force
        )
    except (StoreInUse, BufferFull, AlreadyImported) as exc:
        _error(str(exc))
    except STORE_ERRORS as exc:
        _error(f"cannot write the buffer store in {buffer_dir}: {exc}")
    return None


def cmd_buffer_import(args: argparse.Namespace) -> int:
    """``gateway buffer import FILE``: an export's records back into the buffers, stamps kept."""
    from gateway.capture import CaptureError, read_export

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
    # The file's digest: the store refuses the same export twice (unless --force).
    digest = hashlib.sha256(data).hexdigest()
    added = _write_store(buffer_dir, bounds, batches, boots, digest=digest, force=args.force)
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
    from gateway.capture import dead_letter_path, read_dead_letters, set_aside

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
    from gateway.buffer.cachefile import DEAD_SUFFIX
    from gateway.capture import DEAD_LETTER_FILES
    from gateway.deadletter import DEAD_LETTER_DIR, DeadLetterFile

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
                    # One file holds every sink's buffer: this is its size. Kept
                    # per sink for scripts that read it; `store_bytes` says it once.
                    "bytes": store.disk_bytes(),
                    "oldest_age_seconds": None if ns is None else round((now - ns) / 1e9, 3),
                }
            store_size = store.disk_bytes()
            # Dead letters the file refused, kept in the store until it takes them.
            waiting = {sink: store.count(sink + DEAD_SUFFIX) for sink in sinks}
    except FileNotFoundError:
        _error(f"buffer directory {buffer_dir} does not exist")
        return EXIT_FAILURE
    except StoreError as exc:
        _error(str(exc))
        if exc.corrupt and args.action == "stats":
            _salvage_estimate(buffer_dir, sinks, as_json=args.json)
        return EXIT_FAILURE
    except OSError as exc:
        _error(f"cannot read buffer directory {buffer_dir}: {exc.strerror or exc}")
        return EXIT_FAILURE
    if args.action == "stats":
        report["dead_letter"] = {
            sink: DeadLetterFile(buffer_dir / DEAD_LETTER_DIR / DEAD_LETTER_FILES[sink]).count()
            for sink in sinks
        }
        report["dead_waiting"] = dict(waiting)
        with _stdout():
            if args.json:
                print(json.dumps({**report, "store_bytes": store_size}))
            else:
                # Text is for people: the store's size once, not once a sink,
                # and "-" for an age that does not exist (JSON keeps null).
                for sink, row in report.items():
                    shown = {k: "-" if v is None else v for k, v in row.items() if k != "bytes"}
                    print(f"{sink:12} " + "  ".join(f"{k}={v}" for k, v in shown.items()))
                print(f"{'store_bytes':12} {store_size}")
    return EXIT_OK


def _salvage_estimate(buffer_dir: Path, sinks: list[str], *, as_json: bool) -> None:
    """What a gateway would salvage from the corrupt store in ``buffer_dir``, per buffer.

    Read from a copy in a temporary directory elsewhere: nothing is written
    in the buffer directory, and the store stays as it is for the gateway.
    """
    import sqlite3

    from gateway.buffer import STORE_FILE
    from gateway.buffer.recovery import salvage

    try:
        found = salvage(buffer_dir / STORE_FILE, sinks)
    except (OSError, sqlite3.Error) as exc:
        _error(f"cannot read it for a salvage estimate: {exc}")
        return
    report = {
        sink: {"corrupt": True, "recoverable": found.count(sink), "lost": found.lost[sink]}
        for sink in sinks
    }
    for sink, row in report.items():
        _error(
            f"{sink}: {row['recoverable']} record(s) look recoverable, {row['lost']} lost "
            "(`gateway run` salvages them into a new store and keeps this file)"
        )
    if as_json:
        with _stdout():
            print(json.dumps(report))


def cmd_replay(args: argparse.Namespace) -> int:
    """``gateway replay FILE``: a capture or an export to broker and database, stamps kept."""
    from gateway.capture import DEAD_LETTER_FILES, CaptureError, read_capture
    from gateway.replay import replay

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
