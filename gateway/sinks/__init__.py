"""The sinks: each delivers its disk buffer to one server and deletes on acknowledgement.

Both have the same shape: built from their config section, buffer and metrics;
``run(task_status=...)`` reports ready once its loop runs (before it has
connected: a server being down is a normal state), ``stop()`` asks it to finish
the request in flight and return. Retries use :class:`gateway.backoff.Backoff`;
what is retried is decided by named exception types.
"""
