"""``gateway homeassistant --remove``: clear this gateway's discovery configs, unless it runs.

A running gateway publishes every config again at its next connect, so removing
them beside it would only look done. The command refuses while a gateway with
this config runs: its status endpoint answers with this gateway's id, or its
buffer store is locked by it. ``--force`` removes anyway (for a gateway that
runs with discovery switched off, or an operator who means it) and says that a
gateway with discovery on publishes them again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import trio

from gateway.cli.common import EXIT_FAILURE, EXIT_OK, _error, _load
from gateway.config import Config

# The lock file `gateway run` holds (flock) for as long as it runs, where it exists.
RUN_LOCK_FILE = "gateway.lock"
# How long the status endpoint may take to answer before it counts as not running.
STATUS_PROBE_TIMEOUT = 2.0
# A wildcard listen address is reached on the same host through loopback.
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}


def _status_answers(cfg: Config) -> bool:
    """True if the config's status endpoint answers with this gateway's id."""
    import urllib.error
    import urllib.request

    host, sep, port = cfg.status.listen.rpartition(":")
    if not sep or port == "0":
        return False  # off, or a port only the running gateway knows
    host = _WILDCARD_HOSTS.get(host, host)
    url = f"http://{host}:{port}/api/status"
    try:
        with urllib.request.urlopen(url, timeout=STATUS_PROBE_TIMEOUT) as r:
            doc = json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    # Another program (or another gateway) on that port does not stop us.
    return isinstance(doc, dict) and doc.get("gateway", {}).get("id") == cfg.gateway.id


def _locked(path: Path) -> bool:
    """True if another process holds a ``flock`` on ``path`` (which is never created here)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # Exclusive, so that the running gateway's shared lock on its store
        # shows too; released at once.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def running_gateway(cfg: Config) -> str:
    """Why a gateway with this config looks like it runs, or "" when it does not."""
    from gateway.buffer import STORE_FILE

    buffer_dir = Path(cfg.gateway.buffer_dir)
    if _status_answers(cfg):
        return f"gateway {cfg.gateway.id} answers on its status endpoint {cfg.status.listen}"
    for name in (RUN_LOCK_FILE, STORE_FILE):
        if _locked(buffer_dir / name):
            return f"a process holds the lock on {buffer_dir / name}"
    return ""


def cmd_homeassistant(args: argparse.Namespace) -> int:
    """``gateway homeassistant --remove``: clear this gateway's discovery configs."""
    import trio_asyncio

    from gateway.errors import leaf
    from gateway.sinks.mqtt import RETRYABLE, describe_error, remove_discovery

    cfg = _load(args)
    running = running_gateway(cfg)
    if running and not args.force:
        _error(
            f"{running}: a running gateway publishes its Home Assistant configs again at "
            "its next connect. Stop it first (or set [mqtt.homeassistant] enabled = false "
            "and restart it, then pass --force)"
        )
        return EXIT_FAILURE

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
    if running:
        print(
            f"warning: {running}; if its Home Assistant discovery is on, it publishes "
            "them again at its next connect",
            file=sys.stderr,
        )
    return EXIT_OK
