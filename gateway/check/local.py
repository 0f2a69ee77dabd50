"""Checks on this machine: the source program, its files and device, the buffer directory."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from serial.tools import list_ports

from gateway.buffer import STORE_FILE, holder
from gateway.check.common import (
    SERVICE_DIR,
    Line,
    _failed,
    _group,
    _owner,
    _user,
)
from gateway.config import Config
from gateway.config.sections import SourceSection
from gateway.coverage import (
    BOUND_KEYS,
    SEED_INTERVAL_S,
    SEED_PER_HOUR,
    bound_for,
    coverage_hours,
)
from gateway.deadletter import DEAD_LETTER_DIR

# -- the source -------------------------------------------------------------------


def check_source(
    cfg: SourceSection,
    environ: Mapping[str, str] | None = None,
    scripts_dir: str | None = None,
) -> list[Line]:
    """The source's lines: its program on PATH and its paths, or its serial device.

    ``environ`` supplies PATH (default: this process's environment), which is
    the one searched; ``sudo -u iiot-gateway gateway check`` searches about
    the one the service has. ``scripts_dir`` is the directory of this
    gateway's own scripts when it runs from a virtual environment (a
    checkout's ``.venv/bin``; default: found from the interpreter), so that
    a program found only there gets a checkout's advice, not a service's.
    """
    environ = os.environ if environ is None else environ
    if scripts_dir is None:
        scripts_dir = _venv_scripts_dir()
    if cfg.kind == "command":
        return _check_command(cfg.command, environ.get("PATH", os.defpath), scripts_dir)
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


def _venv_scripts_dir() -> str | None:
    """The bin directory of the virtual environment this gateway runs from, if any."""
    if sys.prefix == sys.base_prefix:
        return None
    return os.path.dirname(sys.executable)


def _check_command(argv: Sequence[str], search_path: str, scripts_dir: str | None) -> list[Line]:
    lines = [_check_program(argv[0], search_path, scripts_dir)]
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


def _check_program(program: str, search_path: str, scripts_dir: str | None = None) -> Line:
    key = "source.command[0]"
    if "/" not in program:
        found = shutil.which(program, path=search_path)
        in_venv = shutil.which(program, path=scripts_dir) if scripts_dir else None
        if found is None and in_venv is not None:
            # A checkout run as .venv/bin/gateway: the program is beside it, but
            # the source's command is looked up on PATH, which lacks that directory.
            return _failed(
                "source",
                program,
                f"{program} not found on PATH ({search_path}): the source command resolves"
                f" through PATH, and {program} is in {scripts_dir}, which is not on it:"
                f" use `make run` (it puts {scripts_dir} on PATH), or run with"
                f' PATH="{scripts_dir}:$PATH"',
            )
        if found is None:
            return _failed(
                "source",
                program,
                f"{program} not found on PATH ({search_path}): install it to /usr/local/bin;"
                " the service cannot see ~/.cargo/bin or anything else under /home",
            )
        if in_venv is not None and os.path.samefile(found, in_venv):
            # This gateway's own environment (a checkout): not the service's concern.
            return Line("source", found)
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


def _serial_devices() -> str:
    """The USB and other real serial devices there are, for a hint (pyserial's list)."""
    # Legacy 8250 ports (ttyS*) without hardware behind them show as "n/a".
    found = [p for p in list_ports.comports() if p.hwid != "n/a"]
    if not found:
        return "no serial device is plugged in"
    return "serial devices here: " + ", ".join(f"{p.device} ({p.description})" for p in found)


def _check_serial(port: str) -> Line:
    try:
        st = os.stat(port)
    except FileNotFoundError:
        return _failed(
            "source",
            port,
            f"{port} does not exist: plug the board in, or fix source.port"
            f" ({_serial_devices()}; /dev/serial/by-id/ has names that survive a replug)",
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
    """Can this user create and write the buffer store in ``directory``? Is a gateway on it?

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
        # Information, not a failure: the service normally runs while one checks.
        in_use = holder(path)
    except OSError as exc:
        return _failed("buffer", directory, f"cannot look at it: {exc}: {fix}")
    if in_use is not None:
        who = f"pid {in_use.pid}" if in_use.pid is not None else "pid unknown"
        return Line("buffer", directory, f"ok (in use by a running gateway, {who})")
    return Line("buffer", directory)


def check_coverage(cfg: Config, per_hour: float = SEED_PER_HOUR) -> list[Line]:
    """Each buffer's outage coverage at a stated input rate, against ``min_coverage_hours``.

    The real rate is the firmware's, which no config says: the check takes
    the seed's (a packet every 10 s, 9 readings each), so a site sending
    faster needs proportionally more. A shortfall is a warning, not a
    failure: the gateway runs, it only drops sooner.
    """
    need = cfg.gateway.min_coverage_hours
    rate = f"{per_hour:,.0f} records/h (a packet every {SEED_INTERVAL_S:g} s)"
    lines = []
    for name, bound in (
        ("mqtt", cfg.mqtt.buffer_max_messages),
        ("influx", cfg.influxdb.buffer_max_points),
    ):
        hours = coverage_hours(bound, 0, per_hour)
        assert hours is not None  # a stated rate is positive
        key = BOUND_KEYS[name]
        where = f"{key} = {bound}"
        verdict = f"ok: {hours:.1f} h of outage at {rate}"
        if need > 0 and hours < need:
            verdict = (
                f"WARNING: {hours:.1f} h of outage at {rate}, under gateway.min_coverage_hours"
                f" = {need:g}: raise {key} to at least {bound_for(need, per_hour)}"
            )
        lines.append(Line("coverage", where, verdict))
    return lines
