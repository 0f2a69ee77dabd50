"""The configuration's sections as frozen dataclasses, with their defaults as named constants.

Every number carries its range in its annotation (``Annotated[int, Range(…)]``,
see :mod:`gateway.config.ranges`). :mod:`gateway.config` loads and checks them;
``config.toml`` is the commented reference of every key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

from gateway.config.ranges import (
    MAX_BATCH_SIZE,
    MAX_BAUD,
    MAX_BUFFER_RECORDS,
    MAX_COVERAGE_HOURS,
    MAX_DELAY,
    MAX_INFLIGHT,
    MAX_KEEPALIVE,
    MAX_LINE_BYTES,
    MAX_MESSAGE_EXPIRY,
    MAX_PORT,
    MAX_RATE,
    MAX_TIMEOUT,
    MAX_WINDOW,
    MAX_WRITE_DELAY,
    MIN_BAUD,
    MIN_COVERAGE_HOURS,
    MIN_DELAY,
    MIN_KEEPALIVE,
    MIN_LINE_BYTES,
    MIN_RATE,
    MIN_STALE_AFTER,
    MIN_STATE_INTERVAL,
    MIN_STATS_INTERVAL,
    MIN_TIMEOUT,
    MIN_WRITE_DELAY,
    Range,
)

DEFAULT_CONFIG_FILE = "config.toml"
CONFIG_ENV = "GATEWAY_CONFIG"
MQTT_PASSWORD_ENV = "GATEWAY_MQTT_PASSWORD"
INFLUX_TOKEN_ENV = "GATEWAY_INFLUXDB_TOKEN"

DEFAULT_BUFFER_DIR = "/var/lib/iiot-gateway"
# systemd-timesyncd touches this file once the clock is synchronised.
DEFAULT_CLOCK_SYNC_FILE = "/run/systemd/timesync/synchronized"
DEFAULT_MQTT_BUFFER_MAX = 1000
DEFAULT_STATE_INTERVAL = 60.0
DEFAULT_MIN_COVERAGE_HOURS = 24.0

ClockSync = Literal["auto", "file", "none"]
"""``[gateway] clock_sync``: which evidence says the wall clock is right (gateway.clock).

``"auto"``: the kernel's NTP status or the flag file; ``"file"``: only the flag
file; ``"none"``: always trust the clock (a box with a battery-backed RTC).
"""

Durability = Literal["full", "normal"]
"""``[gateway] durability``: how the buffer store's SQLite file syncs (gateway.buffer)."""
# QoS1 messages the MQTT sink keeps in flight (see README "Performance").
DEFAULT_MAX_INFLIGHT = 200
# MQTT 5 unless the broker refuses it (then 3.1.1, see gateway.sinks.mqtt).
DEFAULT_MQTT_PROTOCOL: Final = "5"
DEFAULT_INFLUX_BUFFER_MAX = 100_000
DEFAULT_BATCH_SIZE = 10
DEFAULT_FLUSH_INTERVAL = 1.0
# Above Node 2's heartbeat (a line every HEARTBEAT_S seconds without a frame),
# so a quiet radio never restarts probe-rs; only a gone Node 2 or probe does.
DEFAULT_STALL_TIMEOUT = 60.0
HEARTBEAT_S = 30.0
# Seconds without a value before a group that had values raises stale-<group>.
DEFAULT_STALE_AFTER = 300.0
# A rule's name is its alert's name and topic level; "stale-" names the freshness alerts.
STALE_PREFIX = "stale-"
MAX_ALERT_NAME_CHARS = 64
DEFAULT_MAX_LINE_BYTES = 65536
# gateway.id when the host name has nothing usable in it.
FALLBACK_GATEWAY_ID = "gateway"
# The default mqtt.client_id is this plus gateway.id.
CLIENT_ID_PREFIX = "iiot-gateway-"
# A host-name-derived gateway.id is cut to this many characters.
MAX_DERIVED_ID_CHARS = 64
# systemd's per-installation id: what tells two boxes with one host name apart.
DEFAULT_MACHINE_ID_FILE = "/etc/machine-id"
# Hex digits of the machine-id hash in a derived gateway.id: 32 bits, so a fleet
# of a thousand boxes with one host name collides with a chance of about 1e-4.
MACHINE_HASH_CHARS = 8
# The HMAC message that makes the hash ours (see derive_gateway_id).
_MACHINE_HASH_APP = b"iiot-gateway gateway.id"
# MQTT strings (client id, topic) are at most this many UTF-8 bytes.
MAX_MQTT_STRING_BYTES = 65535

DEFAULT_PLAUSIBILITY: dict[str, tuple[float, float]] = {
    "temperature": (-40.0, 85.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1100.0),
    "rssi": (-150.0, 0.0),
    "snr": (-30.0, 30.0),
}

# The ranges several fields share.
Delay = Annotated[float, Range(MIN_DELAY, MAX_DELAY)]
Timeout = Annotated[float, Range(MIN_TIMEOUT, MAX_TIMEOUT)]
BufferBound = Annotated[int, Range(1, MAX_BUFFER_RECORDS)]


def split_server(text: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:1883"`` for IPv6) → ``(host, port)``, the host unbracketed.

    Only the shape is checked here; :mod:`gateway.config.checks` judges the
    host and the port's range.

    Raises:
        ValueError: no port, a port that is not a number, an IPv6 address
            without brackets.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError('expected "host:port" ("[::1]:1883" for IPv6)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 address goes in brackets: "[::1]:1883"')
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"the port must be a number, got {port!r}")
    return host, int(port)


def server_name(host: str, port: int) -> str:
    """``host:port`` as written in ``mqtt.servers`` (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class DerivedId:
    """A ``gateway.id`` the config left out, and how it was made (for the start-up log).

    Attributes:
        value: the id.
        host: the host name it starts with ("" when there was none).
        machine_id: whether the machine id went into it; False means two boxes
            with one host name share it.
        note: why the machine id is missing, when it is.
    """

    value: str
    host: str
    machine_id: bool
    note: str = ""


def _clean_host(name: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:limit].strip("-")


def _read_machine_id(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(machine id, "") or ("", why there is none)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(4096).strip()
    except FileNotFoundError:
        return "", f"{os.fspath(path)} does not exist"
    except OSError as exc:
        return "", f"{os.fspath(path)} is unreadable ({exc.strerror})"
    # systemd writes "uninitialized" before its first boot ends.
    if not text or text == "uninitialized":
        return "", f"{os.fspath(path)} is empty"
    return text, ""


def derive_gateway_id(
    hostname: str | None = None,
    machine_id_file: str | os.PathLike[str] = DEFAULT_MACHINE_ID_FILE,
) -> DerivedId:
    """This box's default ``gateway.id``: host name plus a short hash of its machine id.

    A card image boots every box with one host name (Raspberry Pi OS: ``raspberrypi``),
    so the host name alone gave them one MQTT client id and the broker kept
    throwing one of them off. ``/etc/machine-id`` is made per installation;
    it is hashed with HMAC-SHA256 keyed by it, as systemd asks of ids shown
    outside the box (``sd_id128_get_machine_app_specific``), so the id does
    not give the machine id away. Without a machine id (missing, empty,
    unreadable) the host name alone is used and :attr:`DerivedId.note` says
    why. ``"gateway"`` stands in for a host name with nothing usable in it.

    Args:
        hostname: the host name (default: this machine's).
        machine_id_file: where the machine id is read from.
    """
    if hostname is None:
        try:
            hostname = socket.gethostname()
        except OSError:
            hostname = ""
    machine_id, note = _read_machine_id(machine_id_file)
    if not machine_id:
        host = _clean_host(hostname, MAX_DERIVED_ID_CHARS)
        return DerivedId(host or FALLBACK_GATEWAY_ID, host, False, note)
    digest = hmac.new(machine_id.encode(), _MACHINE_HASH_APP, hashlib.sha256).hexdigest()
    host = _clean_host(hostname, MAX_DERIVED_ID_CHARS - MACHINE_HASH_CHARS - 1)
    value = f"{host or FALLBACK_GATEWAY_ID}-{digest[:MACHINE_HASH_CHARS]}"
    return DerivedId(value, host, True)


def default_gateway_id() -> str:
    """This box's default ``gateway.id`` (see :func:`derive_gateway_id`)."""
    return derive_gateway_id().value


def default_client_id(gateway_id: str) -> str:
    """The ``mqtt.client_id`` used when the config names none.

    A broker disconnects the older of two clients with one id, so the id
    follows ``gateway.id`` rather than being one fixed string.
    """
    return f"{CLIENT_ID_PREFIX}{gateway_id}"


@dataclass(frozen=True)
class GatewaySection:
    """``[gateway]``: identity and buffer storage."""

    id: str = field(default_factory=default_gateway_id)
    buffer_dir: str = DEFAULT_BUFFER_DIR
    # "full": SQLite synchronous=FULL, a commit survives power loss.
    # "normal": WAL + synchronous=NORMAL, fewer writes, survives kill -9 only.
    durability: Durability = "full"
    # Write-behind: seconds a record may live only in memory while its sinks
    # deliver it; records acknowledged within it never touch the disk, and
    # kill -9 or a power cut loses at most the records of the last write_delay
    # seconds (SIGTERM loses nothing). 0 = every record on disk before delivery.
    write_delay: Annotated[float, Range(MIN_WRITE_DELAY, MAX_WRITE_DELAY, zero_is_off=True)] = 0.0
    # Seconds between the gateway's own points (backlog, drops) in InfluxDB; 0 = off.
    stats_interval: Annotated[float, Range(MIN_STATS_INTERVAL, MAX_WINDOW, zero_is_off=True)] = 30.0
    # Seconds between gateway/state messages besides those on connect and on a
    # change; 0 = only those.
    state_interval: Annotated[float, Range(MIN_STATE_INTERVAL, MAX_WINDOW, zero_is_off=True)] = (
        DEFAULT_STATE_INTERVAL
    )
    # Outage hours each buffer should hold at the input rate (gateway.coverage):
    # below it `gateway check` and the log warn. 0 = off.
    min_coverage_hours: Annotated[
        float, Range(MIN_COVERAGE_HOURS, MAX_COVERAGE_HOURS, zero_is_off=True)
    ] = DEFAULT_MIN_COVERAGE_HOURS
    # When the wall clock counts as right (see README "Time and the clock"):
    # "auto": the kernel's NTP status (adjtimex) or clock_sync_file exists;
    # "file": only clock_sync_file; "none": always (a box with a real-time clock).
    clock_sync: ClockSync = "auto"
    clock_sync_file: str = DEFAULT_CLOCK_SYNC_FILE


@dataclass(frozen=True)
class SourceSection:
    """``[source]``: where telemetry lines come from."""

    kind: Literal["command", "stdin", "file", "serial"] = "command"
    command: tuple[str, ...] = (
        "probe-rs",
        "attach",
        "--chip",
        "STM32F446RETx",
        "firmware/build/nucleo-f446re/node2.elf",
    )
    path: str = ""
    rate: Annotated[float, Range(MIN_RATE, MAX_RATE, zero_is_off=True)] = 0.0
    port: str = "/dev/ttyACM0"
    baud: Annotated[int, Range(MIN_BAUD, MAX_BAUD)] = 115200
    stall_timeout: Annotated[float, Range(MIN_TIMEOUT, MAX_WINDOW, zero_is_off=True)] = (
        DEFAULT_STALL_TIMEOUT
    )
    restart_initial: Delay = 1.0
    restart_max: Delay = 30.0
    max_line_bytes: Annotated[int, Range(MIN_LINE_BYTES, MAX_LINE_BYTES)] = DEFAULT_MAX_LINE_BYTES


@dataclass(frozen=True)
class HomeAssistantSection:
    """``[mqtt.homeassistant]``: MQTT discovery for Home Assistant (opt-in)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class MqttSection:
    """``[mqtt]``: the broker, topics and the MQTT buffer bound."""

    host: str = "localhost"
    port: Annotated[int, Range(1, MAX_PORT)] = 1883
    # Several brokers ("host:port" each), instead of host and port: the sink
    # connects to the first that answers and moves to the next when it fails.
    # parse_config sets host and port to the first, for one-off connections.
    servers: tuple[str, ...] = ()
    # Unset in the file: derived from gateway.id (see parse_config).
    client_id: str = field(default_factory=lambda: default_client_id(default_gateway_id()))
    topic_prefix: str = "iiot"
    qos: Annotated[int, Range(0, 2)] = 1
    retain: bool = True
    keepalive: Annotated[int, Range(MIN_KEEPALIVE, MAX_KEEPALIVE)] = 30
    connect_timeout: Timeout = 5.0
    username: str = ""
    password_file: str = ""
    buffer_max_messages: BufferBound = DEFAULT_MQTT_BUFFER_MAX
    # Messages sent and not yet acknowledged (PUBACK) at any time: over a link
    # with round trip RTT, delivery is at most max_inflight / RTT messages/s.
    # Also the most a dropped connection can deliver twice.
    max_inflight: Annotated[int, Range(1, MAX_INFLIGHT)] = DEFAULT_MAX_INFLIGHT
    backoff_initial: Delay = 0.5
    backoff_max: Delay = 30.0
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # `payload = "json"`: {"value":…,"unit":…,"ts":…} instead of the bare number.
    payload: Literal["plain", "json"] = "plain"
    # "5": user properties ts and gw on every message, PUBACK reason codes,
    # the broker's Receive Maximum; "3.1.1" for brokers or consumers without 5.
    protocol: Literal["3.1.1", "5"] = DEFAULT_MQTT_PROTOCOL
    # MQTT 5 Message Expiry Interval in seconds on non-retained messages
    # (expiry would delete a retained value); 0 = none.
    message_expiry: Annotated[int, Range(0, MAX_MESSAGE_EXPIRY)] = 0
    homeassistant: HomeAssistantSection = field(default_factory=HomeAssistantSection)
    # Resolved secret; never printed (repr=False).
    password: str = field(default="", repr=False)

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Every broker as ``(host, port)``, in order: ``servers``, else ``host``/``port``."""
        if self.servers:
            return tuple(split_server(s) for s in self.servers)
        return ((self.host, self.port),)


@dataclass(frozen=True)
class InfluxSection:
    """``[influxdb]``: the database, batching and the point buffer bound."""

    url: str = "http://localhost:8086"
    # Several URLs of one database (cluster nodes), instead of url: writes go
    # to the first that answers and move on at a network error or a 5xx.
    # parse_config sets url to the first, for one-off requests.
    urls: tuple[str, ...] = ()
    org: str = "my-org"
    bucket: str = "telemetry"
    token_file: str = ""
    batch_size: Annotated[int, Range(1, MAX_BATCH_SIZE)] = DEFAULT_BATCH_SIZE
    flush_interval: Delay = DEFAULT_FLUSH_INTERVAL
    buffer_max_points: BufferBound = DEFAULT_INFLUX_BUFFER_MAX
    backoff_initial: Delay = 0.5
    backoff_max: Delay = 30.0
    timeout: Timeout = 10.0
    # Static tags added to every point (e.g. site = "north-field").
    tags: dict[str, str] = field(default_factory=dict)
    token: str = field(default="", repr=False)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every URL, in order: ``urls``, else ``url``."""
        return self.urls or (self.url,)


@dataclass(frozen=True)
class StatusSection:
    """``[status]``: the HTTP status endpoint."""

    listen: str = "127.0.0.1:9108"
    unhealthy_after: Annotated[float, Range(MIN_TIMEOUT, MAX_WINDOW)] = 60.0


@dataclass(frozen=True)
class AlertRule:
    """One ``[[alerts.rule]]``: a threshold on one metric, with a hold time and hysteresis.

    Fires when the value is above ``above`` (or below ``below``) for ``for_s``
    seconds without a break; resolves when it is back at or past ``clear``
    (the threshold itself unless given).
    """

    name: str
    metric: str  # "group/metric"
    above: float | None = None
    below: float | None = None
    # TOML key "for"; 0 fires on the first value past the threshold.
    for_s: Annotated[float, Range(0.0, MAX_WINDOW)] = 0.0
    clear: float | None = None

    @property
    def group(self) -> str:
        """The group part of ``metric``."""
        return self.metric.split("/", 1)[0]

    @property
    def field(self) -> str:
        """The metric part of ``metric``."""
        return self.metric.split("/", 1)[1]

    @property
    def threshold(self) -> float:
        """``above`` or ``below``, whichever is set."""
        value = self.above if self.above is not None else self.below
        assert value is not None
        return value

    @property
    def clear_at(self) -> float:
        """Where the alert resolves: ``clear``, else the threshold."""
        return self.threshold if self.clear is None else self.clear


@dataclass(frozen=True)
class AlertsSection:
    """``[alerts]``: freshness of every group and threshold rules (see README "Alerts")."""

    # Seconds without a value before a group that had values is stale; 0 = off.
    stale_after: Annotated[float, Range(MIN_STALE_AFTER, MAX_WINDOW, zero_is_off=True)] = (
        DEFAULT_STALE_AFTER
    )
    # Only these groups go stale; empty: every group that has sent values.
    stale_groups: tuple[str, ...] = ()
    # The [[alerts.rule]] tables, in file order.
    rules: tuple[AlertRule, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    source: SourceSection = field(default_factory=SourceSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    influxdb: InfluxSection = field(default_factory=InfluxSection)
    status: StatusSection = field(default_factory=StatusSection)
    alerts: AlertsSection = field(default_factory=AlertsSection)
    # metric → (min, max); empty when plausibility checks are disabled.
    plausibility: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_PLAUSIBILITY)
    )
    # How gateway.id was made when the file leaves it out; None: the file sets it.
    # Not a key of the file (only sections are), and not part of equality: two
    # configs that say the same are the same, however the id came about.
    derived_id: DerivedId | None = field(default=None, compare=False)
