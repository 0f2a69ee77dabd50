# The gateway as a container: `docker build -t iiot-gateway .`
# Mount a config at /etc/iiot-gateway/config.toml and a volume for the disk
# buffers at /var/lib/iiot-gateway; secrets come from the environment
# (GATEWAY_INFLUXDB_TOKEN, GATEWAY_MQTT_PASSWORD) or files named in the config.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/iiot-gateway --shell /usr/sbin/nologin \
       --groups dialout iiot-gateway \
    && install -d -o iiot-gateway -g iiot-gateway -m 700 /var/lib/iiot-gateway \
    && install -d -m 755 /etc/iiot-gateway

WORKDIR /var/lib/iiot-gateway
USER iiot-gateway
VOLUME ["/var/lib/iiot-gateway"]
# /metrics, /healthz, /api/status and the status page ([status] listen).
EXPOSE 9108

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]

ENTRYPOINT ["gateway", "run"]
CMD ["--config", "/etc/iiot-gateway/config.toml", "--buffer-dir", "/var/lib/iiot-gateway"]
