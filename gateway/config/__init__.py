"""Configuration: TOML → frozen dataclasses, strictly.

Unknown keys, wrong types and values out of range raise :class:`ConfigError`
naming the dotted key, so a mistake is reported at start-up rather than as a
traceback hours later. Every number has a range on its field
(``Annotated[int, Range(…)]`` in :mod:`gateway.config.sections`), each section
has its check (:mod:`gateway.config.checks`), strings that reach MQTT, line
protocol or HTTP carry no control characters, and the TLS and secret files are
read once at load. Secrets (MQTT password, InfluxDB token) come from files or the
environment and never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from gateway.config.checks import (
    NAME_CHARS,
    check_gateway,
    check_influxdb,
    check_mqtt,
    check_one_form,
    check_plausibility,
    check_source,
    check_status,
    check_text,
    control_char,
    join_key,
)
from gateway.config.ranges import range_of
from gateway.config.sections import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    DEFAULT_MACHINE_ID_FILE,
    DEFAULT_PLAUSIBILITY,
    INFLUX_TOKEN_ENV,
    MAX_ALERT_NAME_CHARS,
    MQTT_PASSWORD_ENV,
    STALE_PREFIX,
    AlertRule,
    AlertsSection,
    Config,
    GatewaySection,
    InfluxSection,
    MqttSection,
    SourceSection,
    StatusSection,
    default_client_id,
    derive_gateway_id,
    split_server,
)
from gateway.errors import ConfigError

# The loading API and what it returns; the sections, their defaults and the
# checks are imported from where they live (gateway.config.sections, .ranges, .checks).
__all__ = ["Config", "load_config", "parse_config"]

_SECRET_FIELDS = {"password", "token"}


def _check_range(key: str, value: Any, hint: Any) -> Any:
    """``value``, if the :class:`~gateway.config.ranges.Range` in ``hint`` (if any) admits it."""
    allowed = range_of(hint)
    if allowed is not None and not allowed.admits(value):
        raise ConfigError(key, f"must be {allowed.describe()}, got {value!r}")
    return value


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint``; return it normalised.

    An ``Annotated`` hint's :class:`~gateway.config.ranges.Range` bounds the
    value once it has the type.
    """
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _check_range(key, _coerce(key, value, typing.get_args(hint)[0]), hint)
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
        check_text(key, value)
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _section(hint, key, value)
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
        return {k: _coerce(join_key(key, k), v, vhint) for k, v in value.items()}
    if isinstance(hint, types.UnionType):  # pragma: no cover - no unions in use
        raise ConfigError(key, "unsupported type")
    raise ConfigError(key, f"unsupported type {hint!r}")  # pragma: no cover


def _section(cls: type[Any], name: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(name, f"expected a table, got {table!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls) if f.name not in _SECRET_FIELDS}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = join_key(name, key)
        if key not in fields:
            if key in _SECRET_FIELDS:
                raise ConfigError(
                    dotted, "secrets are not read from the config file; use a file or env var"
                )
            raise ConfigError(dotted, "unknown key")
        kwargs[key] = _coerce(dotted, value, hints[key])
    return cls(**kwargs)


_RULE_KEYS = ("name", "metric", "above", "below", "for", "clear")
_RULE_HINTS = typing.get_type_hints(AlertRule, include_extras=True)


def _valid_name(text: str) -> bool:
    return 0 < len(text) <= MAX_ALERT_NAME_CHARS and set(text) <= NAME_CHARS


def _alert_rule(key: str, table: Any) -> AlertRule:
    """One ``[[alerts.rule]]`` table (``key`` is ``alerts.rule[i]``), checked."""
    if not isinstance(table, dict):
        raise ConfigError(key, f"expected a table, got {table!r}")
    for name in table:
        if name not in _RULE_KEYS:
            raise ConfigError(join_key(key, name), "unknown key")
    for required in ("name", "metric"):
        if required not in table:
            raise ConfigError(f"{key}.{required}", "is required")
    name = _coerce(f"{key}.name", table["name"], str)
    if not _valid_name(name):
        raise ConfigError(f"{key}.name", f"must be 1..{MAX_ALERT_NAME_CHARS} of [A-Za-z0-9_-]")
    if name.startswith(STALE_PREFIX):
        raise ConfigError(f"{key}.name", f"{STALE_PREFIX!r} names the freshness alerts")
    metric = _coerce(f"{key}.metric", table["metric"], str)
    parts = metric.split("/")
    if len(parts) != 2 or not all(_valid_name(p) for p in parts):
        raise ConfigError(f"{key}.metric", f'expected "group/metric", got {metric!r}')
    numbers = {
        k: _coerce(f"{key}.{k}", table[k], float)
        for k in ("above", "below", "for", "clear")
        if k in table
    }
    if "above" in numbers and "below" in numbers:
        raise ConfigError(f"{key}.below", "give above or below, not both")
    if "above" not in numbers and "below" not in numbers:
        raise ConfigError(key, "needs above or below")
    hold = _check_range(f"{key}.for", numbers.get("for", 0.0), _RULE_HINTS["for_s"])
    rule = AlertRule(
        name, metric, numbers.get("above"), numbers.get("below"), hold, numbers.get("clear")
    )
    # Hysteresis: the alert must resolve on the safe side of where it fires.
    if rule.clear is not None:
        if rule.above is not None and rule.clear > rule.above:
            raise ConfigError(f"{key}.clear", f"must be <= above ({rule.above:g})")
        if rule.below is not None and rule.clear < rule.below:
            raise ConfigError(f"{key}.clear", f"must be >= below ({rule.below:g})")
    return rule


def _alerts_section(value: Any) -> AlertsSection:
    """``[alerts]`` and its ``[[alerts.rule]]`` tables."""
    if not isinstance(value, dict):
        raise ConfigError("alerts", f"expected a table, got {value!r}")
    rest = dict(value)
    tables = rest.pop("rule", [])
    if "rules" in rest:
        raise ConfigError("alerts.rules", "unknown key (rules are [[alerts.rule]] tables)")
    section: AlertsSection = _section(AlertsSection, "alerts", rest)
    for i, group in enumerate(section.stale_groups):
        if not _valid_name(group):
            raise ConfigError(
                f"alerts.stale_groups[{i}]", f"must be 1..{MAX_ALERT_NAME_CHARS} of [A-Za-z0-9_-]"
            )
    if not isinstance(tables, list):
        raise ConfigError("alerts.rule", "expected [[alerts.rule]] tables")
    rules: list[AlertRule] = []
    seen: dict[str, str] = {}
    for i, table in enumerate(tables):
        key = f"alerts.rule[{i}]"
        rule = _alert_rule(key, table)
        if rule.name in seen:
            raise ConfigError(
                f"{key}.name", f"duplicate rule name {rule.name!r} (also {seen[rule.name]})"
            )
        seen[rule.name] = key
        rules.append(rule)
    return dataclasses.replace(section, rules=tuple(rules))


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
    char = control_char(secret)
    if char is not None:
        what = "a line break" if char in "\r\n" else "a control character"
        raise ConfigError(
            where, f"the secret contains {what} (only one trailing newline is removed)"
        )
    return secret


def _validate(cfg: Config) -> None:
    """Everything a type or a range cannot say, section by section."""
    check_gateway(cfg.gateway)
    check_source(cfg.source)
    check_mqtt(cfg.mqtt)
    check_influxdb(cfg.influxdb)
    check_plausibility(cfg.plausibility)
    check_status(cfg.status)


def _first_servers(cfg: Config) -> Config:
    """``mqtt.host``/``port`` and ``influxdb.url`` set to the first of ``servers``/``urls``.

    One-off connections (replay, ``gateway check``'s hints, discovery removal)
    and log lines then name a server of the list, not the defaults.
    """
    if cfg.mqtt.servers:
        host, port = split_server(cfg.mqtt.servers[0])
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, host=host, port=port))
    if cfg.influxdb.urls:
        cfg = dataclasses.replace(
            cfg, influxdb=dataclasses.replace(cfg.influxdb, url=cfg.influxdb.urls[0])
        )
    return cfg


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    buffer_dir: str | None = None,
    environ: typing.Mapping[str, str] | None = None,
    machine_id_file: str | os.PathLike[str] = DEFAULT_MACHINE_ID_FILE,
) -> Config:
    """Load, validate and resolve the configuration.

    The file is ``path``, else ``$GATEWAY_CONFIG``, else ``./config.toml``.
    ``machine_id_file`` feeds the default ``gateway.id`` (see
    :func:`derive_gateway_id`).

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
    cfg = parse_config(data, environ=environ, machine_id_file=machine_id_file)
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
    data: dict[str, Any],
    *,
    environ: typing.Mapping[str, str] | None = None,
    machine_id_file: str | os.PathLike[str] = DEFAULT_MACHINE_ID_FILE,
) -> Config:
    """Build a :class:`Config` from already-parsed TOML data.

    Without ``gateway.id`` in ``data`` the id is derived from the host name and
    ``machine_id_file``, and :attr:`Config.derived_id` says how.

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
    check_one_form(data.get("mqtt"), "mqtt", "servers", ("host", "port"))
    check_one_form(data.get("influxdb"), "influxdb", "urls", ("url",))
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            kwargs[key] = _section(sections[key], key, value)
        elif key == "alerts":
            kwargs[key] = _alerts_section(value)
        elif key == "plausibility":
            if value is False:
                kwargs[key] = {}
            elif isinstance(value, dict):
                ranges = dict(DEFAULT_PLAUSIBILITY)
                for metric, bounds in value.items():
                    ranges[metric] = _coerce(
                        join_key("plausibility", metric), bounds, tuple[float, float]
                    )
                kwargs[key] = ranges
            else:
                raise ConfigError("plausibility", "expected a table or false")
        else:
            raise ConfigError(join_key("", key)[1:], "unknown section")
    cfg = Config(**kwargs)
    if "id" not in data.get("gateway", {}):
        derived = derive_gateway_id(machine_id_file=machine_id_file)
        cfg = dataclasses.replace(
            cfg, gateway=dataclasses.replace(cfg.gateway, id=derived.value), derived_id=derived
        )
    if "client_id" not in data.get("mqtt", {}):
        client_id = default_client_id(cfg.gateway.id)
        cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, client_id=client_id))
    _validate(cfg)
    cfg = _first_servers(cfg)
    password = _read_secret(
        "mqtt.password_file", cfg.mqtt.password_file, MQTT_PASSWORD_ENV, environ
    )
    token = _read_secret("influxdb.token_file", cfg.influxdb.token_file, INFLUX_TOKEN_ENV, environ)
    return dataclasses.replace(
        cfg,
        mqtt=dataclasses.replace(cfg.mqtt, password=password),
        influxdb=dataclasses.replace(cfg.influxdb, token=token),
    )
