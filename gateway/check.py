"""``gateway check``: would the service work with this configuration?

``gateway run`` meets its problems one by one, as retries in the journal: a
program not on the service's PATH, a firmware file that is not there, a serial
port the user may not open, a buffer directory it cannot write, a broker that
takes the connection but drops every message its ACL denies, a token that may
not write to the bucket. This command looks for all of them at once and prints
one line per check, each failure with its fix:

    source    /usr/local/bin/probe-rs        ok
    buffer    /var/lib/iiot-gateway          ok
    mqtt      broker.example:1883            FAILED: publish not permitted under iiot/ (…)
    influxdb  http://localhost:8086          ok

Exit status: 0 when nothing failed, 1 otherwise (2, a config that does not
load, is the command line's). It leaves nothing behind: no directory is
created, the MQTT probe is not retained and goes to a topic of its own, and
the InfluxDB write is empty, which stores nothing.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import secrets
import shutil
import ssl
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import trio
import trio_asyncio
import urllib3
from aiomqtt.exceptions import MqttConnectError
from influxdb_client.rest import ApiException
from influxdb_client.service.buckets_service import BucketsService
from influxdb_client.service.write_service import WriteService

from gateway.buffer import STORE_FILE
from gateway.config import (
    DEFAULT_BUFFER_DIR,
    INFLUX_TOKEN_ENV,
    Config,
    InfluxSection,
    MqttSection,
    SourceSection,
)
from gateway.errors import leaf, scrub
from gateway.sinks.influx import InfluxWriter
from gateway.sinks.mqtt import describe_error, tls_context

CHECK_TIMEOUT = 10.0
# Seconds to wait for the MQTT probe to come back through the subscription.
ECHO_TIMEOUT = 5.0
# The unit's WorkingDirectory=: where a relative path in the config resolves.
SERVICE_DIR = DEFAULT_BUFFER_DIR
# What `gateway run` creates in the buffer directory besides the store
# (gateway.daemon's name; check sits beside the daemon and cannot import it).
DEAD_LETTER_DIR = "dead-letter"
_TOKEN_KEYS = f"influxdb.token_file / ${INFLUX_TOKEN_ENV}"


@dataclass(frozen=True)
class Line:
    """One line of the report: what was checked, where, and the verdict."""

    what: str
    where: str
    verdict: str = "ok"
    failed: bool = False

    def __str__(self) -> str:
        return f"{self.what:10}{self.where:30} {self.verdict}"


def _failed(what: str, where: str, problem: str) -> Line:
    return Line(what, where, f"FAILED: {problem}", failed=True)


def _user() -> str:
    # The real uid: the identity os.access() answers for.
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner(st: os.stat_result) -> str:
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return str(st.st_uid)


# -- the source -------------------------------------------------------------------


def check_source(cfg: SourceSection, environ: Mapping[str, str] | None = None) -> list[Line]:
    """The source's lines: its program on PATH and its paths, or its serial device.

    ``environ`` supplies PATH (default: this process's environment), which is
    the one searched; ``sudo -u iiot-gateway gateway check`` searches about
    the one the service has.
    """
    environ = os.environ if environ is None else environ
    if cfg.kind == "command":
        return _check_command(cfg.command, environ.get("PATH", os.defpath))
    if cfg.kind == "serial":
        return [_check_serial(cfg.port)]
    if cfg.kind == "file":
        # load_config has opened it already; only where it resolves is left.
        problem = _relative(cfg.path, "source.path")
        return [_failed("source", cfg.path, problem) if problem else Line("source", cfg.path)]
    return [Line("source", cfg.kind)]


def _relative(path: str, key: str) -> str | None:
    if os.path.isabs(path):
        return None
    here = f" (from here: {Path(path).resolve()})" if os.path.exists(path) else ""
    return (
        f"{key} is a relative path and the service runs in {SERVICE_DIR}: "
        f"give the absolute path{here}"
    )


def _path_arguments(argv: Sequence[str]) -> list[tuple[int, str]]:
    """(index, path) of every argument after the program that names a file.

    A file is an argument with a '/' in it or ending in ``.elf``, also as the
    value of ``--option=value``. Text with blanks (a shell script for
    ``sh -c``) and URLs are not paths.
    """
    found = []
    for index, arg in enumerate(argv[1:], start=1):
        value = arg.partition("=")[2] if arg.startswith("-") else arg
        if not value or "://" in value or any(c.isspace() for c in value):
            continue
        if "/" in value or value.endswith(".elf"):
            found.append((index, value))
    return found


def _check_command(argv: Sequence[str], search_path: str) -> list[Line]:
    lines = [_check_program(argv[0], search_path)]
    for index, path in _path_arguments(argv):
        key = f"source.command[{index}]"
        problem = _relative(path, key)
        if problem:
            lines.append(_failed("source", path, problem))
        elif path.endswith(".elf"):
            # Other absolute paths may be meant to be created: only said when relative.
            problem = _check_firmware(path, key)
            lines.append(_failed("source", path, problem) if problem else Line("source", path))
    return lines


def _check_program(program: str, search_path: str) -> Line:
    key = "source.command[0]"
    if "/" not in program:
        found = shutil.which(program, path=search_path)
        if found is None:
            return _failed(
                "source",
                program,
                f"{program} not found on PATH ({search_path}): install it to /usr/local/bin;"
                " the service cannot see ~/.cargo/bin or anything else under /home",
            )
        if _in_home(found):
            # The operator's PATH has it (~/.cargo/bin), the service's cannot.
            return _failed(
                "source",
                found,
                f"{program} is found in a home directory, which the service cannot see"
                f" (ProtectHome=yes): install it to /usr/local/bin (sudo install -m 755"
                f" {found} /usr/local/bin/)",
            )
        return Line("source", found)
    problem = _relative(program, key)
    if problem:
        return _failed("source", program, problem)
    if not os.path.exists(program):
        return _failed("source", program, f"{program} does not exist: install it or fix {key}")
    if not (os.path.isfile(program) and os.access(program, os.X_OK)):
        return _failed(
            "source", program, f"user {_user()} cannot execute {program}: chmod 755 it or fix {key}"
        )
    return Line("source", program)


def _in_home(path: str) -> bool:
    """Under a directory that ProtectHome=yes hides from the service."""
    homes = {"/home", "/root", "/run/user", os.path.expanduser("~")} - {"/", SERVICE_DIR}
    return any(path.startswith(home.rstrip("/") + "/") for home in homes)


def _check_firmware(path: str, key: str) -> str | None:
    if not os.path.exists(path):
        return (
            f"firmware file {path} does not exist: build it (make -C firmware) and install it"
            f" (ops/install.sh puts it in /usr/share/iiot-gateway), or fix {key}"
        )
    if not os.access(path, os.R_OK):
        return f"user {_user()} cannot read {path}: chmod 644 it or fix {key}"
    return None


def _check_serial(port: str) -> Line:
    try:
        st = os.stat(port)
    except FileNotFoundError:
        return _failed(
            "source",
            port,
            f"{port} does not exist: plug the board in, or fix source.port"
            " (ls /dev/serial/by-id/ lists the serial devices there are)",
        )
    except OSError as exc:
        return _failed("source", port, f"cannot look at {port}: {exc.strerror}: fix source.port")
    if not stat.S_ISCHR(st.st_mode):
        return _failed(
            "source",
            port,
            f"{port} is not a serial device: fix source.port (ls /dev/serial/by-id/)",
        )
    if os.access(port, os.R_OK | os.W_OK):
        return Line("source", port)
    user, group = _user(), _group(st.st_gid)
    if st.st_gid in {os.getgid(), *os.getgroups()}:
        # In the group already: the device's mode is what keeps the user out.
        return _failed(
            "source",
            port,
            f"user {user} may not read and write {port} (mode {stat.S_IMODE(st.st_mode):04o},"
            f" group {group}): give group {group} read and write (a udev rule with"
            ' MODE="0660", as ops/install.sh installs)',
        )
    return _failed(
        "source",
        port,
        f"user {user} may not read and write {port}: add the user to group {group}"
        f" (sudo usermod -aG {group} {user}; it counts from the next login or service start)",
    )


# -- the buffer directory ---------------------------------------------------------


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s stat, None if it does not exist (or a parent is no directory)."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def check_buffer(directory: str) -> Line:
    """Can this user create and write the buffer store in ``directory``?

    Nothing is created: a directory that does not exist yet is judged by its
    nearest existing parent, in which ``gateway run`` would create it.
    """
    path, user = Path(directory), _user()
    fix = "set gateway.buffer_dir (or --buffer-dir of gateway run) to one it can write"
    try:
        st = _stat(path)
        if st is None:
            parent = path.parent
            while (parent_st := _stat(parent)) is None and parent != parent.parent:
                parent = parent.parent
            if parent_st is not None and not stat.S_ISDIR(parent_st.st_mode):
                return _failed(
                    "buffer", directory, f"cannot be created: {parent} is not a directory: {fix}"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                return _failed(
                    "buffer",
                    directory,
                    f"does not exist and user {user} cannot create it in {parent}: create it"
                    f" (sudo install -d -o {user} -m 700 {path}), or {fix}",
                )
            return Line("buffer", directory, "ok (will be created)")
        if not stat.S_ISDIR(st.st_mode):
            return _failed("buffer", directory, f"{directory} is not a directory: {fix}")
        if not os.access(path, os.W_OK | os.X_OK):
            return _failed(
                "buffer",
                directory,
                f"not writable by user {user} (owner {_owner(st)}, mode"
                f" {stat.S_IMODE(st.st_mode):04o}): sudo chown {user} {path}, or {fix}",
            )
        # A store that another user (root, running `gateway buffer` by hand)
        # made or touched cannot be opened for writing by this one.
        for name in (STORE_FILE, f"{STORE_FILE}-wal", f"{STORE_FILE}-shm", DEAD_LETTER_DIR):
            entry = path / name
            entry_st = _stat(entry)
            if entry_st is not None and not os.access(entry, os.W_OK):
                return _failed(
                    "buffer",
                    directory,
                    f"{entry} is not writable by user {user} (owner {_owner(entry_st)}):"
                    f" sudo chown -R {user} {path}",
                )
    except OSError as exc:
        return _failed("buffer", directory, f"cannot look at it: {exc}: {fix}")
    return Line("buffer", directory)


# -- MQTT -------------------------------------------------------------------------


def _connect_hint(exc: BaseException) -> str:
    """describe_error's account, with the config keys to look at."""
    text = describe_error(exc)
    if "(check " in text:  # describe_error named the credentials already
        return text
    lowered = text.lower()
    if isinstance(exc, trio.TooSlowError) or "timed out" in lowered:
        return (
            f"no answer from the broker within {CHECK_TIMEOUT:.0f} s (check mqtt.host and"
            " mqtt.port, and whether that port wants TLS: mqtt.ca_file)"
        )
    if isinstance(exc, MqttConnectError):
        if "identifier" in text.lower():
            return f"{text} (check mqtt.client_id)"
        return f"{text} (see the broker's log)"
    if "certificate" in lowered:
        return (
            f"{text} (check mqtt.ca_file: the CA that signed the broker's certificate;"
            " mqtt.host must be a name in the certificate)"
        )
    if isinstance(exc, ssl.SSLError) or "ssl" in lowered or "tls" in lowered:
        return (
            f"{text} (check mqtt.ca_file, mqtt.cert_file, mqtt.key_file, and that mqtt.port"
            " is the broker's TLS listener)"
        )
    return f"{text} (is the broker running? check mqtt.host and mqtt.port)"


def _refused(granted: Sequence[Any]) -> bool:
    """A SUBACK that refuses: 0x80 (MQTT 3.1.1) or any reason code >= 0x80 (MQTT 5)."""
    for code in granted:
        value = getattr(code, "value", code)
        if isinstance(value, int) and value >= 0x80:
            return True
    return not granted


async def check_mqtt(m: MqttSection) -> Line:
    """Connect, then prove that a publish under the prefix reaches the broker.

    Mosquitto (MQTT 3.1.1) acknowledges a publish its ACL denies and drops it,
    so a PUBACK proves nothing: the probe goes to a topic of its own under the
    prefix, not retained, and counts only when it comes back through a
    subscription of the same client.
    """
    where = f"{m.host}:{m.port}"
    who = f"user {m.username}" if m.username else "anonymous clients"
    topic = f"{m.topic_prefix}/gateway/check-{secrets.token_hex(4)}"
    payload = secrets.token_hex(8).encode()
    not_permitted = (
        f"publish not permitted under {m.topic_prefix}/ (check the broker's ACL for {who}:"
        f" the gateway needs write on {m.topic_prefix}/#, and this check read on"
        f" {m.topic_prefix}/gateway/# to see its probe)"
    )
    stage = "connect"

    async def probe() -> str | None:
        nonlocal stage
        async with aiomqtt.Client(
            m.host,
            m.port,
            username=m.username or None,
            password=m.password or None,
            # Not the daemon's id: the broker would disconnect a running gateway.
            identifier=f"{m.client_id}-check",
            timeout=CHECK_TIMEOUT,
            tls_context=tls_context(m),
        ) as client:
            stage = "subscribe"
            granted = await client.subscribe(topic, qos=1, timeout=CHECK_TIMEOUT)
            if _refused(granted):
                return (
                    "cannot verify publish permission: subscribe refused by ACL (let"
                    f" {who} read {m.topic_prefix}/gateway/# so that this check can see its"
                    " probe)"
                )
            stage = "publish"
            await client.publish(topic, payload, qos=1, retain=False, timeout=CHECK_TIMEOUT)
            try:
                async with asyncio.timeout(ECHO_TIMEOUT):
                    async for message in client.messages:
                        if message.topic.matches(topic) and message.payload == payload:
                            return None
            except TimeoutError:
                return not_permitted
            raise aiomqtt.MqttError("connection closed by the broker")

    failure: BaseException | None = None
    problem: str | None = None
    try:
        async with trio_asyncio.open_loop():
            with trio.fail_after(2 * CHECK_TIMEOUT + ECHO_TIMEOUT + 2):
                problem = await trio_asyncio.aio_as_trio(probe)()
    except* (aiomqtt.MqttError, OSError, trio.TooSlowError) as group:
        failure = leaf(group)
    if failure is not None:
        if stage == "connect":
            problem = _connect_hint(failure)
        elif stage == "subscribe":
            # Some brokers close the connection on a subscription they refuse.
            problem = (
                f"cannot verify publish permission: subscribe failed: {failure} (check the"
                f" broker's ACL: let {who} read {m.topic_prefix}/gateway/#)"
            )
        else:
            # Some brokers close the connection on a publish they refuse.
            problem = f"{not_permitted}; the probe failed: {failure}"
    if problem is None:
        return Line("mqtt", where)
    return _failed("mqtt", where, problem)


# -- InfluxDB ---------------------------------------------------------------------


def _influx_error(exc: ApiException) -> tuple[str, str] | None:
    """(code, message) of an InfluxDB 2 error answer; None if it is not one."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        doc = json.loads(body or "")
    except (TypeError, ValueError):
        return None
    if isinstance(doc, dict) and "code" in doc and "message" in doc:
        return str(doc["code"]), str(doc["message"])[:200]
    return None


def _network_error(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and reason is not None:
        exc = reason
    # urllib3 puts the connection (its repr, or its host and port: in the
    # URL on the same line already) before the reason.
    return re.sub(r"^(<[^>]*>|\w+\(host=[^)]*\)): ", "", str(exc) or type(exc).__name__)


def _write_refused(cfg: InfluxSection, status: int, message: str, org_found: bool) -> str:
    said = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 401:
        if not cfg.token:
            return f"the server wants a token ({said}): set {_TOKEN_KEYS}"
        return f"token refused ({said}): check {_TOKEN_KEYS}"
    if status == 403:
        return (
            f"the token may not write to bucket {cfg.bucket!r} ({said}): give it write"
            f" access to that bucket, or check {_TOKEN_KEYS}"
        )
    if status == 404:
        # InfluxDB 2 says 'organization name "x" not found' or 'bucket "x" not
        # found'; the bucket listing already proved the org when it answered.
        lowered = message.lower()
        if "organization" in lowered:
            return f"org {cfg.org!r} not found ({said}): check influxdb.org"
        if "bucket" in lowered or org_found:
            return (
                f"bucket {cfg.bucket!r} not found in org {cfg.org!r} ({said}):"
                " check influxdb.bucket"
            )
        return f"{said}: check influxdb.org and influxdb.bucket"
    return f"{said}: check influxdb.url and the server's log"


def _probe_influx(writer: InfluxWriter, cfg: InfluxSection) -> tuple[bool, str]:
    """(failed, verdict) for the database, by at most two requests (blocking).

    InfluxDB 2 checks the token, the org, the bucket and the token's write
    permission on it, in that order, before it reads the body of a write;
    an empty body then fails as 400 "writing requires points", and nothing is
    stored. So a 400 of InfluxDB's kind "invalid" (or a 204) proves that the
    gateway may write; 401, 403 and 404 say which key is wrong. A server
    without InfluxDB 2's API (VictoriaMetrics takes writes at /api/v2/write
    and answers an empty one 204 whatever the token) is told apart by
    /api/v2/buckets, which only InfluxDB 2 answers with its own JSON.
    """
    api = writer.client.api_client
    # influxdb-client's generated services carry no annotations.
    buckets: Any = BucketsService(api)  # type: ignore[no-untyped-call]
    writes: Any = WriteService(api)  # type: ignore[no-untyped-call]
    # influxdb-client takes request timeouts in milliseconds.
    timeout = min(cfg.timeout, CHECK_TIMEOUT) * 1000
    org_found = False
    try:
        response = buckets.get_buckets(
            org=cfg.org, name=cfg.bucket, _preload_content=False, _request_timeout=timeout
        )
        try:
            org_found = isinstance(json.loads(response.data).get("buckets"), list)
        except (ValueError, AttributeError):
            org_found = False
        influx2 = org_found
    except ApiException as exc:
        influx2 = _influx_error(exc) is not None
    if not influx2:
        if writer.client.ping():
            return False, "reachable; write permission not verified (no InfluxDB 2 API)"
        return True, (
            "answers, but neither as InfluxDB 2 (/api/v2/buckets) nor to /ping: check influxdb.url"
        )
    try:
        writes.post_write(
            org=cfg.org, bucket=cfg.bucket, body="", precision="ns", _request_timeout=timeout
        )
    except ApiException as exc:
        code, message = _influx_error(exc) or ("", "")
        if exc.status == 400 and code == "invalid":
            return False, "ok"
        return True, _write_refused(cfg, int(exc.status or 0), message, org_found)
    return False, "ok"


async def check_influx(cfg: InfluxSection) -> Line:
    """May the token write to the bucket in the org? Bounded in time; stores nothing."""
    writer = InfluxWriter(cfg)
    # influxdb.timeout bounds each socket operation, not a request: the whole
    # check gets a deadline, and abort() frees the thread that missed it.
    limit = 2 * min(cfg.timeout, CHECK_TIMEOUT) + 2

    def run() -> tuple[bool, str]:
        try:
            return _probe_influx(writer, cfg)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            text = _network_error(exc)
            if "certificate" in text.lower():
                hint = "check influxdb.url; its CA must be in this host's trust store"
            else:
                hint = "is InfluxDB running? check influxdb.url"
            return True, f"cannot reach it: {text} ({hint})"
        finally:
            writer.close()

    result: tuple[bool, str] | None = None
    with trio.move_on_after(limit):
        result = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    if result is None:
        writer.abort()
        result = True, f"no answer within {limit:.0f} s: check influxdb.url"
    failed, verdict = result
    return _failed("influxdb", cfg.url, verdict) if failed else Line("influxdb", cfg.url, verdict)


# -- all of it --------------------------------------------------------------------


async def check(cfg: Config) -> int:
    """Print one line per check (every failure with its fix); 0 if none failed, else 1."""
    hidden = (cfg.mqtt.password, cfg.influxdb.token)
    failures = 0

    def report(line: Line) -> None:
        nonlocal failures
        failures += line.failed
        # No server's answer may carry a secret onto the terminal.
        print(scrub(str(line), hidden), flush=True)

    for line in check_source(cfg.source):
        report(line)
    report(check_buffer(cfg.gateway.buffer_dir))
    report(await check_mqtt(cfg.mqtt))
    report(await check_influx(cfg.influxdb))
    sys.stdout.flush()
    return 1 if failures else 0
