"""`gateway check` finds what would fail at run time, one line each with its fix.

Every test runs `gateway check` as a process against real servers: Mosquitto
(anonymous, with a password file and an ACL, and with the dynamic-security
plugin for a refused subscription), VictoriaMetrics (no InfluxDB 2 API), and
for InfluxDB 2's answers an HTTP server of this file that gives them in
InfluxDB 2's order (token, org, bucket, write permission, then the body).
Checks that depend on who runs them (a serial device, a buffer directory) run
as `nobody` when the tests run as root.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import json
import os
import pty
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.services import Broker, Tsdb, free_port
from tests.support import (
    REPO,
    HttpRequest,
    HttpResponse,
    StubHttp,
    base_config,
    retained,
    write_config,
)

USER, PASSWORD = "gw", "probe-secret-17"
GOOD_TOKEN, READ_ONLY_TOKEN = "good-token-4242", "read-only-token-17"
ORG, BUCKET = "test", "test"  # what base_config names
TIMEOUT = 120  # seconds for one `gateway check`: generous, it is bounded itself


# -- an InfluxDB 2 as far as `gateway check` asks it ---------------------------------


class FakeInflux:
    """/ping, /health, /api/v2/buckets and /api/v2/write with InfluxDB 2's answers."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body)
        self.stored: list[bytes] = []  # bodies of writes that were accepted
        self.http = StubHttp({"*": self.answer})
        self.url = self.http.url

    def close(self) -> None:
        self.http.close()

    def answer(self, request: HttpRequest) -> HttpResponse:
        self.requests.append((request.method, request.path, request.body))
        auth = request.headers.get("authorization", "")
        status, doc = self.route(request.method, request.path, request.query, auth, request.body)
        if request.method == "POST" and status == 204:
            self.stored.append(request.body)
        data = json.dumps(doc).encode() if doc is not None else b""
        headers = {"X-Influxdb-Version": "v2.7.10"}
        if data:
            headers["Content-Type"] = "application/json; charset=utf-8"
        return status, headers, data

    def route(
        self, method: str, path: str, query: dict[str, str], auth: str, body: bytes
    ) -> tuple[int, dict[str, Any] | None]:
        if method == "GET" and path == "/ping":
            return 204, None
        if method == "GET" and path == "/health":
            return 200, {"name": "influxdb", "status": "pass", "version": "v2.7.10"}
        if path not in ("/api/v2/buckets", "/api/v2/write"):
            return 404, {"code": "not found", "message": "path not found"}
        token = auth.removeprefix("Token ")
        if token not in (GOOD_TOKEN, READ_ONLY_TOKEN):
            return 401, {"code": "unauthorized", "message": "unauthorized access"}
        org = query.get("org", "")
        if org != ORG:
            return 404, {"code": "not found", "message": f'organization name "{org}" not found'}
        if method == "GET" and path == "/api/v2/buckets":
            found = query.get("name") == BUCKET
            bucket = {"id": "0a1b2c3d4e5f6a7b", "orgID": "1a2b3c4d5e6f7a8b", "name": BUCKET}
            return 200, {"buckets": [{**bucket, "retentionRules": []}] if found else []}
        if method != "POST":
            return 405, {"code": "method not allowed", "message": "method not allowed"}
        bucket_name = query.get("bucket", "")
        if bucket_name != BUCKET:
            return 404, {"code": "not found", "message": f'bucket "{bucket_name}" not found'}
        if token != GOOD_TOKEN:
            return 403, {"code": "forbidden", "message": "insufficient permissions for write"}
        if not body:
            return 400, {"code": "invalid", "message": "writing requires points"}
        return 204, None


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    server = FakeInflux()
    yield server
    server.close()


# -- running the check -------------------------------------------------------------


def run_check(
    config: Path,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_INFLUXDB_TOKEN": GOOD_TOKEN, **(env or {})},
        timeout=TIMEOUT,
        preexec_fn=preexec_fn,
    )


def failures(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if "FAILED" in line]


def one_failure(result: subprocess.CompletedProcess[str], what: str) -> str:
    """The single FAILED line (of check ``what``) of a run that exited 1."""
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    failed = failures(result)
    assert len(failed) == 1, out
    assert failed[0].startswith(what), out
    return failed[0]


def config(
    tmp_path: Path, test_id: str, mqtt_port: int, influx_url: str, command: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    return base_config(tmp_path, test_id, mqtt_port, influx_url, command or ["true"])


@contextlib.contextmanager
def shared_dir(mode: int) -> Iterator[Path]:
    """A directory under /tmp that another user can reach, with ``mode``."""
    path = Path(tempfile.mkdtemp(prefix="gateway-check-"))
    try:
        path.chmod(mode)
        yield path
    finally:
        path.chmod(0o755)
        shutil.rmtree(path)


def as_other_user() -> tuple[Callable[[], None] | None, str]:
    """How to run the check as a user without special rights, and that user's name.

    As root, the child's real uid and gid become nobody's (os.access() answers
    for the real ids) while it keeps root's effective ids, so that it can still
    read the interpreter and this checkout wherever they are.
    """
    if os.geteuid() != 0:
        return None, pwd.getpwuid(os.getuid()).pw_name
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody to run the check as")

    def drop() -> None:
        os.setgroups([])
        os.setresgid(nobody.pw_gid, 0, 0)
        os.setresuid(nobody.pw_uid, 0, 0)

    return drop, "nobody"


# -- all well ------------------------------------------------------------------------


def test_all_checks_pass_and_nothing_is_left_behind(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    firmware = tmp_path / "node2.elf"
    firmware.write_bytes(b"\x7fELF")
    cfg = config(tmp_path, test_id, broker.port, influx.url, ["true", "attach", str(firmware)])
    result = run_check(write_config(tmp_path / "config.toml", cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    # Coverage is a warning, never a failure: the default MQTT bound holds 18 minutes.
    coverage = [line for line in lines if line.startswith("coverage")]
    assert len(coverage) == 2
    lines = [line for line in lines if not line.startswith("coverage")]
    assert [line.split()[0] for line in lines] == ["source", "source", "buffer", "mqtt", "influxdb"]
    assert lines[0].split()[1] == shutil.which("true", path="/usr/bin:/bin")
    assert lines[2].endswith("ok (will be created)")
    assert all(line.endswith(("ok", "ok (will be created)")) for line in lines), result.stdout
    # The mqtt column lines up as it always did.
    assert lines[3].startswith(f"mqtt      127.0.0.1:{broker.port}")
    # The empty write was made, and stored nothing.
    assert ("POST", "/api/v2/write", b"") in influx.requests
    assert influx.stored == []
    assert not (tmp_path / "buffer").exists()
    # The probe was not retained.
    assert retained(broker.port, f"{test_id}/#") == {}
    assert GOOD_TOKEN not in result.stdout + result.stderr


def test_check_warns_when_a_bound_covers_less_than_min_coverage_hours(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    cfg = config(tmp_path, test_id, broker.port, influx.url, ["true"])
    cfg["gateway"]["min_coverage_hours"] = 24.0
    cfg["mqtt"]["buffer_max_messages"] = 1000  # the design's default: 18 minutes of the seed
    cfg["influxdb"]["buffer_max_points"] = 100_000  # 31 hours
    result = run_check(write_config(tmp_path / "config.toml", cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    coverage = {
        line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("coverage")
    }
    mqtt, influx_line = coverage["mqtt.buffer_max_messages"], coverage["influxdb.buffer_max_points"]
    assert "WARNING: 0.3 h of outage at 3,240 records/h (a packet every 10 s)" in mqtt
    assert "raise mqtt.buffer_max_messages to at least 77760" in mqtt
    assert "ok: 30.9 h" in influx_line
    # 0 turns it off: the figures stay, the warning goes.
    cfg["gateway"]["min_coverage_hours"] = 0.0
    result = run_check(write_config(tmp_path / "config.toml", cfg))
    assert "WARNING" not in result.stdout


# -- the source ----------------------------------------------------------------------


def test_program_not_on_path(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    cfg = config(tmp_path, test_id, broker.port, influx.url, ["probe-rs", "attach"])
    result = run_check(write_config(tmp_path / "c.toml", cfg), env={"PATH": str(empty)})
    line = one_failure(result, "source")
    assert f"probe-rs not found on PATH ({empty}): install it to /usr/local/bin" in line
    assert "the service cannot see ~/.cargo/bin" in line


def test_program_only_in_a_home_directory(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    # `cargo install probe-rs` and a PATH with ~/.cargo/bin: found, but not by the service.
    cargo_bin = tmp_path / "home" / ".cargo" / "bin"
    cargo_bin.mkdir(parents=True)
    program = cargo_bin / "probe-rs"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    cfg = config(tmp_path, test_id, broker.port, influx.url, ["probe-rs", "attach"])
    result = run_check(
        write_config(tmp_path / "c.toml", cfg),
        env={"PATH": f"{cargo_bin}:/usr/bin:/bin", "HOME": str(tmp_path / "home")},
    )
    line = one_failure(result, "source")
    assert "is found in a home directory, which the service cannot see" in line
    assert f"sudo install -m 755 {program} /usr/local/bin/" in line


def test_relative_path_in_the_command(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    command = ["true", "attach", "--chip", "STM32F446RETx", "firmware/build/node2.elf"]
    cfg = config(tmp_path, test_id, broker.port, influx.url, command)
    line = one_failure(run_check(write_config(tmp_path / "c.toml", cfg)), "source")
    assert "firmware/build/node2.elf" in line
    assert "source.command[4] is a relative path" in line
    assert "the service runs in /var/lib/iiot-gateway: give the absolute path" in line


def test_missing_firmware_file(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    elf = tmp_path / "build" / "node2.elf"
    cfg = config(tmp_path, test_id, broker.port, influx.url, ["true", "attach", str(elf)])
    line = one_failure(run_check(write_config(tmp_path / "c.toml", cfg)), "source")
    assert f"firmware file {elf} does not exist: build it (make -C firmware)" in line
    assert "or fix source.command[2]" in line


def test_missing_serial_device(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    cfg = config(tmp_path, test_id, broker.port, influx.url)
    port = str(tmp_path / "ttyACM7")
    cfg["source"] = {"kind": "serial", "port": port}
    line = one_failure(run_check(write_config(tmp_path / "c.toml", cfg)), "source")
    assert f"{port} does not exist: plug the board in, or fix source.port" in line
    # What pyserial finds is named (here, in a VM, usually nothing real).
    assert "serial device" in line.split("fix source.port", 1)[1]


def test_serial_device_without_permission(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    drop, user = as_other_user()
    master, slave = pty.openpty()
    try:
        device = os.ttyname(slave)
        if drop is not None:
            # As a board's port is: root's, group dialout, 0660.
            with contextlib.suppress(KeyError):
                os.chown(device, 0, grp.getgrnam("dialout").gr_gid)
            os.chmod(device, 0o660)
        else:
            os.chmod(device, 0o000)
        group = grp.getgrgid(os.stat(device).st_gid).gr_name
        with shared_dir(0o777) as shared:
            cfg = config(tmp_path, test_id, broker.port, influx.url)
            cfg["gateway"]["buffer_dir"] = str(shared / "buffer")
            cfg["source"] = {"kind": "serial", "port": device}
            result = run_check(write_config(tmp_path / "c.toml", cfg), preexec_fn=drop)
        line = one_failure(result, "source")
        assert f"user {user} may not read and write {device}" in line
        if drop is not None:
            assert f"add the user to group {group} (sudo usermod -aG {group} {user}" in line
        else:
            assert f"group {group}" in line
    finally:
        os.close(slave)
        os.close(master)


# -- the buffer directory ------------------------------------------------------------


@pytest.mark.parametrize("where", ["existing", "to_create"])
def test_buffer_dir_not_writable(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str, where: str
) -> None:
    drop, user = as_other_user()
    with shared_dir(0o555) as locked:
        buffer_dir = locked if where == "existing" else locked / "buffer"
        cfg = config(tmp_path, test_id, broker.port, influx.url)
        cfg["gateway"]["buffer_dir"] = str(buffer_dir)
        result = run_check(write_config(tmp_path / "c.toml", cfg), preexec_fn=drop)
    line = one_failure(result, "buffer")
    if where == "existing":
        assert f"not writable by user {user}" in line
        assert f"sudo chown {user} {buffer_dir}" in line
    else:
        assert f"does not exist and user {user} cannot create it in {locked}" in line
        assert f"sudo install -d -o {user} -m 700 {buffer_dir}" in line
    assert "or set gateway.buffer_dir" in line


def test_buffer_dir_under_a_file(
    tmp_path: Path, broker: Broker, influx: FakeInflux, test_id: str
) -> None:
    (tmp_path / "state").write_text("not a directory\n")
    cfg = config(tmp_path, test_id, broker.port, influx.url)
    cfg["gateway"]["buffer_dir"] = str(tmp_path / "state" / "buffer")
    line = one_failure(run_check(write_config(tmp_path / "c.toml", cfg)), "buffer")
    assert f"cannot be created: {tmp_path / 'state'} is not a directory" in line
    assert "set gateway.buffer_dir" in line


def test_a_buffer_dir_in_use_is_information_not_a_failure(tmp_path: Path) -> None:
    from gateway.buffer import lock_dir
    from gateway.check.local import check_buffer

    with lock_dir(tmp_path):  # as a running gateway holds it
        line = check_buffer(str(tmp_path))
    assert not line.failed
    assert line.verdict == f"ok (in use by a running gateway, pid {os.getpid()})"
    assert check_buffer(str(tmp_path)).verdict == "ok"


# -- MQTT ----------------------------------------------------------------------------


def acl_broker(tmp_path: Path, acl: str) -> Broker:
    """A Mosquitto with a password file and the ACL ``acl`` for USER."""
    passwd = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwd), USER, PASSWORD], check=True, timeout=30
    )
    (tmp_path / "acl").write_text(f"user {USER}\n{acl}\n")
    return Broker(
        tmp_path,
        extra_conf=(
            f"allow_anonymous false\npassword_file {passwd}\nacl_file {tmp_path / 'acl'}\n"
            # As root, mosquitto would drop to a user that cannot read tmp_path.
            "user root\n"
        ),
    ).start()


def test_mqtt_unreachable(tmp_path: Path, influx: FakeInflux, test_id: str) -> None:
    port = free_port()
    cfg = config(tmp_path, test_id, port, influx.url)
    line = one_failure(run_check(write_config(tmp_path / "c.toml", cfg)), "mqtt")
    assert f"127.0.0.1:{port}" in line
    assert "(is the broker running? check mqtt.host and mqtt.port)" in line


def test_mqtt_wrong_password(tmp_path: Path, influx: FakeInflux, test_id: str) -> None:
    broker = acl_broker(tmp_path, f"topic readwrite {test_id}/#")
    try:
        cfg = config(tmp_path, test_id, broker.port, influx.url)
        cfg["mqtt"]["username"] = USER
        wrong = "not-" + PASSWORD
        result = run_check(
            write_config(tmp_path / "c.toml", cfg), env={"GATEWAY_MQTT_PASSWORD": wrong}
        )
    finally:
        broker.stop()
    line = one_failure(result, "mqtt")
    assert "check mqtt.username and mqtt.password_file / $GATEWAY_MQTT_PASSWORD" in line
    assert wrong not in result.stdout + result.stderr


@pytest.mark.parametrize("grant", ["readwrite", "read"])
def test_mqtt_publish_permission(
    tmp_path: Path, influx: FakeInflux, test_id: str, grant: str
) -> None:
    # Mosquitto acknowledges a publish its ACL denies (MQTT 3.1.1) and drops it:
    # only the probe coming back tells the two apart.
    broker = acl_broker(tmp_path, f"topic {grant} {test_id}/#")
    try:
        cfg = config(tmp_path, test_id, broker.port, influx.url)
        cfg["mqtt"]["username"] = USER
        result = run_check(
            write_config(tmp_path / "c.toml", cfg), env={"GATEWAY_MQTT_PASSWORD": PASSWORD}
        )
    finally:
        broker.stop()
    assert PASSWORD not in result.stdout + result.stderr
    if grant == "readwrite":
        assert result.returncode == 0, result.stdout + result.stderr
        assert failures(result) == []
        return
    line = one_failure(result, "mqtt")
    assert f"publish not permitted under {test_id}/ (check the broker's ACL for user {USER}" in line


def _dynsec_plugin() -> str | None:
    found = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so") + glob.glob(
        "/usr/lib/mosquitto_dynamic_security.so"
    )
    return found[0] if found and shutil.which("mosquitto_ctrl") else None


def test_mqtt_subscribe_refused(tmp_path: Path, influx: FakeInflux, test_id: str) -> None:
    # Mosquitto's acl_file never refuses a subscription; the dynamic-security
    # plugin does (SUBACK 0x80) for a client allowed to publish only.
    plugin = _dynsec_plugin()
    if plugin is None:
        pytest.skip("Mosquitto's dynamic-security plugin is not installed")
    dynsec = tmp_path / "dynsec.json"
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(dynsec), USER, PASSWORD],
        check=True,
        capture_output=True,
        timeout=30,
    )
    doc = json.loads(dynsec.read_text())
    doc["roles"] = [
        {
            "rolename": "publisher",
            "acls": [{"acltype": "publishClientSend", "topic": f"{test_id}/#", "allow": True}],
        }
    ]
    doc["clients"][0]["roles"] = [{"rolename": "publisher"}]
    dynsec.write_text(json.dumps(doc))
    broker = Broker(
        tmp_path,
        extra_conf=(
            f"allow_anonymous false\nplugin {plugin}\nplugin_opt_config_file {dynsec}\nuser root\n"
        ),
    ).start()
    try:
        cfg = config(tmp_path, test_id, broker.port, influx.url)
        cfg["mqtt"]["username"] = USER
        result = run_check(
            write_config(tmp_path / "c.toml", cfg), env={"GATEWAY_MQTT_PASSWORD": PASSWORD}
        )
    finally:
        broker.stop()
    line = one_failure(result, "mqtt")
    assert "cannot verify publish permission: subscribe refused by ACL" in line
    assert f"read {test_id}/gateway/#" in line


# -- InfluxDB ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "org", "bucket", "expect"),
    [
        ("wrong-token", ORG, BUCKET, "token refused (HTTP 401: unauthorized access): check"),
        ("", ORG, BUCKET, "the server wants a token (HTTP 401"),
        (GOOD_TOKEN, "nope", BUCKET, "org 'nope' not found (HTTP 404"),
        (GOOD_TOKEN, ORG, "nope", "bucket 'nope' not found in org 'test' (HTTP 404"),
        (READ_ONLY_TOKEN, ORG, BUCKET, "the token may not write to bucket 'test' (HTTP 403"),
    ],
)
def test_influx_refuses(
    tmp_path: Path,
    broker: Broker,
    influx: FakeInflux,
    test_id: str,
    token: str,
    org: str,
    bucket: str,
    expect: str,
) -> None:
    cfg = config(tmp_path, test_id, broker.port, influx.url)
    cfg["influxdb"].update(org=org, bucket=bucket)
    env = {"GATEWAY_INFLUXDB_TOKEN": token}
    result = run_check(write_config(tmp_path / "c.toml", cfg), env=env)
    line = one_failure(result, "influxdb")
    assert expect in line
    fix = {
        "wrong-token": "influxdb.token_file / $GATEWAY_INFLUXDB_TOKEN",
        "": "set influxdb.token_file / $GATEWAY_INFLUXDB_TOKEN",
        READ_ONLY_TOKEN: "give it write access to that bucket",
    }.get(token, "check influxdb.org" if org != ORG else "check influxdb.bucket")
    assert fix in line
    if token:
        assert token not in result.stdout + result.stderr
    assert influx.stored == []


def test_influx_unreachable(tmp_path: Path, broker: Broker, test_id: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cfg = config(tmp_path, test_id, broker.port, url)
    line = one_failure(run_check(write_config(tmp_path / "c.toml", cfg)), "influxdb")
    assert url in line
    assert "cannot reach it:" in line
    assert "check influxdb.url" in line


def test_victoriametrics_is_reachable_but_not_verified(
    tmp_path: Path, broker: Broker, tsdb: Tsdb, test_id: str
) -> None:
    cfg = config(tmp_path, test_id, broker.port, tsdb.url)
    result = run_check(write_config(tmp_path / "c.toml", cfg))
    assert result.returncode == 0, result.stdout + result.stderr
    assert failures(result) == []
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("influxdb")]
    assert line.endswith("reachable; write permission not verified (no InfluxDB 2 API)")
    assert tsdb.export(testid=test_id) == []


def _executable(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / name
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    return program


def test_checkout_program_only_in_the_venv(tmp_path: Path) -> None:
    # `.venv/bin/gateway check --config ops/local.toml`: `gateway simulate` is
    # beside this gateway but not on PATH, so the advice is the checkout's.
    from gateway.check.local import check_source
    from gateway.config.sections import SourceSection

    venv_bin = tmp_path / ".venv" / "bin"
    _executable(venv_bin, "gateway")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = SourceSection(command=("gateway", "simulate"))
    [line] = check_source(cfg, {"PATH": str(empty)}, scripts_dir=str(venv_bin))
    assert line.failed
    assert "the source command resolves through PATH" in line.verdict
    assert f"gateway is in {venv_bin}, which is not on it" in line.verdict
    assert "make run" in line.verdict
    assert "/usr/local/bin" not in line.verdict
    assert "cargo" not in line.verdict


def test_checkout_program_on_path_from_the_venv(tmp_path: Path) -> None:
    # `make run` puts .venv/bin on PATH: fine, even with the checkout under a home.
    from gateway.check.local import check_source
    from gateway.config.sections import SourceSection

    venv_bin = tmp_path / "home" / "me" / "repo" / ".venv" / "bin"
    program = _executable(venv_bin, "gateway")
    cfg = SourceSection(command=("gateway", "simulate"))
    [line] = check_source(cfg, {"PATH": f"{venv_bin}:/usr/bin"}, scripts_dir=str(venv_bin))
    assert not line.failed
    assert line.where == str(program)


def test_every_server_and_url_on_a_line_of_its_own(
    tmp_path: Path, influx: FakeInflux, broker: Broker, test_id: str
) -> None:
    dead_broker, dead_db = free_port(), free_port()
    cfg = config(tmp_path, test_id, broker.port, influx.url)
    del cfg["mqtt"]["host"], cfg["mqtt"]["port"], cfg["influxdb"]["url"]
    cfg["mqtt"]["servers"] = [f"127.0.0.1:{broker.port}", f"127.0.0.1:{dead_broker}"]
    cfg["influxdb"]["urls"] = [f"http://127.0.0.1:{dead_db}", influx.url]
    result = run_check(write_config(tmp_path / "c.toml", cfg))
    lines = result.stdout.splitlines()
    mqtt = [line for line in lines if line.startswith("mqtt")]
    db = [line for line in lines if line.startswith("influxdb")]
    assert len(mqtt) == 2, result.stdout
    assert len(db) == 2, result.stdout
    assert f"127.0.0.1:{broker.port}" in mqtt[0]
    assert mqtt[0].endswith(" ok")
    assert f"127.0.0.1:{dead_broker}" in mqtt[1]
    assert "FAILED" in mqtt[1]
    assert "check mqtt.servers" in mqtt[1]
    assert f"127.0.0.1:{dead_db}" in db[0]
    assert "FAILED" in db[0]
    assert "check influxdb.urls" in db[0]
    assert influx.url in db[1]
    assert "FAILED" not in db[1]
    assert result.returncode == 1
