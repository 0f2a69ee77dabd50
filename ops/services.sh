#!/usr/bin/env bash
# Local services for development and tests: a private Mosquitto and a
# VictoriaMetrics (the InfluxDB-line-protocol TSDB used where InfluxDB 2 is not
# installable). Installs the Debian packages when missing.
#
#   ops/services.sh install
#   ops/services.sh start  DATA_DIR [MQTT_PORT] [TSDB_PORT]   (defaults 1883, 8428)
#   ops/services.sh stop   DATA_DIR
#
# `start` reuses a broker already listening on MQTT_PORT (e.g. the system's
# Mosquitto on 1883) instead of starting a second one. The TSDB keeps samples
# for $TSDB_RETENTION (default 90d, the compose stack's InfluxDB retention;
# VictoriaMetrics suffixes h, d, w, y) and deletes older ones.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

need_pkgs() {
    local missing=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
    command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
    command -v curl >/dev/null || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
    for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
    echo "nothing listens on port $1" >&2; return 1
}

start() {
    local dir=$1 mqtt_port=${2:-1883} tsdb_port=${3:-8428}
    mkdir -p "$dir"
    if listening "$mqtt_port"; then
        echo "mqtt: reusing the broker on 127.0.0.1:$mqtt_port"
    else
        mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
        sed "s/^listener .*/listener $mqtt_port 127.0.0.1/" "$here/mosquitto/mosquitto.conf" \
            | grep -v '^persistence_location\|^log_dest' > "$dir/mosquitto.conf"
        echo "persistence_location $dir/" >> "$dir/mosquitto.conf"
        # setsid: a session of its own, so Ctrl-C on `make run` stops only the gateway.
        setsid "$mosq" -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 < /dev/null &
        echo $! > "$dir/mosquitto.pid"
        wait_port "$mqtt_port"
        echo "mqtt: mosquitto on 127.0.0.1:$mqtt_port (pid $(cat "$dir/mosquitto.pid"))"
    fi
    if listening "$tsdb_port"; then
        echo "tsdb: reusing the server on 127.0.0.1:$tsdb_port"
    else
        setsid victoria-metrics -httpListenAddr "127.0.0.1:$tsdb_port" \
            -storageDataPath "$dir/victoria-metrics" -retentionPeriod "${TSDB_RETENTION:-90d}" \
            -search.latencyOffset 0s >"$dir/victoria-metrics.log" 2>&1 < /dev/null &
        echo $! > "$dir/victoria-metrics.pid"
        wait_port "$tsdb_port"
        echo "tsdb: victoria-metrics on 127.0.0.1:$tsdb_port (pid $(cat "$dir/victoria-metrics.pid"))"
    fi
}

stop() {
    local dir=$1
    for name in mosquitto victoria-metrics; do
        if [ -f "$dir/$name.pid" ]; then
            kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}

case "${1:-}" in
    install) need_pkgs ;;
    start) shift; need_pkgs; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 install | start DATA_DIR [MQTT_PORT] [TSDB_PORT] | stop DATA_DIR" >&2; exit 2 ;;
esac
