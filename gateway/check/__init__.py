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

import dataclasses
import sys

from gateway.check.common import Line
from gateway.check.local import check_buffer, check_coverage, check_source
from gateway.check.servers import check_influx, check_mqtt
from gateway.config import Config
from gateway.errors import scrub

__all__ = ["Line", "check"]


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
    for line in check_coverage(cfg):
        report(line)
    # Every server of mqtt.servers and every URL of influxdb.urls on a line of
    # its own: a node that fails only shows when the sink fails over to it.
    for host, port in cfg.mqtt.endpoints:
        report(await check_mqtt(dataclasses.replace(cfg.mqtt, host=host, port=port)))
    for url in cfg.influxdb.endpoints:
        report(await check_influx(dataclasses.replace(cfg.influxdb, url=url)))
    sys.stdout.flush()
    return 1 if failures else 0
