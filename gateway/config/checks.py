"""Value checks for :mod:`gateway.config`: the range of every number, addresses, TLS files.

Each check raises :class:`ConfigError` naming the dotted key at fault, at load,
instead of a struct.error, OverflowError or SSLError in a sink later on.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import termios
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import Config, MqttSection

# Seconds. Below MIN_DELAY a sleep is a busy loop; beyond MAX_DELAY a backoff or
# flush is no longer a delay but an outage; MAX_WINDOW bounds the watchdogs.
MIN_DELAY = 0.01
MAX_DELAY = 3600.0
MAX_WINDOW = 86_400.0
# A network timeout shorter than this fails on any real link.
MIN_TIMEOUT = 0.1
MAX_TIMEOUT = 600.0
# The gateway's own stats points; the end-to-end test asks for 0.3 s.
MIN_STATS_INTERVAL = 0.1
# Write-behind: below 0.1 s it saves nothing; beyond 60 s a kill -9 could cost
# a minute of readings, more than the buffer is there to protect against.
MIN_WRITE_DELAY = 0.1
MAX_WRITE_DELAY = 60.0
# MQTT's keepalive is a 16-bit field; below 5 s the pings are most of the traffic,
# and 0 (off) would hide a broker that accepts TCP and then hangs.
MIN_KEEPALIVE = 5
MAX_KEEPALIVE = 65535
MAX_PORT = 65535
# Replay pace, lines per second (0 = as fast as possible).
MIN_RATE = 0.001
MAX_RATE = 1_000_000.0
# termios' slowest and fastest speeds on Linux.
MIN_BAUD = 50
MAX_BAUD = 4_000_000
MIN_LINE_BYTES = 64
MAX_LINE_BYTES = 16 * 1024 * 1024
# A group's freshness; below a second every gap between two packets would be "stale".
MIN_STALE_AFTER = 1.0
# Records a disk buffer may hold; beyond 10^8 the SQLite file outgrows a gateway's disk.
MAX_BUFFER_RECORDS = 100_000_000
# MQTT packet identifiers are 16-bit (0 is not one): no more can be in flight at once.
MAX_INFLIGHT = 65535
# MQTT 5's Message Expiry Interval is a four-byte integer (seconds).
MAX_MESSAGE_EXPIRY = 2**32 - 1
# Points per write; InfluxDB advises about 5000, ten times that still fits a request.
MAX_BATCH_SIZE = 50_000
# Host names: RFC 1123 labels (plus '_', which resolvers accept), at most 253 characters.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")


@dataclass(frozen=True)
class Range:
    """The values one number may take: ``lo..hi`` inclusive, and 0 too when ``zero_is_off``."""

    lo: float
    hi: float
    zero_is_off: bool = False

    def admits(self, value: float) -> bool:
        """Whether ``value`` is allowed (never for NaN)."""
        return (self.zero_is_off and value == 0) or self.lo <= value <= self.hi

    def describe(self) -> str:
        """The range as an error message says it: ``0 (off) or 0.1..86400``."""
        span = f"{_num(self.lo)}..{_num(self.hi)}"
        return f"0 (off) or {span}" if self.zero_is_off else span


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# Every int and float field of the config, by dotted key; a test holds new
# fields to having an entry here.
RANGES: dict[str, Range] = {
    "gateway.stats_interval": Range(MIN_STATS_INTERVAL, MAX_WINDOW, zero_is_off=True),
    "gateway.write_delay": Range(MIN_WRITE_DELAY, MAX_WRITE_DELAY, zero_is_off=True),
    "source.rate": Range(MIN_RATE, MAX_RATE, zero_is_off=True),
    "source.baud": Range(MIN_BAUD, MAX_BAUD),
    "source.stall_timeout": Range(MIN_TIMEOUT, MAX_WINDOW, zero_is_off=True),
    "source.restart_initial": Range(MIN_DELAY, MAX_DELAY),
    "source.restart_max": Range(MIN_DELAY, MAX_DELAY),
    "source.max_line_bytes": Range(MIN_LINE_BYTES, MAX_LINE_BYTES),
    "mqtt.port": Range(1, MAX_PORT),
    "mqtt.qos": Range(0, 2),
    "mqtt.keepalive": Range(MIN_KEEPALIVE, MAX_KEEPALIVE),
    "mqtt.connect_timeout": Range(MIN_TIMEOUT, MAX_TIMEOUT),
    "mqtt.buffer_max_messages": Range(1, MAX_BUFFER_RECORDS),
    "mqtt.max_inflight": Range(1, MAX_INFLIGHT),
    "mqtt.message_expiry": Range(0, MAX_MESSAGE_EXPIRY),
    "mqtt.backoff_initial": Range(MIN_DELAY, MAX_DELAY),
    "mqtt.backoff_max": Range(MIN_DELAY, MAX_DELAY),
    "influxdb.batch_size": Range(1, MAX_BATCH_SIZE),
    "influxdb.flush_interval": Range(MIN_DELAY, MAX_DELAY),
    "influxdb.buffer_max_points": Range(1, MAX_BUFFER_RECORDS),
    "influxdb.backoff_initial": Range(MIN_DELAY, MAX_DELAY),
    "influxdb.backoff_max": Range(MIN_DELAY, MAX_DELAY),
    "influxdb.timeout": Range(MIN_TIMEOUT, MAX_TIMEOUT),
    "status.unhealthy_after": Range(MIN_TIMEOUT, MAX_WINDOW),
    "alerts.stale_after": Range(MIN_STALE_AFTER, MAX_WINDOW, zero_is_off=True),
}
# An [[alerts.rule]]'s `for`: 0 fires on the first value past the threshold.
RULE_FOR = Range(0.0, MAX_WINDOW)


def check_ranges(cfg: Config) -> None:
    """Raise :class:`ConfigError` for the first number outside its :data:`RANGES` entry."""
    for key, allowed in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not allowed.admits(value):
            raise ConfigError(key, f"must be {allowed.describe()}, got {value!r}")
    if not hasattr(termios, f"B{cfg.source.baud}"):
        # open_serial would refuse it on every attempt, forever.
        raise ConfigError("source.baud", f"{cfg.source.baud} is not a standard baud rate")


def valid_host(host: str) -> bool:
    """Whether ``host`` is a host name or an IP address (IPv6 without brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOST_NAME.fullmatch(host))
    return True


def check_listen(listen: str) -> None:
    """Raise :class:`ConfigError` unless ``status.listen`` is ``""`` or ``host:port``.

    Port 0 asks the system for a free port; an IPv6 host goes in brackets.
    """
    if not listen:
        return
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host_ok = ":" in host and valid_host(host[1:-1])
    else:
        host_ok = ":" not in host and valid_host(host)
    if not sep or not host_ok:
        raise ConfigError(
            "status.listen",
            f'expected "host:port" ("[::1]:9108" for IPv6), or "" for off; got {listen!r}',
        )
    if not (port.isascii() and port.isdigit()) or int(port) > MAX_PORT:
        raise ConfigError("status.listen", f"port must be 0..{MAX_PORT}, got {port!r}")


def check_url(url: str) -> None:
    """Raise :class:`ConfigError` unless ``influxdb.url`` is http(s), a host and a valid port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise ConfigError("influxdb.url", f"must be http:// or https:// and a host, got {url!r}")
    try:
        parts.port  # noqa: B018 - reading it validates the port
    except ValueError:
        raise ConfigError("influxdb.url", f"port must be 1..{MAX_PORT}, got {url!r}") from None


def _no_passphrase() -> NoReturn:
    # Without this OpenSSL would prompt on the terminal; the daemon has none to give.
    raise ConfigError("mqtt.key_file", "is encrypted; the gateway needs an unencrypted key")


def _tls_error(key: str, path: str, exc: OSError) -> ConfigError:
    if isinstance(exc, ssl.SSLError):
        return ConfigError(key, f"{path} holds no usable certificate ({exc.reason or 'not PEM'})")
    return ConfigError(key, f"cannot read {path}: {exc.strerror}")


def check_tls(m: MqttSection) -> None:
    """Load the TLS files the way the MQTT sink will, so a bad one fails at start-up.

    Raises:
        ConfigError: naming ``mqtt.ca_file``, ``mqtt.cert_file`` or
            ``mqtt.key_file``; no message quotes a file's contents.
    """
    if bool(m.cert_file) != bool(m.key_file):
        raise ConfigError("mqtt.cert_file", "cert_file and key_file go together")
    if not m.ca_file:
        if m.cert_file:
            # The sink turns TLS on only with ca_file; the client certificate would go unused.
            raise ConfigError("mqtt.cert_file", "a client certificate needs TLS: set mqtt.ca_file")
        return
    try:
        ctx = ssl.create_default_context(cafile=m.ca_file)
    except OSError as exc:  # ssl.SSLError included
        raise _tls_error("mqtt.ca_file", m.ca_file, exc) from None
    if not m.cert_file:
        return
    try:
        # Certificates alone first, so a file without one is named as cert_file, not key_file.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=m.cert_file)
    except OSError as exc:
        raise _tls_error("mqtt.cert_file", m.cert_file, exc) from None
    try:
        ctx.load_cert_chain(m.cert_file, m.key_file, password=_no_passphrase)
    except OSError as exc:
        if not isinstance(exc, ssl.SSLError):
            raise _tls_error("mqtt.key_file", m.key_file, exc) from None
        mismatch = exc.reason == "KEY_VALUES_MISMATCH"
        what = "is not the private key of cert_file" if mismatch else "holds no usable private key"
        raise ConfigError("mqtt.key_file", f"{m.key_file} {what}") from None
