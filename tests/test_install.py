"""ops/install.sh: the layout it writes under --root, the wheel it installs, and the
installed gateway started the way the unit starts it.

Every run of install.sh here goes through stand-ins for systemctl, udevadm and the
account tools that pass a call on to the real tool only when it carries --root: a
call that would reach the running system is recorded and refused, and the tests fail
on it.
"""

from __future__ import annotations

import configparser
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.config.sections import derive_gateway_id
from tests.services import Broker, free_port, stop_process
from tests.support import Subscriber, write_config

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "ops" / "install.sh"
UNIT = REPO / "ops" / "iiot-gateway.service"
RULES = REPO / "ops" / "udev" / "60-iiot-gateway.rules"
REPO_ELF = REPO / "firmware/build/nucleo-f446re/node2.elf"
# systemd's PATH for services (systemd.exec(5)).
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# probe-rs's 69-probe-rs.rules: ST-LINK/V2, V2-1, STLINK-V3 (vendor 0483).
ST_LINK_PRODUCTS = {"3748", "374b", "3752", "374d", "374e", "374f", "3753", "3754"}
INSTALLED_ELF = "/usr/share/iiot-gateway/node2.elf"
GUARDED = ("systemctl", "udevadm", "useradd", "groupadd", "usermod", "userdel")


@dataclass
class Guard:
    """A PATH directory of stand-ins that let only --root calls through."""

    bin: Path
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def assert_running_system_untouched(self) -> None:
        live = [c for c in self.calls() if c.startswith("LIVE ")]
        assert live == [], live


def make_guard(where: Path) -> Guard:
    guard = Guard(where / "guard-bin", where / "guard.log")
    guard.bin.mkdir(parents=True, exist_ok=True)
    for name in GUARDED:
        real = shutil.which(name)
        if real is None:
            continue  # absent here: install.sh takes its own way round it
        script = guard.bin / name
        script.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >> "{guard.log}"\n'
            'case " $* " in *" --root "*|*" --root="*) exec "' + real + '" "$@";; esac\n'
            f'echo "LIVE {name} $*" >> "{guard.log}"\n'
            "exit 97\n"
        )
        script.chmod(0o755)
    return guard


def install(
    root: Path, *args: str, guard: Guard, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """ops/install.sh --root ROOT ARGS, through the guard."""
    env = {**os.environ, "PATH": f"{guard.bin}:{os.environ.get('PATH', SERVICE_PATH)}"}
    out = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    guard.assert_running_system_untouched()
    return out


@pytest.fixture
def guard(tmp_path: Path) -> Guard:
    return make_guard(tmp_path)


@pytest.fixture
def fake_elf(tmp_path: Path) -> Path:
    elf = tmp_path / "node2.elf"
    elf.write_bytes(b"\x7fELF not really firmware\n")
    return elf


def read_unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def unit_environment(path: Path) -> dict[str, str]:
    """The unit's Environment= assignments (configparser keeps only the last line)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("Environment="):
            for item in line.removeprefix("Environment=").split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def minimal_accounts(root: Path) -> None:
    """/etc/passwd, group, shadow and gshadow with root and dialout, no plugdev."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)


def group_members(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return [m for m in fields[3].split(",") if m]
    return None


# --- the layout -------------------------------------------------------------------------------


def test_layout_under_root(tmp_path: Path, guard: Guard, fake_elf: Path) -> None:
    root = tmp_path / "root"
    out = install(root, "--no-venv", "--id", "site-7", "--elf", str(fake_elf), guard=guard)

    config_path = root / "etc/iiot-gateway/config.toml"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    cfg = load_config(config_path, environ={})
    assert cfg.gateway.id == "site-7"
    assert cfg.mqtt.client_id == "iiot-gateway-site-7"
    assert cfg.gateway.buffer_dir == "/var/lib/iiot-gateway"
    # A day of outage at the seed's 10 s interval (9 messages and 9 points a
    # packet: 77,760 a day), where config.toml keeps the design's 1000 messages.
    assert cfg.mqtt.buffer_max_messages >= 77_760
    assert cfg.influxdb.buffer_max_points >= 77_760
    assert tomllib.loads((REPO / "config.toml").read_text())["mqtt"]["buffer_max_messages"] == 1000
    assert cfg.source.command == ("probe-rs", "attach", "--chip", "STM32F446RETx", INSTALLED_ELF)
    for arg in cfg.source.command:
        assert "/" not in arg or arg.startswith("/"), arg
    # Everything else is the example's.
    example = tomllib.loads((REPO / "config.toml").read_text())
    written = tomllib.loads(config_path.read_text())
    for section, key in [
        ("gateway", "id"),
        ("gateway", "buffer_dir"),
        ("source", "command"),
        ("mqtt", "client_id"),
        ("mqtt", "buffer_max_messages"),
        ("influxdb", "buffer_max_points"),
    ]:
        example.get(section, {}).pop(key, None)
        written[section].pop(key, None)
    assert written == example

    unit = root / "etc/systemd/system/iiot-gateway.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    assert read_unit(unit)["Service"]["WorkingDirectory"] == "/var/lib/iiot-gateway"
    wants = root / "etc/systemd/system/multi-user.target.wants/iiot-gateway.service"
    assert wants.is_symlink()
    assert os.readlink(wants) in (
        "/etc/systemd/system/iiot-gateway.service",
        "../iiot-gateway.service",
    )
    assert (root / "etc/udev/rules.d/60-iiot-gateway.rules").read_bytes() == RULES.read_bytes()
    assert (root / INSTALLED_ELF.lstrip("/")).read_bytes() == fake_elf.read_bytes()
    state = root / "var/lib/iiot-gateway"
    assert state.is_dir()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    # No /etc/passwd under the root: the user is reported, not created.
    assert "user     not created" in out.stdout
    assert "useradd --system" in out.stdout
    assert not (root / "opt").exists()


def test_rerun_keeps_the_config_and_says_so(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", "--id", "first", guard=guard)
    config_path = root / "etc/iiot-gateway/config.toml"
    edited = config_path.read_text().replace('host = "localhost"', 'host = "broker.site"')
    config_path.write_text(edited)
    out = install(root, "--no-venv", "--id", "second", guard=guard)
    assert config_path.read_text() == edited
    assert "config.toml exists: kept" in out.stdout
    assert load_config(config_path, environ={}).gateway.id == "first"


def test_gateway_id_is_derived_and_written_out(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    host = os.uname().nodename
    if not re.fullmatch(r"[A-Za-z0-9._-]+", host):
        pytest.skip(f"host name {host!r} is not a valid gateway id")
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    out = install(root, "--no-venv", guard=guard)
    config_path = root / "etc/iiot-gateway/config.toml"
    written = tomllib.loads(config_path.read_text())
    # What the gateway itself derives on this box, but explicit: it never changes now.
    expected = derive_gateway_id(host, root / "etc/machine-id").value
    assert written["gateway"]["id"] == expected
    assert re.fullmatch(re.escape(host[:55]) + r"-[0-9a-f]{8}", expected)
    assert f'gateway.id = "{expected}"' in out.stdout
    cfg = load_config(config_path, environ={}, machine_id_file=tmp_path / "another")
    assert (cfg.gateway.id, cfg.derived_id) == (expected, None)
    assert cfg.mqtt.client_id == f"iiot-gateway-{expected}"


def test_an_image_without_a_machine_id_gets_no_baked_in_id(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    out = install(root, "--no-venv", guard=guard)
    written = tomllib.loads((root / "etc/iiot-gateway/config.toml").read_text())
    assert "id" not in written["gateway"]
    assert "client_id" not in written.get("mqtt", {})
    assert "each box derives its own" in out.stdout
    assert "machine-id does not exist" in out.stderr


def test_firmware_from_the_build_tree_when_built(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    out = install(root, "--no-venv", "--id", "gw", guard=guard)
    installed = root / INSTALLED_ELF.lstrip("/")
    if REPO_ELF.exists():
        assert installed.read_bytes() == REPO_ELF.read_bytes()
    else:
        assert not installed.exists()
        assert "no Node 2 firmware" in out.stderr
        assert "--elf FILE" in out.stderr


def test_probe_rs_looked_up_on_the_service_path(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    out = install(root, "--no-venv", "--id", "gw", guard=guard)
    assert "probe-rs not found on the service's PATH" in out.stderr
    assert "install it to /usr/local/bin" in out.stderr
    probe_rs = root / "usr/local/bin/probe-rs"
    probe_rs.parent.mkdir(parents=True)
    probe_rs.write_text("#!/bin/sh\n")
    probe_rs.chmod(0o755)
    out = install(root, "--no-venv", "--id", "gw", guard=guard)
    assert "probe-rs /usr/local/bin/probe-rs" in out.stdout
    assert "probe-rs not found" not in out.stderr


def test_bad_options_are_refused(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    for args in (["--purge"], ["--id", "two words"], ["--wheel", str(tmp_path / "none.whl")]):
        out = install(root, "--no-venv", *args, guard=guard, check=False)
        assert out.returncode != 0, args
    out = subprocess.run(
        ["bash", str(INSTALL), "--root", "/"], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0
    assert "leave --root out" in out.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root")
def test_user_and_groups_created_with_useradd_root(tmp_path: Path, guard: Guard) -> None:
    root = tmp_path / "root"
    minimal_accounts(root)
    out = install(root, "--no-venv", "--id", "gw", guard=guard)
    assert "group    created plugdev" in out.stdout
    assert "user     created iiot-gateway" in out.stdout
    passwd = {
        line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().split()
    }
    user = passwd["iiot-gateway"]
    assert user[5:] == ["/var/lib/iiot-gateway", "/usr/sbin/nologin"]
    assert int(user[2]) < 1000  # a system user
    assert group_members(root, "dialout") == ["iiot-gateway"]
    assert group_members(root, "plugdev") == ["iiot-gateway"]
    # Owned by the numbers in the root's files, not by this system's names.
    config = (root / "etc/iiot-gateway/config.toml").stat()
    assert (config.st_uid, config.st_gid) == (0, int(user[3]))
    state = (root / "var/lib/iiot-gateway").stat()
    assert (state.st_uid, state.st_gid) == (int(user[2]), int(user[3]))
    calls = guard.calls()
    assert any(c.startswith("useradd --root") for c in calls), calls

    # Again: nothing duplicated, and a lost group membership comes back.
    group_file = root / "etc/group"
    group_file.write_text(
        group_file.read_text().replace("dialout:x:20:iiot-gateway", "dialout:x:20:")
    )
    out = install(root, "--no-venv", "--id", "gw", guard=guard)
    assert "added to dialout" in out.stdout
    users = [line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()]
    assert users.count("iiot-gateway") == 1
    assert group_members(root, "dialout") == ["iiot-gateway"]
    out = install(root, "--no-venv", "--id", "gw", guard=guard)
    assert "iiot-gateway exists (groups dialout, plugdev)" in out.stdout


def test_uninstall_keeps_the_buffers_unless_purge(
    tmp_path: Path, guard: Guard, fake_elf: Path
) -> None:
    root = tmp_path / "root"
    accounts = os.geteuid() == 0 and shutil.which("useradd") is not None
    if accounts:
        minimal_accounts(root)
    install(root, "--no-venv", "--id", "gw", "--elf", str(fake_elf), guard=guard)
    (root / "opt/iiot-gateway/venv/bin").mkdir(parents=True)  # as if a venv were there
    buffer_db = root / "var/lib/iiot-gateway/buffer.db"
    buffer_db.write_bytes(b"records")
    config = root / "etc/iiot-gateway/config.toml"

    out = install(root, "--uninstall", guard=guard)
    for gone in (
        "etc/systemd/system/iiot-gateway.service",
        "etc/systemd/system/multi-user.target.wants/iiot-gateway.service",
        "etc/udev/rules.d/60-iiot-gateway.rules",
        "opt/iiot-gateway",
        "usr/share/iiot-gateway",
    ):
        assert not os.path.lexists(root / gone), gone
    assert buffer_db.read_bytes() == b"records"
    assert config.exists()
    assert "--purge removes them" in out.stdout
    if accounts:
        assert "iiot-gateway:" in (root / "etc/passwd").read_text()

    install(root, "--uninstall", "--purge", guard=guard)
    assert not (root / "var/lib/iiot-gateway").exists()
    assert not (root / "etc/iiot-gateway").exists()
    if accounts:
        assert "iiot-gateway:" not in (root / "etc/passwd").read_text()
        assert group_members(root, "plugdev") == []  # the shared group stays


# --- the udev rules and the script itself -----------------------------------------------------


def test_udev_rules_give_plugdev_the_st_link_and_dialout_its_serial_port() -> None:
    rules = [
        line
        for line in RULES.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    probes = set()
    serial = []
    for line in rules:
        if 'GROUP="plugdev"' in line:
            assert 'SUBSYSTEM=="usb"' in line, line
            assert 'ATTR{idVendor}=="0483"' in line, line
            product = re.search(r'ATTR\{idProduct\}=="([0-9a-f]{4})"', line)
            assert product, line
            probes.add(product.group(1))
        if 'GROUP="dialout"' in line:
            serial.append(line)
    assert probes == ST_LINK_PRODUCTS
    assert len(serial) == 1
    assert 'SUBSYSTEM=="tty"' in serial[0]
    assert 'KERNEL=="ttyACM[0-9]*"' in serial[0]
    assert 'ATTRS{idVendor}=="0483"' in serial[0]
    labels = re.findall(r'LABEL="([^"]+)"', RULES.read_text())
    gotos = re.findall(r'GOTO="([^"]+)"', RULES.read_text())
    assert set(gotos) <= set(labels)


def test_udev_rules_pass_udevadm_verify() -> None:
    udevadm = shutil.which("udevadm")
    if udevadm is None:
        pytest.skip("no udevadm here (systemd-udev not installed)")
    if subprocess.run([udevadm, "verify", "--help"], capture_output=True).returncode != 0:
        pytest.skip("this udevadm has no verify (systemd < 254)")
    out = subprocess.run([udevadm, "verify", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    out = subprocess.run(
        [shellcheck, str(INSTALL), str(REPO / "ops/services.sh")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout


# --- the wheel, the venv, and the installed gateway run like the unit -------------------------


def python_for_the_venv() -> str:
    """A Python 3.11+ with venv that a service user can execute: the system's when it has one."""
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if system:
        ok = subprocess.run(
            [
                system,
                "-c",
                "import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))",
            ],
            capture_output=True,
        )
        if ok.returncode == 0:
            return system
    return sys.executable


def service_account(probe: str) -> tuple[str, int, int]:
    """Who runs the gateway: the unit's user when it exists here, else nobody; as root only.

    Not root, or the venv's Python out of the account's reach: this process's own user.
    """
    me = pwd.getpwuid(os.getuid())
    if os.geteuid() != 0:
        return me.pw_name, me.pw_uid, me.pw_gid
    for name in ("iiot-gateway", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        reachable = subprocess.run(
            [probe, "-c", "pass"],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
        )
        if reachable.returncode == 0:
            return name, user.pw_uid, user.pw_gid
    return me.pw_name, me.pw_uid, me.pw_gid


@dataclass
class Installed:
    base: Path  # readable by the service account (not under pytest's 0700 tmp)
    root: Path
    venv: Path
    site_packages: Path
    first: subprocess.CompletedProcess[str]
    upgrade: subprocess.CompletedProcess[str]
    guard: Guard


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """install.sh --root: a wheel it builds itself, then a wheel built here (an upgrade)."""
    base = Path(tempfile.mkdtemp(prefix="iiot-install-", dir="/tmp"))
    try:
        base.chmod(0o755)
        guard = make_guard(base)
        root = base / "root"
        elf = base / "node2.elf"
        elf.write_bytes(b"\x7fELF not really firmware\n")
        python = python_for_the_venv()
        common = ["--python", python, "--id", "e2e-gw", "--elf", str(elf)]
        first = install(root, *common, guard=guard)

        # `pip wheel --no-deps . -w dist`, from a copy, so the tree gets no build/ of ours.
        src = base / "src"
        shutil.copytree(
            REPO,
            src,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                ".run",
                "build",
                "dist",
                "*.egg-info",
                "__pycache__",
                ".*_cache",
                ".hypothesis",
                "firmware",
                "bench",
                "tests",
            ),
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", ".", "-w", "dist"],
            cwd=src,
            check=True,
            capture_output=True,
            timeout=600,
        )
        (wheel,) = (src / "dist").glob("iiot_gateway-*.whl")
        upgrade = install(root, *common, "--wheel", str(wheel), guard=guard)

        venv = root / "opt/iiot-gateway/venv"
        (site_packages,) = venv.glob("lib/python3*/site-packages")
        yield Installed(base, root, venv, site_packages, first, upgrade, guard)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_install_builds_and_upgrades_the_venv(installed: Installed) -> None:
    assert "venv     created /opt/iiot-gateway/venv" in installed.first.stdout
    assert "building a wheel" in installed.first.stdout
    assert "venv     /opt/iiot-gateway/venv exists: upgrading" in installed.upgrade.stdout
    assert "config.toml exists: kept" in installed.upgrade.stdout


def test_wheel_installs_every_module_not_editable(installed: Installed) -> None:
    shipped = [
        p.relative_to(REPO)
        for p in (REPO / "gateway").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    ]
    assert Path("gateway/cli/__init__.py") in shipped
    missing = [str(p) for p in shipped if not (installed.site_packages / p).is_file()]
    assert missing == [], missing
    # Not an editable install: no path hook back into the repository.
    assert not list(installed.site_packages.glob("__editable__*"))
    for pth in installed.site_packages.glob("*.pth"):
        assert str(REPO) not in pth.read_text(), pth
    clean_env = {"PATH": SERVICE_PATH}
    where = subprocess.run(
        [str(installed.venv / "bin/python"), "-c", "import gateway; print(gateway.__file__)"],
        cwd="/",
        env=clean_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.site_packages)
    helped = subprocess.run(
        [str(installed.venv / "bin/gateway"), "--help"],
        cwd="/",
        env=clean_env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "simulate" in helped.stdout


def test_systemd_analyze_verify_accepts_the_installed_unit(installed: Installed) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    system_units = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if system_units is None:
        pytest.skip("no systemd unit directory here to verify against")
    # verify --root loads sysinit.target and friends from the root: give it this system's.
    units = installed.root / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(system_units, units, symlinks=True)
    out = subprocess.run(
        [analyze, "verify", f"--root={installed.root}", "/etc/systemd/system/iiot-gateway.service"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "unrecognized option" in out.stderr:
        pytest.skip("this systemd-analyze has no verify --root")
    # It also checks ExecStart= exists under the root; unknown keys are warnings on stderr.
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


@pytest.mark.e2e
def test_installed_gateway_runs_like_the_unit(installed: Installed) -> None:
    root, base = installed.root, installed.base
    unit_path = root / "etc/systemd/system/iiot-gateway.service"
    service = read_unit(unit_path)["Service"]

    def under_root(arg: str) -> str:
        return str(root / arg.lstrip("/")) if arg.startswith("/") else arg

    argv = [under_root(a) for a in service["ExecStart"].split()]
    cwd = Path(under_root(service["WorkingDirectory"]))
    name, uid, gid = service_account(str(installed.venv / "bin/python"))

    # The installed config with the test's servers; the source command stays as installed.
    config_path = root / "etc/iiot-gateway/config.toml"
    config = tomllib.loads(config_path.read_text())
    broker = Broker(base).start()
    config["mqtt"].update(host="127.0.0.1", port=broker.port, backoff_max=1.0)
    config["influxdb"].update(url=f"http://127.0.0.1:{free_port()}")  # down: points wait
    config["status"].update(listen="")
    write_config(config_path, config)
    config_path.chmod(0o644)

    # A stand-in probe-rs, found by name on the service's PATH like the real one.
    standin = base / "standin"
    standin.mkdir()
    seen = base / "standin-out"
    seen.mkdir()
    os.chown(seen, uid, gid)
    (standin / "probe-rs").write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" > "{seen}/argv"\n'
        f'exec "{installed.venv}/bin/gateway" simulate --interval 0.2\n'
    )
    (standin / "probe-rs").chmod(0o755)
    os.chown(cwd, uid, gid)

    env = {
        **unit_environment(unit_path),
        "PATH": f"{standin}:{SERVICE_PATH}",
        "HOME": str(cwd),
        "USER": name,
        "LOGNAME": name,
    }
    sub = Subscriber(broker.port, "iiot/#")
    log_path = base / "gateway.log"
    proc = None
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                user=uid,
                group=gid,
                extra_groups=[],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        telemetry = sub.wait_for(
            lambda msgs: any(t != "iiot/gateway/status" for t, _ in msgs), timeout=60
        )
        assert telemetry, f"no reading at the broker as {name}:\n{log_path.read_text()}"
        assert (seen / "argv").read_text().split() == [
            "attach",
            "--chip",
            "STM32F446RETx",
            INSTALLED_ELF,
        ]
        assert ("iiot/gateway/status", "online") in sub.snapshot()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
        buffer_db = cwd / "cache.db"  # the buffer store (gateway.buffer.STORE_FILE)
        assert buffer_db.exists(), sorted(os.listdir(cwd))
        assert buffer_db.stat().st_uid == uid
    finally:
        stop_process(proc)
        sub.close()
        broker.stop()
    installed.guard.assert_running_system_untouched()
