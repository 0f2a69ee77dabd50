"""The status page, rendered by a real headless Chromium against a live gateway."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
import trio

from tests.services import Broker, Tsdb
from tests.test_status import eventually, get_json, running_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(url: str, profile: Path, *mode: str) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium on ``url`` (no network beyond the loopback server)."""
    assert CHROMIUM, "Debian package `chromium` is needed (ops/install-deps.sh installs it)"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--virtual-time-budget=5000",
        *mode,
        url,
    ]
    return subprocess.run(argv, capture_output=True, timeout=120, check=True)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG: width, height and one bytes object per row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = bpp = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8, f"unsupported PNG bit depth {depth}"
            assert colour in (2, 6), f"unsupported PNG colour type {colour}"
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind_byte, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind_byte == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind_byte == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind_byte == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind_byte == 4:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                up_left = prev[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def test_png_decoder_on_a_known_image() -> None:
    # 2×1 RGB: red, blue, with the Sub filter.
    raw = b"\x01" + bytes([255, 0, 0, 1, 0, 255])
    ihdr = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    assert png_pixels(png) == (2, 1, [bytes([255, 0, 0, 0, 0, 255])])


async def test_status_page_renders_live_values(tmp_path: Path, broker: Broker, tsdb: Tsdb) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run ops/install-deps.sh")
    with trio.fail_after(180):
        async with running_gateway(tmp_path, broker, tsdb) as (_, port):

            async def has_values() -> bool:
                doc = (await get_json(port, "/api/status"))[1]
                t = doc["values"].get("node1", {}).get("temperature")
                return bool(t and len(t["history"]) >= 3 and doc["sinks"]["mqtt"]["connected"])

            await eventually(has_values, 20, "a few packets in /api/status")
            url = f"http://127.0.0.1:{port}/"

            dom = await trio.to_thread.run_sync(
                chromium, url, tmp_path / "profile-dom", "--dump-dom"
            )
            html = dom.stdout.decode()
            # Rows the page's script built from /api/status.
            assert 'data-node="node1" data-metric="temperature"' in html
            assert 'data-node="node2" data-metric="pressure"' in html
            assert 'data-node="signal" data-metric="rssi"' in html
            assert "<polyline" in html  # sparklines drawn
            assert ">healthy<" in html
            assert ">connected<" in html

            png = tmp_path / "status.png"
            await trio.to_thread.run_sync(
                chromium, url, tmp_path / "profile-shot", f"--screenshot={png}"
            )

    assert png.exists()
    data = png.read_bytes()
    assert len(data) > 10_000
    width, height, rows = png_pixels(data)
    assert (width, height) == (1280, 900)
    colours = {row[i : i + 3] for row in rows[::7] for i in range(0, len(row), 12)}
    assert len(colours) > 20, "the screenshot is (nearly) a single colour"


def test_the_page_is_served_with_the_state_in_it(tmp_path: Path) -> None:
    # Without JavaScript: the HTML at / already says what failed, what fires and
    # the badge (the gateway `make screenshot` captures, see ops/screenshot.py).
    import importlib.util
    import urllib.request

    from tests.support import REPO

    spec = importlib.util.spec_from_file_location("screenshot", REPO / "ops" / "screenshot.py")
    assert spec is not None
    assert spec.loader is not None
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    port = shot.free_port()
    with (
        shot.failing_gateway(tmp_path, port) as doc,
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r,
    ):
        html = r.read().decode("utf-8")
    assert doc["summary"] == "UNHEALTHY · 1 alert firing"
    assert "last error: cannot start probe-rs: No such file or directory (since " in html
    assert 'data-alert="greenhouse-hot"' in html
    assert "ALERT greenhouse-hot" in html
    assert '<span id="health" class="badge bad">UNHEALTHY · 1 alert firing</span>' in html
    assert "loading…" not in html
    assert ">failed<" in html  # the source card's badge
