#!/usr/bin/env bash
# Install iiot-gateway as a systemd service, from this repository. Run as root;
# running it again upgrades the program and keeps the config and the buffers.
#
#   ops/install.sh [--wheel FILE] [--elf FILE] [--id NAME] [--python PY] [--no-venv] [--root DIR]
#   ops/install.sh --uninstall [--purge] [--root DIR]
#
# What it installs (docs/operations.md has the whole story):
#   user iiot-gateway           system user, groups dialout and plugdev (plugdev created if missing)
#   /opt/iiot-gateway/venv      a venv with the package installed from a wheel (not editable)
#   /etc/iiot-gateway/config.toml   from config.toml with absolute paths and gateway.id written
#                               out (host name + machine-id hash); an existing one is kept
#   /usr/share/iiot-gateway/node2.elf   the Node 2 firmware, when built (or --elf FILE)
#   /etc/systemd/system/iiot-gateway.service, enabled and started when systemd runs
#   /etc/udev/rules.d/60-iiot-gateway.rules   the ST-LINK for plugdev, its serial port for dialout
#   /var/lib/iiot-gateway       the disk buffers (the unit's StateDirectory)
#
# Options:
#   --wheel FILE   install this wheel instead of building one from the repository
#                  (pip fetches the dependencies; PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR for offline sites)
#   --elf FILE     the Node 2 ELF to install (default firmware/build/nucleo-f446re/node2.elf)
#   --id NAME      gateway.id for a new config (default: what the gateway derives itself, the host
#                  name plus a hash of /etc/machine-id, written out so that it never changes; with
#                  --root and no DIR/etc/machine-id the id is left out: each box derives its own)
#   --python PY    the interpreter for the venv (default python3; 3.11 or newer)
#   --no-venv      leave /opt/iiot-gateway/venv alone (everything else is installed)
#   --root DIR     lay the files out under DIR as they would be under /, for tests and image
#                  builders; the paths inside the files are written for /. Nothing on the running
#                  system is touched: no systemctl start, no udevadm. The user is created with
#                  useradd --root DIR when DIR/etc/passwd exists, else only reported. A venv is not
#                  relocatable: its scripts name DIR/opt/iiot-gateway/venv, so an image builder runs
#                  this script inside the image (chroot) or builds the venv there.
#   --uninstall    stop and remove the service, the program, the ELF and the udev rules; keep the
#                  config, the buffers and the user
#   --purge        with --uninstall: remove the config, the buffers and the user too
set -euo pipefail

NAME=iiot-gateway
USER_NAME=iiot-gateway
VENV=/opt/iiot-gateway/venv
CONF_DIR=/etc/iiot-gateway
CONF=$CONF_DIR/config.toml
ELF_DIR=/usr/share/iiot-gateway
ELF=$ELF_DIR/node2.elf
STATE_DIR=/var/lib/iiot-gateway
# Buffer bounds written into a new config: a day of outage at the seed's pace (a
# packet every 10 s, 9 readings: 77,760 messages and points a day) and then some.
# config.toml keeps the design's 1000-message MQTT default (about 18 minutes of it).
BOUND_MESSAGES=100000
BOUND_POINTS=100000
UNIT=/etc/systemd/system/iiot-gateway.service
WANTS=/etc/systemd/system/multi-user.target.wants/iiot-gateway.service
RULES=/etc/udev/rules.d/60-iiot-gateway.rules
# The PATH systemd gives a service (systemd.exec(5), "Environment variables in spawned processes").
SERVICE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
REPO_ELF=firmware/build/nucleo-f446re/node2.elf

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=""
rooted=no
wheel=""
elf=""
gw_id=""
python=python3
venv=yes
action=install
purge=no

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
    exit "${1:-0}"
}
say() { printf '%s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; rooted=yes; shift 2 ;;
        --root=*) root=${1#--root=}; rooted=yes; shift ;;
        --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; wheel=$2; shift 2 ;;
        --elf) [ $# -ge 2 ] || die "--elf needs a file"; elf=$2; shift 2 ;;
        --id) [ $# -ge 2 ] || die "--id needs a name"; gw_id=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift 2 ;;
        --no-venv) venv=no; shift ;;
        --uninstall) action=uninstall; shift ;;
        --purge) purge=yes; shift ;;
        -h|--help) usage 0 ;;
        *) warn "unknown option $1"; usage 2 ;;
    esac
done

if [ "$rooted" = yes ]; then
    [ -n "$root" ] || die "--root needs a directory"
    mkdir -p "$root"
    root=$(cd "$root" && pwd -P)
    [ "$root" != / ] || die "--root /: leave --root out to install on this system"
fi
[ "$purge" = no ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"
is_root=no
[ "$(id -u)" -eq 0 ] && is_root=yes
[ "$is_root" = yes ] || [ "$rooted" = yes ] || die "run as root (or with --root DIR)"

# Act on the running system only without --root, and talk to systemd only when it runs.
live_systemd=no
[ "$rooted" = no ] && [ -d /run/systemd/system ] && live_systemd=yes

# --- users and groups: getent on this system, DIR's own files with --root ---------------------

accounts=yes   # can we create and look up accounts where we install?
if [ "$rooted" = yes ] && ! { [ -f "$root/etc/passwd" ] && [ -f "$root/etc/group" ]; }; then
    accounts=no
fi
acct_args=()
[ "$rooted" = yes ] && acct_args=(--root "$root")

group_line() {
    if [ "$rooted" = yes ]; then grep -m1 "^$1:" "$root/etc/group" 2>/dev/null || true
    else getent group "$1" || true; fi
}
user_exists() {
    if [ "$rooted" = yes ]; then grep -q "^$1:" "$root/etc/passwd" 2>/dev/null
    else getent passwd "$1" >/dev/null; fi
}
gid_of() { group_line "$1" | cut -d: -f3; }
uid_of() {
    if [ "$rooted" = yes ]; then grep -m1 "^$1:" "$root/etc/passwd" | cut -d: -f3
    else getent passwd "$1" | cut -d: -f3; fi
}
in_group() {  # in_group USER GROUP: USER is a listed member of GROUP
    local members
    members=$(group_line "$2" | cut -d: -f4)
    [[ ",$members," == *",$1,"* ]]
}

ensure_accounts() {
    if [ "$accounts" = no ]; then
        say "user     not created: $root/etc/passwd is missing; in the image, run:"
        say "           groupadd --system plugdev   # when missing"
        say "           useradd --system --user-group --home-dir $STATE_DIR --no-create-home \\"
        say "                   --shell /usr/sbin/nologin --groups dialout,plugdev $USER_NAME"
        return
    fi
    local g
    for g in dialout plugdev; do
        if [ -z "$(group_line "$g")" ]; then
            groupadd "${acct_args[@]}" --system "$g"
            say "group    created $g"
        fi
    done
    if user_exists "$USER_NAME"; then
        local missing=()
        for g in dialout plugdev; do in_group "$USER_NAME" "$g" || missing+=("$g"); done
        if [ ${#missing[@]} -gt 0 ]; then
            usermod "${acct_args[@]}" --append --groups "$(IFS=,; echo "${missing[*]}")" "$USER_NAME"
            say "user     $USER_NAME added to ${missing[*]}"
        else
            say "user     $USER_NAME exists (groups dialout, plugdev)"
        fi
    else
        useradd "${acct_args[@]}" --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --groups dialout,plugdev "$USER_NAME"
        say "user     created $USER_NAME (groups dialout, plugdev)"
    fi
}

# chown by number: with --root the names live in DIR's files, not this system's.
owner_of_service() { # prints uid:gid, or nothing when unknown
    if [ "$accounts" = yes ] && user_exists "$USER_NAME"; then
        printf '%s:%s\n' "$(uid_of "$USER_NAME")" "$(gid_of "$USER_NAME")"
    fi
}

# --- install ----------------------------------------------------------------------------------

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

install_venv() {
    local dest=$root$VENV whl=$wheel tmp
    if [ -x "$dest/bin/python" ] && python_ok "$dest/bin/python"; then
        say "venv     $VENV exists: upgrading"
    else
        rm -rf "$dest"
        mkdir -p "$(dirname "$dest")"
        "$python" -m venv "$dest" \
            || die "$python -m venv failed (Debian: apt-get install python3-venv)"
        say "venv     created $VENV"
    fi
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064  # expand now: tmp is local to this function
    trap "rm -rf '$tmp'" EXIT
    if [ -z "$whl" ]; then
        # Build from a copy, so the repository gets no root-owned build/ or *.egg-info.
        mkdir "$tmp/src"
        (cd "$repo" && tar --exclude=__pycache__ -cf - pyproject.toml README.md gateway) \
            | tar -xf - -C "$tmp/src"
        say "venv     building a wheel from $repo"
        "$dest/bin/python" -m pip wheel --quiet --disable-pip-version-check --no-deps \
            --wheel-dir "$tmp/dist" "$tmp/src" >&2 || die "building the wheel failed"
        whl=$(ls "$tmp"/dist/*.whl)
    fi
    [ -f "$whl" ] || die "no wheel at $whl"
    # First the dependencies (pip skips what is satisfied), then this wheel's code even when
    # the version number did not change.
    "$dest/bin/python" -m pip install --quiet --disable-pip-version-check "$whl" >&2 \
        || die "pip install $whl failed"
    "$dest/bin/python" -m pip install --quiet --disable-pip-version-check \
        --force-reinstall --no-deps "$whl" >&2 || die "pip install $whl failed"
    "$dest/bin/gateway" --help >/dev/null || die "$VENV/bin/gateway --help failed"
    say "venv     installed $(basename "$whl") (not editable)"
    if [ "$rooted" = yes ]; then
        say "         (its scripts name $dest: a venv cannot be moved)"
    fi
    rm -rf "$tmp"
    trap - EXIT
}

install_config() {
    local dest=$root$CONF owner group=0 tmp
    if [ -e "$dest" ]; then
        say "config   $CONF exists: kept as it is (compare with config.toml for new keys)"
        return
    fi
    owner=$(owner_of_service)
    [ -n "$owner" ] && group=${owner#*:}
    mkdir -p "$root$CONF_DIR"
    tmp=$(mktemp "$root$CONF_DIR/.config.toml.XXXXXX")
    # Section-aware rewrite of the example: the host's id, absolute paths, the client id
    # that goes with the id. Comments and every other key stay as they are; [gateway] id and
    # buffer_dir are added at the end of the section when the example leaves them out.
    # An empty id (an image without a machine id) writes neither id nor client_id.
    awk -v id="$gw_id" -v state="$STATE_DIR" -v elf="$ELF" \
        -v messages="$BOUND_MESSAGES" -v points="$BOUND_POINTS" '
        function close_gateway() {
            if (section != "gateway") return
            if (!seen_id && id != "") print "id = \"" id "\""
            if (!seen_dir) print "buffer_dir = \"" state "\""
            seen_id = seen_dir = 1
        }
        /^[[:space:]]*\[/ { close_gateway(); section = $0; gsub(/[[:space:]\[\]]/, "", section) }
        section == "gateway" && /^id[[:space:]]*=/ && id != "" {
            print "id = \"" id "\""; seen_id = 1; next
        }
        section == "gateway" && /^buffer_dir[[:space:]]*=/ {
            print "buffer_dir = \"" state "\""; seen_dir = 1; next
        }
        section == "source" && /^command[[:space:]]*=/ { gsub(/"[^"]*\.elf"/, "\"" elf "\"") }
        section == "mqtt" && /^client_id[[:space:]]*=/ && id != "" {
            print "client_id = \"iiot-gateway-" id "\""; next
        }
        section == "mqtt" && /^buffer_max_messages[[:space:]]*=/ {
            print "buffer_max_messages = " messages "  # install.sh: a day and more at 10 s"; next
        }
        section == "influxdb" && /^buffer_max_points[[:space:]]*=/ {
            print "buffer_max_points = " points "  # install.sh: a day and more at 10 s"; next
        }
        { print }
        END { close_gateway() }
    ' "$repo/config.toml" > "$tmp"
    check_config "$tmp"
    chmod 640 "$tmp"
    [ "$is_root" = yes ] && chown "0:$group" "$tmp"
    mv "$tmp" "$dest"
    if [ -n "$gw_id" ]; then
        say "config   wrote $CONF (gateway.id = \"$gw_id\", buffer_dir $STATE_DIR, ELF $ELF)"
    else
        say "config   wrote $CONF (no gateway.id: each box derives its own; buffer_dir $STATE_DIR, ELF $ELF)"
    fi
    [ "$group" != 0 ] || say "         (group root: chgrp $USER_NAME $CONF once the user exists)"
}

check_config() {  # the written config parses and says what we meant
    local py=$python
    [ -x "$root$VENV/bin/python" ] && py=$root$VENV/bin/python
    if ! python_ok "$py"; then
        warn "no Python 3.11 to check $CONF with"
        return
    fi
    "$py" - "$1" "$gw_id" "$STATE_DIR" "$ELF" <<'PY' || die "the written config is not right: $1"
import sys, tomllib
path, gw_id, state, elf = sys.argv[1:]
with open(path, "rb") as f:
    cfg = tomllib.load(f)
assert cfg["gateway"].get("id", "") == gw_id, cfg["gateway"]
assert cfg["gateway"]["buffer_dir"] == state, cfg["gateway"]
command = cfg.get("source", {}).get("command", [])
assert not any(a.endswith(".elf") and a != elf for a in command), command
# A day of outage at the seed's pace: 9 readings every 10 s.
day = 9 * 6 * 60 * 24
assert cfg["mqtt"]["buffer_max_messages"] >= day, cfg["mqtt"]
assert cfg["influxdb"]["buffer_max_points"] >= day, cfg["influxdb"]
try:
    from gateway.config import parse_config
except ImportError:  # --no-venv: the TOML checks above are what we have
    sys.exit(0)
parse_config(cfg, environ={})
PY
}

install_elf() {
    local src=${elf:-$repo/$REPO_ELF}
    if [ -f "$src" ]; then
        install -D -m 644 "$src" "$root$ELF"
        say "firmware $src -> $ELF"
    elif [ -n "$elf" ]; then
        die "--elf $elf: no such file"
    elif [ -f "$root$ELF" ]; then
        say "firmware $REPO_ELF not built: kept $ELF"
    else
        warn "no Node 2 firmware at $REPO_ELF: build it (make -C firmware) and run install.sh" \
             "again, or pass --elf FILE; the config's probe-rs command names $ELF"
    fi
}

install_files() {
    install -D -m 644 "$repo/ops/iiot-gateway.service" "$root$UNIT"
    say "unit     $UNIT"
    install -D -m 644 "$repo/ops/udev/60-iiot-gateway.rules" "$root$RULES"
    say "udev     $RULES"
    local owner
    owner=$(owner_of_service)
    if [ -n "$owner" ] && [ "$is_root" = yes ]; then
        install -d -m 700 -o "${owner%:*}" -g "${owner#*:}" "$root$STATE_DIR"
    else
        install -d -m 700 "$root$STATE_DIR"
    fi
    say "buffers  $STATE_DIR"
}

find_probe_rs() {
    local dir found=""
    for dir in ${SERVICE_PATH//:/ }; do
        if [ -x "$root$dir/probe-rs" ]; then found=$dir/probe-rs; break; fi
    done
    if [ -n "$found" ]; then
        say "probe-rs $found"
        return
    fi
    local elsewhere="" candidate
    if [ "$rooted" = no ]; then
        for candidate in "$(command -v probe-rs 2>/dev/null || true)" \
            "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin/probe-rs}" \
            "${HOME:-/root}/.cargo/bin/probe-rs"; do
            if [ -n "$candidate" ] && [ -x "$candidate" ]; then elsewhere=$candidate; break; fi
        done
    fi
    warn "probe-rs not found on the service's PATH ($SERVICE_PATH); install it to" \
         "/usr/local/bin (cargo installs to ~/.cargo/bin, which the service cannot see)"
    if [ -n "$elsewhere" ]; then
        warn "found $elsewhere: install -m 755 $elsewhere /usr/local/bin/probe-rs"
    fi
}

start_service() {
    if [ "$live_systemd" = yes ]; then
        if command -v udevadm >/dev/null; then
            udevadm control --reload
            # Apply the rules to an ST-LINK that is plugged in already.
            udevadm trigger --action=change --subsystem-match=usb --attr-match=idVendor=0483 || true
            udevadm trigger --action=change --subsystem-match=tty --property-match=ID_VENDOR_ID=0483 || true
            say "udev     rules reloaded"
        fi
        local was_active=no
        systemctl is-active --quiet "$NAME" && was_active=yes
        systemctl daemon-reload
        systemctl enable --now "$NAME"
        if [ "$was_active" = yes ]; then
            systemctl restart "$NAME"
            say "service  restarted $NAME (the new version runs)"
        else
            say "service  enabled and started $NAME"
        fi
        say "         journalctl -u $NAME -f; status page: gateway status"
    elif command -v systemctl >/dev/null; then
        # Offline: the enablement symlink only (systemctl --root never talks to a manager).
        systemctl --root="${root:-/}" --quiet enable "$NAME.service"
        say "service  enabled $NAME (systemd is not running here: it starts at the next boot)"
    else
        mkdir -p "$(dirname "$root$WANTS")"
        ln -sf "$UNIT" "$root$WANTS"
        say "service  enabled $NAME (no systemctl here: linked $WANTS)"
    fi
}

# The id the gateway would derive itself (gateway.config.sections.derive_gateway_id, stdlib only, so
# it runs from the repository): the host name plus a hash of the machine id. Written into
# the config so that it never changes afterwards, whatever happens to the host name or
# the machine id. Prints nothing for an image without a machine id (a card image gets
# one at first boot): baking an id into it would give every card made from it one id.
derived_id() {
    local host machine=$root/etc/machine-id
    host=$(uname -n)
    if ! python_ok "$python"; then
        warn "no Python 3.11 to derive gateway.id with: using the host name $host"
        printf '%s\n' "$host"
        return
    fi
    PYTHONPATH=$repo "$python" - "$host" "$machine" "$rooted" <<'PY'
import sys
from gateway.config.sections import derive_gateway_id
host, machine, rooted = sys.argv[1:]
derived = derive_gateway_id(host, machine)
if derived.machine_id:
    print(derived.value)
elif rooted == "yes":
    print(f"warning: {derived.note}: gateway.id left out, each box derives its own at its "
          "first start (or pass --id NAME)", file=sys.stderr)
else:
    print(f"warning: {derived.note}: gateway.id = host name {derived.value!r}; boxes with one "
          "host name will share it (pass --id NAME)", file=sys.stderr)
    print(derived.value)
PY
}

do_install() {
    if [ -z "$gw_id" ]; then
        gw_id=$(derived_id) || die "deriving gateway.id failed (pass --id NAME)"
    fi
    [ -z "$gw_id" ] || [[ "$gw_id" =~ ^[A-Za-z0-9._-]+$ ]] \
        || die "gateway id '$gw_id': use letters, digits, '.', '_' and '-' (--id NAME)"
    if [ "$venv" = yes ]; then
        python_ok "$python" || die "$python: Python 3.11 or newer is needed (--python PY)"
    fi
    [ -z "$wheel" ] || [ -f "$wheel" ] || die "--wheel $wheel: no such file"
    [ -z "$wheel" ] || wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
    [ "$rooted" = no ] || say "root     $root (files as under /; the running system is left alone)"
    ensure_accounts
    if [ "$venv" = yes ]; then install_venv; else say "venv     skipped (--no-venv)"; fi
    install_config
    install_elf
    install_files
    find_probe_rs
    start_service
}

# --- uninstall --------------------------------------------------------------------------------

do_uninstall() {
    [ "$rooted" = no ] || say "root     $root"
    if [ "$live_systemd" = yes ]; then
        systemctl disable --now "$NAME" 2>/dev/null || true
        say "service  stopped and disabled $NAME"
    elif command -v systemctl >/dev/null && [ -e "$root$UNIT" ]; then
        systemctl --root="${root:-/}" --quiet disable "$NAME.service" || true
    fi
    rm -f "$root$WANTS" "$root$UNIT"
    [ "$live_systemd" = no ] || systemctl daemon-reload
    say "unit     removed $UNIT"
    rm -f "$root$RULES"
    if [ "$live_systemd" = yes ] && command -v udevadm >/dev/null; then udevadm control --reload; fi
    say "udev     removed $RULES"
    local opt_dir=$root/opt/iiot-gateway
    rm -rf "$opt_dir" "$root$ELF_DIR"
    say "program  removed /opt/iiot-gateway and $ELF_DIR"
    if [ "$purge" = yes ]; then
        rm -rf "$root$CONF_DIR" "$root$STATE_DIR"
        say "purged   $CONF_DIR and $STATE_DIR (the buffers)"
        if [ "$accounts" = yes ] && user_exists "$USER_NAME"; then
            userdel "${acct_args[@]}" "$USER_NAME"
            say "user     removed $USER_NAME"
        fi
    else
        say "kept     $CONF, the buffers in $STATE_DIR and the user $USER_NAME" \
            "(--uninstall --purge removes them)"
    fi
}

if [ "$action" = install ]; then do_install; else do_uninstall; fi
