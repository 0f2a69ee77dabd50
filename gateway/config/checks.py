"""Value checks for :mod:`gateway.config`: one per section, for what a type or range cannot say.

Each check raises :class:`ConfigError` naming the dotted key at fault, at load,
instead of an SSLError, a rejected publish or a broken line-protocol record in a
sink later on. The number ranges are not here: each field says its own (see
:mod:`gateway.config.ranges`).
"""

from __future__ import annotations

import ipaddress
import json
import re
import ssl
import termios
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from gateway.config.ranges import MAX_PORT
from gateway.config.sections import MAX_MQTT_STRING_BYTES, split_server
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config.sections import (
        GatewaySection,
        InfluxSection,
        MqttSection,
        SourceSection,
        StatusSection,
    )

# Host names: RFC 1123 labels (plus '_', which resolvers accept), at most 253 characters.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")
NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Tag keys every point already has, or that InfluxDB refuses as a tag key.
_RESERVED_TAGS = frozenset({"node", "unit", "time"})
# Arguments of source.command may be shell scripts spanning lines.
_COMMAND_CONTROL_OK = frozenset("\t\n\r")


def join_key(prefix: str, key: str) -> str:
    """``prefix.key``, quoting ``key`` the TOML way unless it is a bare key.

    A key holding a newline must not split the one-line error in two.
    """
    bare = bool(key) and set(key) <= NAME_CHARS
    return f"{prefix}.{key if bare else json.dumps(key, ensure_ascii=False)}"


def control_char(text: str, allowed: frozenset[str] = frozenset()) -> str | None:
    """The first control character in ``text`` that is not ``allowed``, if any."""
    for char in text:
        if unicodedata.category(char) == "Cc" and char not in allowed:
            return char
    return None


def check_text(key: str, text: str) -> None:
    """Raise :class:`ConfigError` if the string at ``key`` holds a control character.

    A newline in a tag, topic or header value ends the record early and lets
    the rest be read as another one (line-protocol injection); only the
    arguments of ``source.command`` may hold tabs and line breaks.
    """
    allowed = _COMMAND_CONTROL_OK if key.startswith("source.command[") else frozenset()
    char = control_char(text, allowed)
    if char is not None:
        raise ConfigError(key, f"must not contain control characters (found {char!r})")


def _levels(text: str) -> bool:
    """Whether ``text`` is levels of [A-Za-z0-9_-] separated by '/'.

    Also keeps out the wildcards '+' and '#', which no PUBLISH may carry.
    """
    return bool(text) and all(p and set(p) <= NAME_CHARS for p in text.split("/"))


def check_gateway(g: GatewaySection) -> None:
    """``[gateway]``: an id and a buffer directory."""
    if not g.id:
        raise ConfigError("gateway.id", "must not be empty")
    if not g.buffer_dir:
        raise ConfigError("gateway.buffer_dir", "must not be empty")


def check_source(s: SourceSection) -> None:
    """``[source]``: what the chosen kind needs, a standard baud rate, restart delays in order."""
    if not hasattr(termios, f"B{s.baud}"):
        # open_serial would refuse it on every attempt, forever.
        raise ConfigError("source.baud", f"{s.baud} is not a standard baud rate")
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


def check_mqtt(m: MqttSection) -> None:
    """``[mqtt]``: host or servers, client id, topic and discovery prefixes, backoff, TLS."""
    if not valid_host(m.host):
        raise ConfigError("mqtt.host", f"expected a host name or IP address, got {m.host!r}")
    check_servers(m.servers)
    if not m.client_id or len(m.client_id.encode()) > MAX_MQTT_STRING_BYTES:
        raise ConfigError("mqtt.client_id", f"must be 1..{MAX_MQTT_STRING_BYTES} bytes")
    if not _levels(m.topic_prefix):
        raise ConfigError("mqtt.topic_prefix", "must be levels of [A-Za-z0-9_-] separated by '/'")
    if not _levels(m.homeassistant.discovery_prefix):
        raise ConfigError(
            "mqtt.homeassistant.discovery_prefix",
            "must be levels of [A-Za-z0-9_-] separated by '/'",
        )
    if m.backoff_max < m.backoff_initial:
        raise ConfigError("mqtt.backoff_max", "must be >= backoff_initial")
    check_tls(m)


def check_influxdb(i: InfluxSection) -> None:
    """``[influxdb]``: URL (or URLs), org and bucket, backoff, tag keys."""
    check_url(i.url)
    seen: dict[str, str] = {}
    for n, url in enumerate(i.urls):
        key = f"influxdb.urls[{n}]"
        check_url(url, key)
        if url in seen:
            raise ConfigError(key, f"{url!r} is listed twice (also {seen[url]})")
        seen[url] = key
    for key, value in (("influxdb.org", i.org), ("influxdb.bucket", i.bucket)):
        if not value:
            raise ConfigError(key, "must not be empty")
    if i.backoff_max < i.backoff_initial:
        raise ConfigError("influxdb.backoff_max", "must be >= backoff_initial")
    for tag in i.tags:
        key = join_key("influxdb.tags", tag)
        check_text(key, tag)
        if not tag or tag.startswith("_"):
            raise ConfigError(key, "tag keys must not be empty or start with '_' (InfluxDB's own)")
        if tag in _RESERVED_TAGS:
            raise ConfigError(key, "'node' and 'unit' are set per point; 'time' is reserved")


def check_plausibility(ranges: dict[str, tuple[float, float]]) -> None:
    """``[plausibility]``: every metric's min below its max."""
    for metric, (lo, hi) in ranges.items():
        if not lo < hi:
            raise ConfigError(join_key("plausibility", metric), "min must be < max")


def check_status(st: StatusSection) -> None:
    """``[status]``: the listen address."""
    check_listen(st.listen)


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


def check_url(url: str, key: str = "influxdb.url") -> None:
    """Raise :class:`ConfigError` (naming ``key``) unless ``url`` is http(s), a host and a port."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in url:
        raise ConfigError(key, f"must be http:// or https:// and a host, got {url!r}")
    try:
        parts.port  # noqa: B018 - reading it validates the port
    except ValueError:
        raise ConfigError(key, f"port must be 1..{MAX_PORT}, got {url!r}") from None


def check_servers(servers: tuple[str, ...]) -> None:
    """``mqtt.servers``: each entry ``host:port`` with a valid host and port, none twice."""
    seen: dict[tuple[str, int], str] = {}
    for n, text in enumerate(servers):
        key = f"mqtt.servers[{n}]"
        try:
            host, port = split_server(text)
        except ValueError as exc:
            raise ConfigError(key, f"{exc}; got {text!r}") from None
        if not valid_host(host):
            raise ConfigError(key, f"expected a host name or IP address, got {host!r}")
        if not 1 <= port <= MAX_PORT:
            raise ConfigError(key, f"port must be 1..{MAX_PORT}, got {port}")
        if (host, port) in seen:
            raise ConfigError(key, f"{text!r} is listed twice (also {seen[host, port]})")
        seen[host, port] = key


def check_one_form(table: object, section: str, many: str, single: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` if ``[section]`` sets both ``many`` and one of ``single``.

    Checked on the file's table, not the dataclass: ``host`` has a default, so
    only the file tells whether it was set. An empty list is refused too: it
    would leave the sink nowhere to deliver.
    """
    if not isinstance(table, dict) or many not in table:
        return
    both = [k for k in single if k in table]
    if both:
        raise ConfigError(
            f"{section}.{many}",
            f"give {section}.{many} or {' / '.join(f'{section}.{k}' for k in single)}, not both"
            f" ({section}.{both[0]} is set too)",
        )
    if table[many] == []:
        raise ConfigError(f"{section}.{many}", "must name at least one")


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
