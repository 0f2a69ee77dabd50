"""What every ``gateway`` command shares: logging, operator errors, stdout, config loading."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator

from gateway.config import Config, load_config

log = logging.getLogger("gateway")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_DATA_LOST = 0, 1, 2, 3
# `gateway run`: another gateway runs on the buffer directory. Its own code, so
# that a script (or systemd) can tell "already running" from "failed".
EXIT_IN_USE = 4
CONFIG_HELP = "config file (default $GATEWAY_CONFIG or ./config.toml)"


class _State:
    log_format = "text"  # set by main(): how _error() speaks


STATE = _State()


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
    if STATE.log_format == "json":
        log.error("%s", message)
    else:
        print(f"gateway: {message}", file=sys.stderr)


class StdoutClosed(Exception):
    """stdout's reader went away (``gateway buffer export | head -1``): not an error."""


@contextlib.contextmanager
def _stdout() -> Iterator[None]:
    """Write to stdout in this block; if the reader has gone, end the command quietly.

    :func:`gateway.cli.main` runs every command inside one, so a command needs
    its own only where it must stop writing at once (an export mid-stream).

    As the Python docs advise (the signal module's note on SIGPIPE), stdout then
    points at /dev/null, so that the interpreter's flush at exit fails no more.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        raise StdoutClosed from None
    except BaseExceptionGroup as group:
        # A command that prints from Trio tasks (`gateway check`) raises the
        # broken pipe inside a group: it is the same closed reader.
        _, rest = group.split((BrokenPipeError, StdoutClosed))
        if rest is not None:
            raise
        _stdout_to_devnull()
        raise StdoutClosed from None


def _stdout_to_devnull() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, buffer_dir=getattr(args, "buffer_dir", None))
