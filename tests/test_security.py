"""Secure links: MQTT over TLS with a password and an ACL, wrong CA, wrong
password; `gateway check` exit codes. Certificates are made here with openssl."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import free_port, wait_listening
from tests.support import REPO, Subscriber, base_config, wait_until, write_config

USER, PASSWORD = "gw", "field-secret-42"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip


@dataclass
class TlsBroker:
    tls_port: int
    plain_port: int
    ca: Path
    other_ca: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost", cwd=d,
    )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext", cwd=d,
    )  # fmt: skip
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), USER, PASSWORD], check=True)
    (d / "acl").write_text(f"user {USER}\ntopic readwrite sec/#\n")
    tls_port, plain_port = free_port(), free_port()
    (d / "mosquitto.conf").write_text(
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {d / 'ca.crt'}\ncertfile {d / 'server.crt'}\nkeyfile {d / 'server.key'}\n"
        f"listener {plain_port} 127.0.0.1\n"
        f"allow_anonymous false\npassword_file {d / 'passwd'}\nacl_file {d / 'acl'}\n"
        "persistence false\n"
        # Started as root, mosquitto would drop to its own user, which cannot
        # read the test's private temporary directory.
        "user root\n"
    )
    log = open(d / "mosquitto.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")], stdout=log, stderr=log)
    wait_listening(tls_port)
    wait_listening(plain_port)
    yield TlsBroker(tls_port, plain_port, d / "ca.crt", d / "other-ca.crt", proc)
    proc.terminate()
    proc.wait()


def tls_config(tmp_path: Path, test_id: str, b: TlsBroker, tsdb, ca: Path) -> dict:
    cfg = base_config(
        tmp_path,
        test_id,
        b.tls_port,
        tsdb.url,
        [sys.executable, "-m", "gateway", "simulate", "--interval", "0.2", "--seed", "1"],
    )
    cfg["mqtt"].update(
        host="localhost",  # the certificate's name: hostname verification is on
        topic_prefix=f"sec/{test_id}",
        username=USER,
        ca_file=str(ca),
    )
    return cfg


class AuthSubscriber(Subscriber):
    """A subscriber on the plain listener, with the same credentials."""

    def __init__(self, port: int, topic: str) -> None:
        self.extra = ["-u", USER, "-P", PASSWORD]
        super().__init__(port, topic)


def test_tls_with_password_and_acl_delivers(
    tmp_path: Path, tls_broker: TlsBroker, tsdb, test_id, gateway_factory
) -> None:
    cfg = tls_config(tmp_path, test_id, tls_broker, tsdb, tls_broker.ca)
    sub = AuthSubscriber(tls_broker.plain_port, f"sec/{test_id}/#")
    gw = gateway_factory(cfg, env={"GATEWAY_MQTT_PASSWORD": PASSWORD})
    try:
        assert sub.wait_for(lambda m: len(m) >= 18, 30), gw.log_text()
    finally:
        assert gw.terminate() == 0
        sub.close()
    assert PASSWORD not in gw.log_text()


@pytest.mark.parametrize(
    ("problem", "expect"),
    [("wrong_ca", "certificate verify failed"), ("wrong_password", "check mqtt.username")],
)
def test_tls_or_auth_failure_is_retried_not_fatal(
    tmp_path: Path, tls_broker: TlsBroker, tsdb, test_id, gateway_factory, problem, expect
) -> None:
    ca = tls_broker.other_ca if problem == "wrong_ca" else tls_broker.ca
    password = "wrong" if problem == "wrong_password" else PASSWORD
    cfg = tls_config(tmp_path, test_id, tls_broker, tsdb, ca)
    gw = gateway_factory(cfg, env={"GATEWAY_MQTT_PASSWORD": password})
    assert wait_until(lambda: gw.log_text().count("mqtt: attempt failed") >= 3, 30), gw.log_text()
    assert gw.alive()
    assert expect in gw.log_text()
    assert gw.terminate() == 0
    # Readings were kept for later, not lost.
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(tmp_path / "config-0.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"GATEWAY_MQTT_PASSWORD": password, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert check.returncode == 1, check.stdout + check.stderr
    assert "mqtt" in check.stdout
    assert "FAILED" in check.stdout


def run_check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        timeout=60,
    )


def test_check_exit_codes(tmp_path: Path, broker, tsdb, test_id) -> None:
    cfg = base_config(tmp_path, test_id, broker.port, tsdb.url, ["true"])
    good = run_check(write_config(tmp_path / "good.toml", cfg))
    assert good.returncode == 0, good.stdout + good.stderr
    # source, buffer, a coverage line per buffer (a warning is no failure), mqtt,
    # influxdb (VictoriaMetrics: reachable, not verified)
    names = [line.split()[0] for line in good.stdout.splitlines()]
    assert names == ["source", "buffer", "coverage", "coverage", "mqtt", "influxdb"]
    assert "FAILED" not in good.stdout

    cfg["influxdb"]["url"] = f"http://127.0.0.1:{free_port()}"
    down = run_check(write_config(tmp_path / "down.toml", cfg))
    assert down.returncode == 1
    assert "influxdb" in down.stdout
    assert "FAILED" in down.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'x'\n")
    result = run_check(bad)
    assert result.returncode == 2
    assert "mqtt.port" in result.stderr
