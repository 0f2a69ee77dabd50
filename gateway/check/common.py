"""What every check shares: the result line and who the checks run as."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from gateway.config.sections import DEFAULT_BUFFER_DIR, INFLUX_TOKEN_ENV

CHECK_TIMEOUT = 10.0
# Seconds to wait for the MQTT probe to come back through the subscription.
ECHO_TIMEOUT = 5.0
# The unit's WorkingDirectory=: where a relative path in the config resolves.
SERVICE_DIR = DEFAULT_BUFFER_DIR
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
