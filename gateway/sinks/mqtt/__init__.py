"""The MQTT sink: the MQTT buffer's ``{prefix}/{group}/{metric}`` messages → the broker.

Messages are retained as ``mqtt.retain`` says, except alert events
(``{prefix}/alerts/{name}``), which are always retained: the topic is the
alert's current state, and a client that subscribes later must see it.

Records wait in a :class:`~gateway.buffer.DiskBuffer` and leave it only after
the broker's PUBACK. Delivery is a sliding window: up to ``mqtt.max_inflight``
messages are in flight at all times; as PUBACKs arrive, the oldest
acknowledged run of them is acknowledged in the buffer (one call per wake-up)
and as many new records are sent, so the link never idles while a backlog
waits. Over a link with round trip RTT that is up to max_inflight / RTT
messages per second; waiting for a whole window before sending the next
idled the link for a round trip per window (and, on a broker without
TCP_NODELAY, for its Nagle delay on the last PUBACKs). A dropped connection
sends the unacknowledged window again (at most one window of duplicates), and
a sibling task notices the drop within milliseconds. Each connection attempt
builds a fresh aiomqtt ``Client`` (a reused one can claim to be connected and
replay stale QoS1 messages).

MQTT 5 (``mqtt.protocol = "5"``, the default) adds to each message the user
properties ``ts`` (the reading's receive time) and ``gw`` (the gateway id),
caps the window at the broker's Receive Maximum, and reads PUBACK reason
codes: a refusal (≥ 0x80) sends the message to the dead letters instead of
counting it delivered. A broker that refuses protocol 5 is spoken to in 3.1.1
from then on, for as long as the process runs. Every connection starts a
clean session that ends with it: the disk buffer, not the broker, keeps what
is not acknowledged (see docs/architecture.md, "Sessions").
"""

from gateway.sinks.mqtt.client import (
    asyncio_exception,
    describe_error,
    new_client,
    remove_discovery,
    tls_context,
)
from gateway.sinks.mqtt.sink import (
    DEAD_LETTER_FILE,
    RETRYABLE,
    STATUS_TIMEOUT,
    WINDOW,
    MqttSink,
)

__all__ = [
    "DEAD_LETTER_FILE",
    "RETRYABLE",
    "STATUS_TIMEOUT",
    "WINDOW",
    "MqttSink",
    "asyncio_exception",
    "describe_error",
    "new_client",
    "remove_discovery",
    "tls_context",
]
