"""`make screenshot`: the status page of a gateway on a bad day, captured by headless Chromium.

Two runs of `gateway run` on one buffer directory, with the status page on a
free port and no broker or database (their ports refuse):

1. a simulated Node 2 with a threshold rule every reading passes, so that an
   alert fires (and the store keeps it);
2. a source whose program is not installed (probe-rs, with a PATH that lacks
   it): the source fails and says why, the alert is still firing (restored from
   the store), and no delivery is possible.

The page of run 2 is then captured twice at 1280×1600: without JavaScript
(the HTML the server sent, its script removed: the first paint alone) and with
it (a virtual-time budget, so the script has rendered). The second is the
README's picture.

Usage: python ops/screenshot.py OUT_DIR [README_IMAGE]
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1600",
]


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(work: Path, port: int, command: list[str]) -> Path:
    """A config for one run: servers that refuse, the page on ``port``."""
    path = work / f"config-{command[0].rsplit('/', 1)[-1]}.toml"
    path.write_text(
        f"""[gateway]
id = "gw-demo"
buffer_dir = "{work / "buffer"}"
clock_sync = "none"
stats_interval = 0.0

[source]
kind = "command"
command = {json.dumps(command)}
restart_initial = 1.0
restart_max = 5.0

[mqtt]
host = "127.0.0.1"
port = {free_port()}

[influxdb]
url = "http://127.0.0.1:{free_port()}"
org = "demo"
bucket = "telemetry"

[status]
listen = "127.0.0.1:{port}"
unhealthy_after = 5.0  # unhealthy soon, so the capture need not wait a minute

[[alerts.rule]]
name = "greenhouse-hot"
metric = "node2/temperature"
above = 20.0
""",
        encoding="utf-8",
    )
    return path


def status(port: int) -> dict[str, Any] | None:
    """The gateway's /api/status, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
            return dict(json.load(r))
    except OSError:
        return None


def run_until(cfg: Path, port: int, done: Any, env: dict[str, str], limit: float = 60) -> None:
    """`gateway run` until ``done(status document)`` holds, then stop it (SIGTERM)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            doc = status(port)
            if doc is not None and done(doc):
                return
            time.sleep(0.5)
        raise SystemExit(f"screenshot: the gateway never reached the state wanted ({cfg})")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def capture(url: str, png: Path, *mode: str) -> None:
    """One Chromium capture of ``url`` into ``png``, with a new empty profile."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with tempfile.TemporaryDirectory(prefix="profile-") as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                *mode,
                f"--screenshot={png}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


@contextlib.contextmanager
def failing_gateway(work: Path, port: int) -> Iterator[dict[str, Any]]:
    """Runs 1 and 2 above; yields run 2's status document once it is unhealthy."""
    # A PATH without probe-rs, whatever this machine has installed.
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    simulate = [sys.executable, "-m", "gateway", "simulate", "--interval", "0.2"]
    run_until(
        config(work, port, simulate),
        port,
        lambda doc: bool(doc["alerts"]) and len(doc["values"]) >= 2,
        env,
    )
    failing = config(work, port, ["probe-rs", "attach", "--chip", "STM32F446RETx", "node2.elf"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(failing)],
        cwd=REPO,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            doc = status(port)
            if doc and doc["source"]["last_error"] and doc["alerts"] and not doc["healthy"]:
                break
            if time.monotonic() > deadline:
                raise SystemExit("screenshot: the failing gateway never became unhealthy")
            time.sleep(0.5)
        yield doc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main(argv: list[str]) -> int:
    """Make both captures; copy the JavaScript one to README_IMAGE if given."""
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="screenshot-") as tmp, failing_gateway(Path(tmp), port):
        url = f"http://127.0.0.1:{port}/"
        # This Chromium's headless screenshot writes nothing while scripts are
        # disabled, so the first paint is captured from the page as served with
        # its script cut out: the server's HTML alone, no JS.
        with urllib.request.urlopen(url, timeout=5) as r:
            served = r.read().decode("utf-8")
        first_paint = out / "status-page-nojs.html"
        first_paint.write_text(re.sub(r"<script>.*?</script>", "", served, flags=re.S))
        capture(first_paint.resolve().as_uri(), out / "status-page-nojs.png")
        capture(url, out / "status-page.png", "--virtual-time-budget=5000")
    if len(argv) > 1:
        shutil.copyfile(out / "status-page.png", argv[1])
    print(f"screenshot: {out / 'status-page-nojs.png'} (no JavaScript), {out / 'status-page.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
