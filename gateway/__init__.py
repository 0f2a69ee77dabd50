"""iiot-gateway: Node 2 LoRa telemetry to MQTT and InfluxDB through disk buffers."""

__version__ = "0.1.0"
