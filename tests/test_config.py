"""gateway.config: strict TOML loading, dotted-key errors, secrets, overrides."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from gateway.config import Config, load_config, parse_config
from gateway.config import sections as config_mod
from gateway.config.ranges import Range, range_of
from gateway.config.sections import DEFAULT_PLAUSIBILITY, INFLUX_TOKEN_ENV, MQTT_PASSWORD_ENV
from gateway.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
NO_ENV: dict[str, str] = {}


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ=NO_ENV)
    return info.value


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "config.toml", environ=NO_ENV)
    assert cfg.gateway.id == config_mod.default_gateway_id()
    assert cfg.mqtt.client_id == f"iiot-gateway-{cfg.gateway.id}"
    assert cfg.gateway.durability == "full"
    assert cfg.gateway.write_delay == 0.0
    assert cfg.source.command[0] == "probe-rs"
    assert cfg.mqtt.port == 1883
    assert cfg.mqtt.qos == 1
    assert cfg.influxdb.batch_size == 10
    assert cfg.influxdb.flush_interval == 1.0
    assert cfg.influxdb.tags == {}
    assert cfg.plausibility == DEFAULT_PLAUSIBILITY


def test_example_config_states_the_defaults() -> None:
    """config.toml says "every key is shown with its default"; hold it to that."""
    cfg = load_config(REPO / "config.toml", environ=NO_ENV)
    assert cfg == Config()


def test_local_config_loads() -> None:
    cfg = load_config(REPO / "ops" / "local.toml", environ=NO_ENV)
    assert cfg.gateway.id == "gw-local"
    assert cfg.source.command == ("gateway", "simulate", "--interval", "1")
    assert cfg.influxdb.url == "http://127.0.0.1:8428"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nid = "from-env"\n')
    cfg = load_config(environ={"GATEWAY_CONFIG": str(path)})
    assert cfg.gateway.id == "from-env"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), environ=NO_ENV) == Config()


def test_unknown_key_names_the_dotted_key(tmp_path: Path) -> None:
    err = config_error(tmp_path, '[mqtt]\nhostt = "broker"\n')
    assert err.key == "mqtt.hostt"
    assert "mqtt.hostt" in str(err)


def test_wrong_type_names_the_dotted_key(tmp_path: Path) -> None:
    assert config_error(tmp_path, '[mqtt]\nport = "1883"\n').key == "mqtt.port"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nretain = 1\n", "mqtt.retain"),
        ("[mqtt]\nqos = true\n", "mqtt.qos"),
        ('[influxdb]\nflush_interval = "1s"\n', "influxdb.flush_interval"),
        ('[source]\ncommand = "probe-rs attach"\n', "source.command"),
        ('[source]\ncommand = ["a", 1]\n', "source.command[1]"),
        ('[gateway]\ndurability = "sometimes"\n', "gateway.durability"),
        ("[influxdb.tags]\nsite = 3\n", "influxdb.tags.site"),
        ('[influxdb.tags]\nnode = "x"\n', "influxdb.tags.node"),
        ("[plausibility]\ntemperature = [10, -10]\n", "plausibility.temperature"),
        ('[plausibility]\ntemperature = "hot"\n', "plausibility.temperature"),
        ("[plausibility]\ntemperature = [1, 2, 3]\n", "plausibility.temperature"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nprotocol = 5\n", "mqtt.protocol"),
        ('[mqtt]\nprotocol = "3.1"\n', "mqtt.protocol"),
        ("[mqtt]\nmessage_expiry = -1\n", "mqtt.message_expiry"),
        ('[mqtt]\ntopic_prefix = "a/+/b"\n', "mqtt.topic_prefix"),
        ('[influxdb]\nurl = "localhost:8086"\n', "influxdb.url"),
        ("gateway = 3\n", "gateway"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).key == key


def test_unknown_section(tmp_path: Path) -> None:
    assert config_error(tmp_path, "[mqqt]\nport = 1\n").key == "mqqt"


def test_not_toml(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[mqtt\nport = \n")
    assert "not valid TOML" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ=NO_ENV)


def test_plausibility_false_disables_it(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "plausibility = false\n"), environ=NO_ENV)
    assert cfg.plausibility == {}


def test_plausibility_override_keeps_the_other_defaults(tmp_path: Path) -> None:
    text = "[plausibility]\ntemperature = [-10, 50.5]\nco2 = [300, 5000]\n"
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert cfg.plausibility["temperature"] == (-10.0, 50.5)
    assert cfg.plausibility["co2"] == (300.0, 5000.0)
    assert cfg.plausibility["pressure"] == DEFAULT_PLAUSIBILITY["pressure"]


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pw").write_text("s3cret-pw\n")
    (tmp_path / "influx.tok").write_bytes(b"t0ken-value\r\n")
    text = (
        f'[mqtt]\nusername = "gw"\npassword_file = "{tmp_path / "mqtt.pw"}"\n'
        f'[influxdb]\ntoken_file = "{tmp_path / "influx.tok"}"\n'
    )
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert cfg.mqtt.password == "s3cret-pw"
    assert cfg.influxdb.token == "t0ken-value"
    assert "s3cret-pw" not in repr(cfg)
    assert "t0ken-value" not in repr(cfg)
    assert "s3cret-pw" not in str(cfg)


def test_secret_file_wins_over_environment(tmp_path: Path) -> None:
    (tmp_path / "influx.tok").write_text("from-file")
    text = f'[influxdb]\ntoken_file = "{tmp_path / "influx.tok"}"\n'
    cfg = load_config(write(tmp_path, text), environ={INFLUX_TOKEN_ENV: "from-env"})
    assert cfg.influxdb.token == "from-file"


def test_secrets_from_environment(tmp_path: Path) -> None:
    env = {MQTT_PASSWORD_ENV: "env-pw", INFLUX_TOKEN_ENV: "env-token"}
    cfg = load_config(write(tmp_path, ""), environ=env)
    assert cfg.mqtt.password == "env-pw"
    assert cfg.influxdb.token == "env-token"
    assert "env-pw" not in repr(cfg)
    assert "env-token" not in repr(cfg)


def test_unreadable_secret_file_names_the_key(tmp_path: Path) -> None:
    text = f'[mqtt]\npassword_file = "{tmp_path / "missing.pw"}"\n'
    assert config_error(tmp_path, text).key == "mqtt.password_file"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mqtt]\npassword = "x"\n', "mqtt.password"),
        ('[influxdb]\ntoken = "x"\n', "influxdb.token"),
    ],
)
def test_secrets_in_the_file_are_refused(tmp_path: Path, text: str, key: str) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert "secrets are not read from the config file" in str(err)


def test_buffer_dir_override(tmp_path: Path) -> None:
    path = write(tmp_path, '[gateway]\nbuffer_dir = "/from/file"\n')
    assert load_config(path, environ=NO_ENV).gateway.buffer_dir == "/from/file"
    cfg = load_config(path, buffer_dir=str(tmp_path / "buf"), environ=NO_ENV)
    assert cfg.gateway.buffer_dir == str(tmp_path / "buf")


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.mqtt.port = 1  # type: ignore[misc]


# -- the CLI refuses a bad config with exit code 2 and one line -------------------


def test_cli_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, '[mqtt]\nhostt = "broker"\n', name="bad.toml")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "mqtt.hostt" in lines[0]
    assert result.stdout == ""


def test_cli_out_of_range_number_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "[mqtt]\nkeepalive = 65536\n", name="bad.toml")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert "mqtt.keepalive" in result.stderr


# -- numbers: every one has a range, NaN and infinity never pass ------------------


# The Range on each section field's annotation, by dotted key.
RANGES: dict[str, Range] = {
    f"{s.name}.{n}": allowed
    for s in fields(Config)
    if s.name not in ("plausibility", "derived_id")  # not sections
    for n, h in typing.get_type_hints(s.default_factory, include_extras=True).items()  # type: ignore[arg-type]
    if (allowed := range_of(h)) is not None
}


def test_every_number_has_a_range() -> None:
    """A new int or float field needs a Range in its annotation (or this test fails)."""
    numeric = set()
    for section in fields(Config):
        if section.name in ("plausibility", "derived_id"):  # not sections
            continue
        hints = typing.get_type_hints(section.default_factory)  # type: ignore[arg-type]
        numeric |= {f"{section.name}.{n}" for n, h in hints.items() if h in (int, float)}
    assert numeric == set(RANGES)


def _table(key: str, value: object, *, pair: bool = False) -> str:
    """A config setting ``key`` to ``value``; with ``pair``, its initial/max partner too."""
    section, name = key.split(".")
    lines = [f"[{section}]", f"{name} = {value}"]
    for a, b in (("_initial", "_max"), ("_max", "_initial")):
        if pair and name.endswith(a):
            lines.append(f"{name.removesuffix(a)}{b} = {value}")
    return "\n".join(lines) + "\n"


def _toml_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


INT_KEYS = {
    f"{s.name}.{n}"
    for s in fields(Config)
    if s.name not in ("plausibility", "derived_id")  # not sections
    for n, h in typing.get_type_hints(s.default_factory).items()  # type: ignore[arg-type]
    if h is int
}
FLOAT_KEYS = sorted(set(RANGES) - INT_KEYS)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_range_edges_are_accepted_and_beyond_refused(tmp_path: Path, key: str) -> None:
    allowed = RANGES[key]
    for edge in (allowed.lo, allowed.hi):
        load_config(write(tmp_path, _table(key, _toml_number(edge), pair=True)), environ=NO_ENV)
    step = 1 if key in INT_KEYS else allowed.lo / 2 or 0.5
    assert config_error(tmp_path, _table(key, _toml_number(allowed.hi + step))).key == key
    below = allowed.lo - step
    if not (allowed.zero_is_off and below == 0):
        assert config_error(tmp_path, _table(key, _toml_number(below))).key == key


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused(tmp_path: Path, key: str, value: str) -> None:
    section, name = key.split(".")
    err = config_error(tmp_path, f"[{section}]\n{name} = {value}\n")
    assert err.key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[gateway]\nstats_interval = 1e-9\n", "gateway.stats_interval"),
        ("[gateway]\nstats_interval = 1e9\n", "gateway.stats_interval"),
        ("[source]\nrate = 1e-9\n", "source.rate"),
        ("[source]\nrate = 1e9\n", "source.rate"),
        ("[source]\nbaud = 0\n", "source.baud"),
        ("[source]\nbaud = 123456\n", "source.baud"),
        ("[source]\nbaud = 100000000\n", "source.baud"),
        ("[source]\nstall_timeout = 1e-9\n", "source.stall_timeout"),
        ("[source]\nstall_timeout = 1e9\n", "source.stall_timeout"),
        ("[source]\nrestart_initial = 1e-9\n", "source.restart_initial"),
        ("[source]\nrestart_max = 1e9\n", "source.restart_max"),
        ("[source]\nmax_line_bytes = 1099511627776\n", "source.max_line_bytes"),
        ("[mqtt]\nkeepalive = 65536\n", "mqtt.keepalive"),
        ("[mqtt]\nconnect_timeout = 1e-9\n", "mqtt.connect_timeout"),
        ("[mqtt]\nconnect_timeout = 1e9\n", "mqtt.connect_timeout"),
        ("[mqtt]\nbuffer_max_messages = 1000000000000\n", "mqtt.buffer_max_messages"),
        ("[mqtt]\nbackoff_initial = 1e-9\n", "mqtt.backoff_initial"),
        ("[mqtt]\nbackoff_max = 1e9\n", "mqtt.backoff_max"),
        ("[influxdb]\nbatch_size = 1000000000\n", "influxdb.batch_size"),
        ("[influxdb]\nflush_interval = 1e-9\n", "influxdb.flush_interval"),
        ("[influxdb]\nbuffer_max_points = 1000000000000\n", "influxdb.buffer_max_points"),
        ("[influxdb]\nbackoff_initial = 1e-9\n", "influxdb.backoff_initial"),
        ("[influxdb]\nbackoff_max = 1e9\n", "influxdb.backoff_max"),
        ("[influxdb]\ntimeout = -3\n", "influxdb.timeout"),
        ("[influxdb]\ntimeout = 0\n", "influxdb.timeout"),
        ("[influxdb]\ntimeout = 1e300\n", "influxdb.timeout"),
        ("[status]\nunhealthy_after = -5\n", "status.unhealthy_after"),
        ("[status]\nunhealthy_after = 0\n", "status.unhealthy_after"),
        ("[plausibility]\ntemperature = [nan, 1]\n", "plausibility.temperature[0]"),
        ("[plausibility]\ntemperature = [0, inf]\n", "plausibility.temperature[1]"),
        ("[plausibility]\ntemperature = [5, 5]\n", "plausibility.temperature"),
        ("[source]\nrestart_initial = 10.0\nrestart_max = 5.0\n", "source.restart_max"),
        ("[mqtt]\nbackoff_initial = 10.0\nbackoff_max = 5.0\n", "mqtt.backoff_max"),
        ("[influxdb]\nbackoff_initial = 10.0\nbackoff_max = 5.0\n", "influxdb.backoff_max"),
    ],
)
def test_numbers_out_of_range_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ("[mqtt]\nport = 65536\n", "mqtt.port"),
        ("[mqtt]\nqos = 3\n", "mqtt.qos"),
        ("[mqtt]\nqos = -1\n", "mqtt.qos"),
        ("[mqtt]\nkeepalive = 4\n", "mqtt.keepalive"),
    ],
)
def test_numbers_refused_before_still_are(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).key == key


def test_zero_turns_off_what_it_says_it_does(tmp_path: Path) -> None:
    text = "[gateway]\nstats_interval = 0\n[source]\nrate = 0\nstall_timeout = 0\n"
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert (cfg.gateway.stats_interval, cfg.source.rate, cfg.source.stall_timeout) == (0, 0, 0)


def test_a_range_message_states_the_range(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[gateway]\nstats_interval = 1e-9\n")
    assert "0 (off) or 0.1..86400" in str(err)


# -- status.listen ----------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    [
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:abc",
        "127.0.0.1:\u0663",
        "127.0.0.1",
        ":9108",
        "::1:9108",
        "[::1]:70000",
        "[localhost]:9108",
        "my host:9108",
        "unix:/run/gateway.sock",
    ],
)
def test_bad_listen_address_is_refused(tmp_path: Path, listen: str) -> None:
    assert config_error(tmp_path, f'[status]\nlisten = "{listen}"\n').key == "status.listen"


@pytest.mark.parametrize(
    "listen", ["", "127.0.0.1:0", "0.0.0.0:9108", "localhost:9108", "[::1]:9108", "[::]:1"]
)
def test_good_listen_address_is_accepted(tmp_path: Path, listen: str) -> None:
    cfg = load_config(write(tmp_path, f'[status]\nlisten = "{listen}"\n'), environ=NO_ENV)
    assert cfg.status.listen == listen


# -- strings that end up in a protocol --------------------------------------------


@pytest.mark.parametrize("char", ["\\n", "\\r", "\\t", "\\u0000", "\\u001b", "\\u007f", "\\u0085"])
@pytest.mark.parametrize(
    ("section", "name"),
    [
        ("gateway", "id"),
        ("mqtt", "client_id"),
        ("mqtt", "topic_prefix"),
        ("mqtt", "username"),
        ("mqtt", "host"),
        ("influxdb", "org"),
        ("influxdb", "bucket"),
        ("influxdb.tags", "site"),
    ],
)
def test_control_characters_are_refused(tmp_path: Path, section: str, name: str, char: str) -> None:
    err = config_error(tmp_path, f'[{section}]\n{name} = "north{char}field"\n')
    assert err.key == f"{section}.{name}"
    assert not {"\n", "\r"} & set(str(err))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[influxdb.tags]\n"north\\nfield" = "x"\n', 'influxdb.tags."north\\nfield"'),
        ('[influxdb.tags]\n"" = "x"\n', 'influxdb.tags.""'),
        ('[influxdb.tags]\n_site = "x"\n', "influxdb.tags._site"),
        ('[influxdb.tags]\ntime = "x"\n', "influxdb.tags.time"),
        ('[influxdb.tags]\nunit = "x"\n', "influxdb.tags.unit"),
        ('[gateway]\nid = ""\n', "gateway.id"),
        ('[mqtt]\nclient_id = ""\n', "mqtt.client_id"),
        ('[mqtt]\nhost = ""\n', "mqtt.host"),
        ('[mqtt]\nhost = "broker:1883"\n', "mqtt.host"),
        ('[mqtt]\nhost = "tcp://broker"\n', "mqtt.host"),
        ('[mqtt]\nhost = "my broker"\n', "mqtt.host"),
        ('[influxdb]\nurl = "http://"\n', "influxdb.url"),
        ('[influxdb]\nurl = "http://db:99999"\n', "influxdb.url"),
        ('[influxdb]\nurl = "http://db:port"\n', "influxdb.url"),
        ('[influxdb]\nurl = "http://my db:8086"\n', "influxdb.url"),
        ('[influxdb]\norg = ""\n', "influxdb.org"),
        ('[influxdb]\nbucket = ""\n', "influxdb.bucket"),
        ('[source]\ncommand = [""]\n', "source.command"),
        ('[source]\ncommand = ["probe-rs\\u0000"]\n', "source.command[0]"),
        ('[source]\ncommand = ["sh", "-c", "a\\u001b"]\n', "source.command[2]"),
        ('[source]\nport = "/dev/tty\\nACM0"\n', "source.port"),
        ('[mqtt]\n"bad\\nkey" = 1\n', 'mqtt."bad\\nkey"'),
        ('["bad\\nsection"]\nx = 1\n', '"bad\\nsection"'),
    ],
)
def test_strings_are_checked(tmp_path: Path, text: str, key: str) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert "\n" not in str(err)


@pytest.mark.parametrize("prefix", ["", "+", "#", "a/+/b", "a/#", "/a", "a/", "a//b", "a\\nb"])
def test_topic_prefix_has_no_wildcards_or_empty_levels(tmp_path: Path, prefix: str) -> None:
    err = config_error(tmp_path, f'[mqtt]\ntopic_prefix = "{prefix}"\n')
    assert err.key == "mqtt.topic_prefix"


def test_a_command_may_carry_a_multi_line_script(tmp_path: Path) -> None:
    text = '[source]\ncommand = ["sh", "-c", "echo a\\n\\techo b\\r\\n"]\n'
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert cfg.source.command[2] == "echo a\n\techo b\r\n"


def test_special_characters_in_tags_are_escaped_not_refused(tmp_path: Path) -> None:
    from gateway.records import tag_suffix

    text = '[influxdb.tags]\n"my site" = "a,b=c d\\\\e"\n'
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert tag_suffix(cfg.influxdb.tags) == r",my\ site=a\,b\=c\ d\\e"


def test_source_file_must_be_readable(tmp_path: Path) -> None:
    text = f'[source]\nkind = "file"\npath = "{tmp_path / "absent.jsonl"}"\n'
    err = config_error(tmp_path, text)
    assert err.key == "source.path"
    assert "No such file" in str(err)


# -- TLS files ----------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a client certificate and key, a second key and an encrypted key."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("ca", "other"):
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
            cwd=d,
        )  # fmt: skip
    openssl("rsa", "-in", "ca.key", "-aes256", "-passout", "pass:pw", "-out", "enc.key", cwd=d)
    (d / "junk.pem").write_text("not a certificate\n")
    (d / "empty.pem").write_text("")
    return d


def tls_text(pki: Path, **files: str) -> str:
    return "[mqtt]\n" + "".join(f'{k} = "{pki / v}"\n' for k, v in files.items())


def test_good_tls_files_are_accepted(tmp_path: Path, pki: Path) -> None:
    text = tls_text(pki, ca_file="ca.crt", cert_file="ca.crt", key_file="ca.key")
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert cfg.mqtt.ca_file == str(pki / "ca.crt")


@pytest.mark.parametrize(
    ("files", "key", "says"),
    [
        ({"ca_file": "absent.crt"}, "mqtt.ca_file", "No such file"),
        ({"ca_file": "."}, "mqtt.ca_file", "Is a directory"),
        ({"ca_file": "junk.pem"}, "mqtt.ca_file", "no usable certificate"),
        ({"ca_file": "empty.pem"}, "mqtt.ca_file", "no usable certificate"),
        ({"ca_file": "ca.key"}, "mqtt.ca_file", "no usable certificate"),
        (
            {"ca_file": "ca.crt", "cert_file": "absent.crt", "key_file": "ca.key"},
            "mqtt.cert_file",
            "No such file",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "ca.key", "key_file": "ca.key"},
            "mqtt.cert_file",
            "no usable certificate",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "ca.crt", "key_file": "absent.key"},
            "mqtt.key_file",
            "No such file",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "ca.crt", "key_file": "junk.pem"},
            "mqtt.key_file",
            "no usable private key",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "ca.crt", "key_file": "other.key"},
            "mqtt.key_file",
            "not the private key",
        ),
        (
            {"ca_file": "ca.crt", "cert_file": "ca.crt", "key_file": "enc.key"},
            "mqtt.key_file",
            "encrypted",
        ),
        ({"cert_file": "ca.crt", "key_file": "ca.key"}, "mqtt.cert_file", "set mqtt.ca_file"),
        ({"ca_file": "ca.crt", "cert_file": "ca.crt"}, "mqtt.cert_file", "go together"),
    ],
)
def test_bad_tls_files_name_their_key(
    tmp_path: Path, pki: Path, files: dict[str, str], key: str, says: str
) -> None:
    err = config_error(tmp_path, tls_text(pki, **files))
    assert err.key == key
    assert says in str(err)
    assert "BEGIN" not in str(err)


# -- secrets ------------------------------------------------------------------------

SECRET = "s3cret-Pw"


def assert_no_secret(err: ConfigError) -> None:
    """Neither the secret nor either part of it around a line break is quoted."""
    for text in (str(err), err.message, repr(err)):
        for part in (SECRET, SECRET[:3], SECRET[3:]):
            assert part not in text


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        (f"{SECRET}\n".encode(), SECRET),
        (f"{SECRET}\r\n".encode(), SECRET),
        (SECRET.encode(), SECRET),
        (f" {SECRET} \n".encode(), f" {SECRET} "),
    ],
)
def test_one_trailing_newline_is_stripped_from_a_secret_file(
    tmp_path: Path, content: bytes, expect: str
) -> None:
    (tmp_path / "pw").write_bytes(content)
    text = f'[mqtt]\npassword_file = "{tmp_path / "pw"}"\n'
    assert load_config(write(tmp_path, text), environ=NO_ENV).mqtt.password == expect


@pytest.mark.parametrize(
    "content",
    [
        f"{SECRET}\n\n".encode(),
        f"{SECRET}\r\n\r\n".encode(),
        f"{SECRET[:3]}\n{SECRET[3:]}".encode(),
        f"{SECRET[:3]}\r{SECRET[3:]}\n".encode(),
        f"{SECRET}\r".encode(),
        f"{SECRET}\x00".encode(),
        SECRET.encode() + b"\xff\xfe",
        b"",
        b"\n",
    ],
)
@pytest.mark.parametrize(
    ("section", "name"), [("mqtt", "password_file"), ("influxdb", "token_file")]
)
def test_bad_secret_file_names_its_key_and_never_the_secret(
    tmp_path: Path, content: bytes, section: str, name: str
) -> None:
    (tmp_path / "secret").write_bytes(content)
    err = config_error(tmp_path, f'[{section}]\n{name} = "{tmp_path / "secret"}"\n')
    assert err.key == f"{section}.{name}"
    assert_no_secret(err)


def test_secret_file_that_is_a_directory_names_its_key(tmp_path: Path) -> None:
    assert config_error(tmp_path, f'[mqtt]\npassword_file = "{tmp_path}"\n').key == (
        "mqtt.password_file"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_secret_file_says_so(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(SECRET)
    secret.chmod(0)
    err = config_error(tmp_path, f'[influxdb]\ntoken_file = "{secret}"\n')
    assert err.key == "influxdb.token_file"
    assert "Permission denied" in str(err)


@pytest.mark.parametrize("env", [MQTT_PASSWORD_ENV, INFLUX_TOKEN_ENV])
def test_secret_from_environment_loses_one_trailing_newline(tmp_path: Path, env: str) -> None:
    cfg = load_config(write(tmp_path, ""), environ={env: f"{SECRET}\r\n"})
    assert SECRET in (cfg.mqtt.password, cfg.influxdb.token)


@pytest.mark.parametrize("value", [f"{SECRET}\n\n", f"{SECRET[:3]}\n{SECRET[3:]}", f"{SECRET}\r"])
@pytest.mark.parametrize("env", [MQTT_PASSWORD_ENV, INFLUX_TOKEN_ENV])
def test_secret_from_environment_with_a_line_break_is_refused(
    tmp_path: Path, env: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, ""), environ={env: value})
    assert info.value.key == env
    assert_no_secret(info.value)


# -- ids: boxes installed from one recipe never collide -----------------------------


@pytest.mark.parametrize(
    ("hostname", "expect"),
    [
        ("gw-north-7", "gw-north-7"),
        ("Box 7.plant.example", "Box-7-plant-example"),
        ("-edge_01-", "edge_01"),
        ("...", "gateway"),
        ("", "gateway"),
        ("x" * 100, "x" * 64),
    ],
)
def test_gateway_id_is_the_host_name_without_a_machine_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hostname: str, expect: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    cfg = load_config(write(tmp_path, ""), environ=NO_ENV, machine_id_file=tmp_path / "none")
    assert cfg.gateway.id == expect
    assert cfg.mqtt.client_id == f"iiot-gateway-{expect}"
    assert cfg.derived_id is not None
    assert not cfg.derived_id.machine_id
    assert "does not exist" in cfg.derived_id.note


def machine_id(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_two_boxes_with_one_host_name_get_two_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "raspberrypi")
    recipe = write(tmp_path, '[mqtt]\nhost = "broker"\n')
    a = load_config(
        recipe, environ=NO_ENV, machine_id_file=machine_id(tmp_path, "a", "0" * 31 + "1\n")
    )
    b = load_config(
        recipe, environ=NO_ENV, machine_id_file=machine_id(tmp_path, "b", "0" * 31 + "2\n")
    )
    assert a.gateway.id != b.gateway.id
    assert a.mqtt.client_id != b.mqtt.client_id
    for cfg in (a, b):
        assert re.fullmatch(r"raspberrypi-[0-9a-f]{8}", cfg.gateway.id)
        assert cfg.derived_id is not None
        assert cfg.derived_id.machine_id
        assert cfg.mqtt.client_id == f"iiot-gateway-{cfg.gateway.id}"


def test_derived_id_is_stable_and_does_not_show_the_machine_id(tmp_path: Path) -> None:
    mid = "3d1219c7c4c5404aaa1f6d2a48adfda4"
    path = machine_id(tmp_path, "m", mid + "\n")
    first = config_mod.derive_gateway_id("edge", path)
    assert first == config_mod.derive_gateway_id("edge", path)
    assert mid[:8] not in first.value
    # Whitespace around the id is not part of it (systemd writes a newline).
    assert config_mod.derive_gateway_id("edge", machine_id(tmp_path, "n", f"  {mid}")) == first


def test_derived_id_stays_within_the_length_limit(tmp_path: Path) -> None:
    derived = config_mod.derive_gateway_id("x" * 100, machine_id(tmp_path, "m", "ab" * 16))
    assert len(derived.value) == config_mod.MAX_DERIVED_ID_CHARS
    assert re.fullmatch(r"x{55}-[0-9a-f]{8}", derived.value)


@pytest.mark.parametrize("text", ["", "\n", "uninitialized\n"])
def test_an_empty_machine_id_falls_back_to_the_host_name(tmp_path: Path, text: str) -> None:
    derived = config_mod.derive_gateway_id("edge-1", machine_id(tmp_path, "m", text))
    assert (derived.value, derived.machine_id) == ("edge-1", False)
    assert "is empty" in derived.note


def test_an_unreadable_machine_id_falls_back_to_the_host_name(tmp_path: Path) -> None:
    derived = config_mod.derive_gateway_id("edge-1", tmp_path)  # a directory
    assert (derived.value, derived.machine_id) == ("edge-1", False)
    assert "unreadable" in derived.note


def test_explicit_gateway_id_is_kept_whatever_the_machine_id(tmp_path: Path) -> None:
    text = '[gateway]\nid = "line-3"\n'
    for n in range(2):
        mid = machine_id(tmp_path, f"m{n}", f"{n:032x}")
        cfg = load_config(write(tmp_path, text), environ=NO_ENV, machine_id_file=mid)
        assert cfg.gateway.id == "line-3"
        assert cfg.mqtt.client_id == "iiot-gateway-line-3"
        assert cfg.derived_id is None


def test_gateway_id_falls_back_when_the_host_name_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail() -> str:
        raise OSError("no name")

    monkeypatch.setattr(socket, "gethostname", fail)
    cfg = load_config(write(tmp_path, ""), environ=NO_ENV, machine_id_file=tmp_path / "none")
    assert cfg.gateway.id == "gateway"


def test_ten_boxes_from_one_recipe_get_ten_client_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = write(tmp_path, '[mqtt]\nhost = "broker"\n')
    ids = set()
    for n in range(10):
        monkeypatch.setattr(socket, "gethostname", lambda n=n: f"edge-{n:02d}")
        ids.add(load_config(recipe, environ=NO_ENV).mqtt.client_id)
    assert len(ids) == 10


def test_client_id_follows_an_explicit_gateway_id(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[gateway]\nid = "line-3"\n'), environ=NO_ENV)
    assert cfg.mqtt.client_id == "iiot-gateway-line-3"


def test_explicit_client_id_wins(tmp_path: Path) -> None:
    text = '[gateway]\nid = "line-3"\n[mqtt]\nclient_id = "plc-bridge"\n'
    cfg = load_config(write(tmp_path, text), environ=NO_ENV)
    assert (cfg.gateway.id, cfg.mqtt.client_id) == ("line-3", "plc-bridge")


def test_parse_config_derives_the_client_id_too() -> None:
    cfg = parse_config({"gateway": {"id": "gw-x"}}, environ=NO_ENV)
    assert cfg.mqtt.client_id == "iiot-gateway-gw-x"


# -- [alerts] ---------------------------------------------------------------------------

RULE = '[[alerts.rule]]\nname = "hot"\nmetric = "node1/temperature"\n'


def test_alert_rules_load_in_file_order(tmp_path: Path) -> None:
    text = (
        '[alerts]\nstale_after = 120\nstale_groups = ["node1"]\n'
        + RULE
        + "above = 35.0\nfor = 60\nclear = 33\n"
        + '[[alerts.rule]]\nname = "frost"\nmetric = "node2/temperature"\nbelow = 2\n'
    )
    alerts = load_config(write(tmp_path, text), environ=NO_ENV).alerts
    assert (alerts.stale_after, alerts.stale_groups) == (120.0, ("node1",))
    hot, frost = alerts.rules
    assert (hot.name, hot.group, hot.field, hot.above, hot.for_s, hot.clear_at) == (
        "hot",
        "node1",
        "temperature",
        35.0,
        60.0,
        33.0,
    )
    assert (frost.below, frost.for_s, frost.clear_at) == (2.0, 0.0, 2.0)  # no hysteresis


def test_the_readme_example_rule_loads(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    example = readme.split("```toml\n[[alerts.rule]]\n", 1)[1].split("```", 1)[0]
    cfg = load_config(write(tmp_path, "[[alerts.rule]]\n" + example), environ=NO_ENV)
    assert [r.name for r in cfg.alerts.rules] == ["greenhouse-hot"]


def test_the_example_config_has_no_rule_but_shows_one(tmp_path: Path) -> None:
    text = (REPO / "config.toml").read_text()
    assert Config().alerts.rules == ()
    uncommented = re.sub(
        r"^# (\[\[alerts\.rule\]\]|(name|metric|above|for|clear) = )",
        r"\1",
        text,
        flags=re.MULTILINE,
    )
    cfg = load_config(write(tmp_path, uncommented), environ=NO_ENV)
    assert [r.metric for r in cfg.alerts.rules] == ["node1/temperature"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (RULE + "above = 1\nwhen = 2\n", "alerts.rule[0].when"),
        (RULE + "above = 1\nbelow = 0\n", "alerts.rule[0].below"),
        (RULE, "alerts.rule[0]"),
        (RULE + "above = 1\nclear = 2\n", "alerts.rule[0].clear"),
        (RULE + "below = 1\nclear = 0\n", "alerts.rule[0].clear"),
        ('[[alerts.rule]]\nname = "a b"\nmetric = "n/t"\nabove = 1\n', "alerts.rule[0].name"),
        ('[[alerts.rule]]\nname = ""\nmetric = "n/t"\nabove = 1\n', "alerts.rule[0].name"),
        ('[[alerts.rule]]\nname = "stale-x"\nmetric = "n/t"\nabove = 1\n', "alerts.rule[0].name"),
        ('[[alerts.rule]]\nmetric = "n/t"\nabove = 1\n', "alerts.rule[0].name"),
        ('[[alerts.rule]]\nname = "a"\nabove = 1\n', "alerts.rule[0].metric"),
        ('[[alerts.rule]]\nname = "a"\nmetric = "nt"\nabove = 1\n', "alerts.rule[0].metric"),
        ('[[alerts.rule]]\nname = "a"\nmetric = "n/t/x"\nabove = 1\n', "alerts.rule[0].metric"),
        ('[[alerts.rule]]\nname = "a"\nmetric = "n/"\nabove = 1\n', "alerts.rule[0].metric"),
        ('[[alerts.rule]]\nname = 3\nmetric = "n/t"\nabove = 1\n', "alerts.rule[0].name"),
        (RULE + "above = nan\n", "alerts.rule[0].above"),
        (RULE + "below = -inf\n", "alerts.rule[0].below"),
        (RULE + "above = 1\nclear = inf\n", "alerts.rule[0].clear"),
        (RULE + "above = 1\nfor = nan\n", "alerts.rule[0].for"),
        (RULE + "above = 1\nfor = -1\n", "alerts.rule[0].for"),
        (RULE + "above = 1\nfor = 1e9\n", "alerts.rule[0].for"),
        (RULE + 'above = "35"\n', "alerts.rule[0].above"),
        (RULE + "above = 1\n" + RULE + "below = 1\n", "alerts.rule[1].name"),
        ('[alerts]\nstale_groups = ["node/1"]\n', "alerts.stale_groups[0]"),
        ("[alerts]\nstale_groups = [1]\n", "alerts.stale_groups[0]"),
        ("[alerts]\nstale_after = -1\n", "alerts.stale_after"),
        ("[alerts]\nrules = []\n", "alerts.rules"),
        ("[alerts]\nrule = 3\n", "alerts.rule"),
        ("[alerts]\nrule = [3]\n", "alerts.rule[0]"),
        ("[alerts]\nwhatever = 3\n", "alerts.whatever"),
    ],
)
def test_a_bad_alert_rule_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    assert config_error(tmp_path, text).key == key


def test_a_duplicate_rule_name_says_where_the_first_one_is(tmp_path: Path) -> None:
    err = config_error(tmp_path, RULE + "above = 1\n" + RULE + "below = 1\n")
    assert str(err) == "alerts.rule[1].name: duplicate rule name 'hot' (also alerts.rule[0])"


def test_cli_bad_alert_rule_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, RULE + "above = 35\nclear = 36\n")
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert (
        out.stderr.strip().splitlines()[-1].endswith("alerts.rule[0].clear: must be <= above (35)")
    )


# -- several brokers and database URLs ----------------------------------------------


def test_servers_and_urls_are_lists_of_endpoints(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            '[mqtt]\nservers = ["mq1.example:1883", "10.0.0.2:8883", "[::1]:1884"]\n'
            '[influxdb]\nurls = ["http://vm1:8428", "https://vm2.example"]\n',
        ),
        environ=NO_ENV,
    )
    assert cfg.mqtt.endpoints == (("mq1.example", 1883), ("10.0.0.2", 8883), ("::1", 1884))
    # One-off connections (replay, check hints, logs) use the first.
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("mq1.example", 1883)
    assert cfg.influxdb.endpoints == ("http://vm1:8428", "https://vm2.example")
    assert cfg.influxdb.url == "http://vm1:8428"


def test_host_port_and_url_stay_valid(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, '[mqtt]\nhost = "b"\nport = 1\n[influxdb]\nurl = "http://i:2"\n'),
        environ=NO_ENV,
    )
    assert cfg.mqtt.servers == ()
    assert cfg.mqtt.endpoints == (("b", 1),)
    assert cfg.influxdb.endpoints == ("http://i:2",)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[mqtt]\nservers = ["a:1"]\nhost = "b"\n', "mqtt.servers"),
        ('[mqtt]\nport = 1884\nservers = ["a:1"]\n', "mqtt.servers"),
        ('[influxdb]\nurl = "http://a"\nurls = ["http://b"]\n', "influxdb.urls"),
    ],
)
def test_mixing_the_two_forms_is_refused(tmp_path: Path, text: str, key: str) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert "not both" in str(err)


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ('[mqtt]\nservers = ["a:1", "b"]\n', "mqtt.servers[1]", "host:port"),
        ('[mqtt]\nservers = ["a:0"]\n', "mqtt.servers[0]", "1..65535"),
        ('[mqtt]\nservers = ["a:65536"]\n', "mqtt.servers[0]", "1..65535"),
        ('[mqtt]\nservers = ["a:x"]\n', "mqtt.servers[0]", "number"),
        ('[mqtt]\nservers = ["::1:1883"]\n', "mqtt.servers[0]", "brackets"),
        ('[mqtt]\nservers = ["bad host:1"]\n', "mqtt.servers[0]", "host name"),
        ('[mqtt]\nservers = [":1883"]\n', "mqtt.servers[0]", "host:port"),
        ('[mqtt]\nservers = ["a:1", "a:1"]\n', "mqtt.servers[1]", "twice"),
        ("[mqtt]\nservers = [1883]\n", "mqtt.servers[0]", "string"),
        ("[mqtt]\nservers = []\n", "mqtt.servers", "at least one"),
        ('[mqtt]\nservers = "a:1"\n', "mqtt.servers", "list"),
        ('[influxdb]\nurls = ["http://a", "ftp://b"]\n', "influxdb.urls[1]", "http://"),
        ('[influxdb]\nurls = ["http://a:99999"]\n', "influxdb.urls[0]", "port"),
        ('[influxdb]\nurls = ["http://a", "http://a"]\n', "influxdb.urls[1]", "twice"),
        ("[influxdb]\nurls = []\n", "influxdb.urls", "at least one"),
    ],
)
def test_bad_server_entries_name_their_dotted_key(
    tmp_path: Path, text: str, key: str, says: str
) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert says in str(err)
