"""Configuration: TOML → frozen dataclasses, strictly.

Unknown keys, wrong types and values out of range raise :class:`ConfigError`
naming the dotted key, so a mistake is reported at start-up rather than as a
traceback hours later. Every number has a range
(:data:`gateway.config.checks.RANGES`), strings that reach MQTT, line protocol
or HTTP carry no control characters, and the TLS and secret files are read
once at load. Secrets (MQTT password, InfluxDB token) come from files or the
environment and never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import stat
import tomllib
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.config.checks import check_listen, check_ranges, check_tls, check_url, valid_host
from gateway.errors import ConfigError

DEFAULT_CONFIG_FILE = "config.toml"
CONFIG_ENV = "GATEWAY_CONFIG"
MQTT_PASSWORD_ENV = "GATEWAY_MQTT_PASSWORD"
INFLUX_TOKEN_ENV = "GATEWAY_INFLUXDB_TOKEN"

DEFAULT_BUFFER_DIR = "/var/lib/iiot-gateway"
# systemd-timesyncd touches this file once the clock is synchronised.
DEFAULT_CLOCK_SYNC_FILE = "/run/systemd/timesync/synchronized"
DEFAULT_MQTT_BUFFER_MAX = 1000
# QoS1 messages the MQTT sink keeps in flight (see README "Performance").
DEFAULT_MAX_INFLIGHT = 200
DEFAULT_INFLUX_BUFFER_MAX = 100_000
DEFAULT_BATCH_SIZE = 10
DEFAULT_FLUSH_INTERVAL = 1.0
DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_MAX_LINE_BYTES = 65536
# gateway.id when the host name has nothing usable in it.
FALLBACK_GATEWAY_ID = "gateway"
# The default mqtt.client_id is this plus gateway.id.
CLIENT_ID_PREFIX = "iiot-gateway-"
# A host-name-derived gateway.id is cut to this many characters.
MAX_DERIVED_ID_CHARS = 64
# MQTT strings (client id, topic) are at most this many UTF-8 bytes.
MAX_MQTT_STRING_BYTES = 65535

DEFAULT_PLAUSIBILITY: dict[str, tuple[float, float]] = {
    "temperature": (-40.0, 85.0),
    "humidity": (0.0, 100.0),
    "pressure": (300.0, 1100.0),
    "rssi": (-150.0, 0.0),
    "snr": (-30.0, 30.0),
}


def default_gateway_id() -> str:
    """This box's default ``gateway.id``: its host name reduced to ``[A-Za-z0-9_-]``.

    Boxes installed from one recipe differ in host name, so their ids (and the
    MQTT client ids made from them) do not collide. ``"gateway"`` when the host
    name is empty or has no usable character.
    """
    try:
        name = socket.gethostname()
    except OSError:
        name = ""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:MAX_DERIVED_ID_CHARS]
    return cleaned or FALLBACK_GATEWAY_ID


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
    durability: Literal["full", "normal"] = "full"
    # Seconds between the gateway's own points (backlog, drops) in InfluxDB; 0 = off.
    stats_interval: float = 30.0
    # When the wall clock counts as right (see README "Time and the clock"):
    # "auto": the kernel's NTP status (adjtimex) or clock_sync_file exists;
    # "file": only clock_sync_file; "none": always (a box with a real-time clock).
    clock_sync: Literal["auto", "file", "none"] = "auto"
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
    rate: float = 0.0
    port: str = "/dev/ttyACM0"
    baud: int = 115200
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    restart_initial: float = 1.0
    restart_max: float = 30.0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@dataclass(frozen=True)
class MqttSection:
    """``[mqtt]``: the broker, topics and the MQTT buffer bound."""

    host: str = "localhost"
    port: int = 1883
    # Unset in the file: derived from gateway.id (see parse_config).
    client_id: str = field(default_factory=lambda: default_client_id(default_gateway_id()))
    topic_prefix: str = "iiot"
    qos: int = 1
    retain: bool = True
    keepalive: int = 30
    connect_timeout: float = 5.0
    username: str = ""
    password_file: str = ""
    buffer_max_messages: int = DEFAULT_MQTT_BUFFER_MAX
    # Messages sent and not yet acknowledged (PUBACK) at any time: over a link
    # with round trip RTT, delivery is at most max_inflight / RTT messages/s.
    # Also the most a dropped connection can deliver twice.
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    # Resolved secret; never printed (repr=False).
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class InfluxSection:
    """``[influxdb]``: the database, batching and the point buffer bound."""

    url: str = "http://localhost:8086"
    org: str = "my-org"
    bucket: str = "telemetry"
    token_file: str = ""
    batch_size: int = DEFAULT_BATCH_SIZE
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    buffer_max_points: int = DEFAULT_INFLUX_BUFFER_MAX
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    timeout: float = 10.0
    # Static tags added to every point (e.g. site = "north-field").
    tags: dict[str, str] = field(default_factory=dict)
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class StatusSection:
    """``[status]``: the HTTP status endpoint."""

    listen: str = "127.0.0.1:9108"
    unhealthy_after: float = 60.0


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    gateway: GatewaySection = field(default_factory=GatewaySection)
    source: SourceSection = field(default_factory=SourceSection)
    mqtt: MqttSection = field(default_factory=MqttSection)
    influxdb: InfluxSection = field(default_factory=InfluxSection)
    status: StatusSection = field(default_factory=StatusSection)
    # metric → (min, max); empty when plausibility checks are disabled.
    plausibility: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_PLAUSIBILITY)
    )


_SECRET_FIELDS = {"password", "token"}
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Tag keys every point already has, or that InfluxDB refuses as a tag key.
_RESERVED_TAGS = frozenset({"node", "unit", "time"})
# Arguments of source.command may be shell scripts spanning lines.
_COMMAND_CONTROL_OK = frozenset("\t\n\r")


def _join(prefix: str, key: str) -> str:
    """``prefix.key``, quoting ``key`` the TOML way unless it is a bare key.

    A key holding a newline must not split the one-line error in two.
    """
    bare = bool(key) and set(key) <= _NAME_CHARS
    return f"{prefix}.{key if bare else json.dumps(key, ensure_ascii=False)}"


def _control_char(text: str, allowed: frozenset[str] = frozenset()) -> str | None:
    """The first control character in ``text`` that is not ``allowed``, if any."""
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in allowed:
            return char
    return None


def _check_text(key: str, text: str) -> None:
    # A newline in a tag, topic or header value ends the record early and lets
    # the rest be read as another one (line-protocol injection).
    allowed = _COMMAND_CONTROL_OK if key.startswith("source.command[") else frozenset()
    char = _control_char(text, allowed)
    if char is not None:
        raise ConfigError(key, f"must not contain control characters (found {char!r})")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint``; return it normalised."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {value!r}")
        # TOML has nan and inf; every comparison with nan is false, so a range
        # check alone would let it through.
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        _check_text(key, value)
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                key, f"expected one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} items, got {value!r}")
        return tuple(
            _coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=False))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        _, vhint = typing.get_args(hint)
        return {k: _coerce(_join(key, k), v, vhint) for k, v in value.items()}
    if isinstance(hint, types.UnionType):  # pragma: no cover - no unions in use
        raise ConfigError(key, "unsupported type")
    raise ConfigError(key, f"unsupported type {hint!r}")  # pragma: no cover


def _section(cls: type[Any], name: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(name, f"expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in _SECRET_FIELDS}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = _join(name, key)
        if key not in fields:
            if key in _SECRET_FIELDS:
                raise ConfigError(
                    dotted, "secrets are not read from the config file; use a file or env var"
                )
            raise ConfigError(dotted, "unknown key")
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


def _strip_newline(text: str) -> str:
    """``text`` without one trailing ``\\n`` or ``\\r\\n`` (what editors and echo add)."""
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            return text[: -len(end)]
    return text


def _read_secret(key: str, path: str, env: str, environ: typing.Mapping[str, str]) -> str:
    """The secret from the file ``path`` (config key ``key``), else from ``$env``.

    No message quotes the secret, not even part of it.
    """
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {path}: {exc.strerror}") from None
        try:
            secret = _strip_newline(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(key, f"secret file {path} is not UTF-8 text") from None
        if not secret:
            raise ConfigError(key, f"secret file {path} is empty")
        where = key
    else:
        secret = _strip_newline(environ.get(env, ""))
        where = env
    # A line break left after that is a mistake (a second line, a stray CR) that
    # would fail later as a wrong password, or end the HTTP Authorization header
    # early; no real password or token holds a control character.
    char = _control_char(secret)
    if char is not None:
        what = "a line break" if char in "\r\n" else "a control character"
        raise ConfigError(
            where, f"the secret contains {what} (only one trailing newline is removed)"
        )
    return secret


def _validate(cfg: Config) -> None:
    """Everything a type cannot say: ranges, relations, formats."""
    check_ranges(cfg)
    g, s, m, i = cfg.gateway, cfg.source, cfg.mqtt, cfg.influxdb
    if not g.id:
        raise ConfigError("gateway.id", "must not be empty")
    if not g.buffer_dir:
        raise ConfigError("gateway.buffer_dir", "must not be empty")
    if s.kind == "command" and not (s.command and s.command[0]):
        raise ConfigError("source.command", "must name a program when kind = 'command'")
    if s.kind == "file":
        if not s.path:
            raise ConfigError("source.path", "must be set when kind = 'file'")
        try:
            Path(s.path).open("rb").close()
        except OSError as exc:
            raise ConfigError("source.path", f"cannot read {s.path}: {exc.strerror}") from None
    if s.kind == "serial" and not s.port:
        raise ConfigError("source.port", "must name the device when kind = 'serial'")
    if s.restart_max < s.restart_initial:
        raise ConfigError("source.restart_max", "must be >= restart_initial")
    if not valid_host(m.host):
        raise ConfigError("mqtt.host", f"expected a host name or IP address, got {m.host!r}")
    if not m.client_id or len(m.client_id.encode()) > MAX_MQTT_STRING_BYTES:
        raise ConfigError("mqtt.client_id", f"must be 1..{MAX_MQTT_STRING_BYTES} bytes")
    prefix_parts = m.topic_prefix.split("/")
    if not m.topic_prefix or any(not p or not set(p) <= _NAME_CHARS for p in prefix_parts):
        # Also keeps out the wildcards '+' and '#', which no PUBLISH may carry.
        raise ConfigError("mqtt.topic_prefix", "must be levels of [A-Za-z0-9_-] separated by '/'")
    if m.backoff_max < m.backoff_initial:
        raise ConfigError("mqtt.backoff_max", "must be >= backoff_initial")
    check_tls(m)
    check_url(i.url)
    for key, value in (("influxdb.org", i.org), ("influxdb.bucket", i.bucket)):
        if not value:
            raise ConfigError(key, "must not be empty")
    if i.backoff_max < i.backoff_initial:
        raise ConfigError("influxdb.backoff_max", "must be >= backoff_initial")
    for tag in i.tags:
        key = _join("influxdb.tags", tag)
        _check_text(key, tag)
        if not tag or tag.startswith("_"):
            raise ConfigError(key, "tag keys must not be empty or start with '_' (InfluxDB's own)")
        if tag in _RESERVED_TAGS:
            raise ConfigError(key, "'node' and 'unit' are set per point; 'time' is reserved")
    for metric, (lo, hi) in cfg.plausibility.items():
        if not lo < hi:
            raise ConfigError(_join("plausibility", metric), "min must be < max")
    check_listen(cfg.status.listen)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    buffer_dir: str | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Config:
    """Load, validate and resolve the configuration.

    The file is ``path``, else ``$GATEWAY_CONFIG``, else ``./config.toml``.

    Raises:
        ConfigError: the file is missing or unreadable, not TOML, has an unknown
            key or a wrong type, or a value out of range.
    """
    environ = os.environ if environ is None else environ
    chosen = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE)
    try:
        raw = chosen.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {chosen}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("", f"{chosen} is not valid TOML: {exc}") from None
    cfg = parse_config(data, environ=environ)
    if buffer_dir:
        cfg = dataclasses.replace(
            cfg, gateway=dataclasses.replace(cfg.gateway, buffer_dir=buffer_dir)
        )
    if (cfg.mqtt.password or cfg.influxdb.token) and _world_readable(chosen):
        import logging

        logging.getLogger(__name__).warning(
            "%s is world-readable and the gateway uses secrets; chmod 640 it", chosen
        )
    return cfg


def _world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def parse_config(
    data: dict[str, Any], *, environ: typing.Mapping[str, str] | None = None
) -> Config:
    """Build a :class:`Config` from already-parsed TOML data.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    environ = os.environ if environ is None else environ
    sections: dict[str, Any] = {
        "gateway": GatewaySection,
        "source": SourceSection,
        "mqtt": MqttSection,
        "influxdb": InfluxSection,
        "status": StatusSection,
    }
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            kwargs[key] = _section(sections[key], key, value)
        elif key == "plausibility":
            if value is False:
                kwargs[key] = {}
            elif isinstance(value, dict):
                ranges = dict(DEFAULT_PLAUSIBILITY)
                for metric, bounds in value.items():
                    ranges[metric] = _coerce(
                        _join("plausibility", metric), bounds, tuple[float, float]
                    )
                kwargs[key] = ranges
            else:
                raise ConfigError("plausibility", "expected a table or false")
        else:
            raise ConfigError(_join("", key)[1:], "unknown section")
    cfg = Config(**kwargs)
    if "client_id" not in data.get("mqtt", {}):
        client_id = default_client_id(cfg.gateway.id)
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, client_id=client_id))
    _validate(cfg)
    password = _read_secret(
        "mqtt.password_file", cfg.mqtt.password_file, MQTT_PASSWORD_ENV, environ
    )
    token = _read_secret("influxdb.token_file", cfg.influxdb.token_file, INFLUX_TOKEN_ENV, environ)
    return dataclasses.replace(
        cfg,
        mqtt=dataclasses.replace(cfg.mqtt, password=password),
        influxdb=dataclasses.replace(cfg.influxdb, token=token),
    )
