"""Talking to InfluxDB: one URL's blocking writer, its request deadline, error classification.

:class:`InfluxWriter` writes through influxdb-client's synchronous API (the
sink runs it in a thread); :class:`Deadline` bounds a request in total;
:func:`classify` turns what a server or the network caused into an
:class:`~gateway.errors.InfluxWriteError` that carries the retry decision.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence

import urllib3
import urllib3.connection
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from gateway.config.sections import InfluxSection
from gateway.errors import InfluxWriteError

log = logging.getLogger("gateway.sinks.influx")  # one name for the whole sink


def classify(exc: BaseException) -> InfluxWriteError:
    """Turn what a server or the network caused into an :class:`InfluxWriteError`.

    Raises:
        BaseException: ``exc`` itself when neither caused it (a bug of ours).
    """
    if isinstance(exc, InfluxWriteError):
        return exc
    if isinstance(exc, InfluxDBError):
        status = getattr(exc, "status", None)
        if status is None and exc.response is not None:
            status = getattr(exc.response, "status", None)
        retry_after = _seconds(getattr(exc, "retry_after", None))
        message = f"HTTP {status}: {getattr(exc, 'message', '') or exc}"[:300]
        if status in (400, 422):
            return InfluxWriteError(message, status=status, retryable=False, split=True)
        if status == 413:
            return InfluxWriteError(message, status=status, retryable=True, split=True)
        if status in (401, 403):
            message += " (check influxdb.token_file / $GATEWAY_INFLUXDB_TOKEN)"
        elif status == 404:
            message += " (check influxdb.org and influxdb.bucket)"
        return InfluxWriteError(message, status=status, retryable=True, retry_after=retry_after)
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return InfluxWriteError(f"network: {exc}"[:300], status=None, retryable=True)
    # Anything else is a bug of ours: retrying it for ever would hide it.
    raise exc


def _seconds(value: object) -> float | None:
    try:
        return max(0.0, float(str(value))) if value is not None else None
    except ValueError:
        return None


class InfluxWriter:
    """Blocking writes through influxdb-client's synchronous API (run in a thread).

    ``influxdb.timeout`` bounds each socket operation inside urllib3, not the
    request: a server that answers one byte per second keeps a request alive
    for ever. The sink therefore puts a total deadline on every request and,
    when it passes, calls :meth:`abort`, which shuts down the sockets this
    writer opened so that the worker thread returns at once.

    Args:
        cfg: the ``[influxdb]`` section (token, org, bucket, timeout).
        url: the server to write to; default ``influxdb.url``.
    """

    def __init__(self, cfg: InfluxSection, url: str | None = None) -> None:
        self.cfg = cfg
        # One writer per URL of influxdb.urls: token, org and bucket are shared.
        self.url = cfg.url if url is None else url
        self.client = InfluxDBClient(
            url=self.url, token=cfg.token or "", org=cfg.org, timeout=int(cfg.timeout * 1000)
        )
        self.api = self.client.write_api(write_options=SYNCHRONOUS)
        self._connections: weakref.WeakSet[urllib3.connection.HTTPConnection] = weakref.WeakSet()
        self._track_connections()

    def _track_connections(self) -> None:
        # urllib3 lets a pool manager choose its pool classes, and a pool its
        # connection class: ours remember every connection they open.
        pool_manager = getattr(
            getattr(getattr(self.client, "api_client", None), "rest_client", None),
            "pool_manager",
            None,
        )
        if not isinstance(pool_manager, urllib3.PoolManager):
            log.warning("influxdb: cannot track connections; a stalled request cannot be aborted")
            return
        registry = self._connections

        class HTTPConnection(urllib3.connection.HTTPConnection):
            def connect(self) -> None:
                super().connect()
                registry.add(self)

        class HTTPSConnection(urllib3.connection.HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                registry.add(self)

        class HTTPPool(urllib3.HTTPConnectionPool):
            ConnectionCls = HTTPConnection

        class HTTPSPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = HTTPSConnection

        pool_manager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    def abort(self) -> None:
        """Shut down every socket of this writer: a blocked request fails at once.

        Safe to call from any thread; an idle pooled connection is simply
        reopened by the next request.
        """
        for conn in list(self._connections):
            sock = getattr(conn, "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def write(self, lines: Sequence[str]) -> None:
        """Write points; raise :class:`InfluxWriteError` on any failure."""
        try:
            self.api.write(
                bucket=self.cfg.bucket,
                org=self.cfg.org,
                record="\n".join(lines),
                write_precision=WritePrecision.NS,  # type: ignore[arg-type]
            )
        except (InfluxDBError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise classify(exc) from exc

    def close(self) -> None:
        """Release connections."""
        self.client.close()  # type: ignore[no-untyped-call]


class Deadline:
    """One watchdog thread that calls ``expire`` when an armed deadline passes.

    A thread per request (``threading.Timer``) cost a thread start, and GIL
    hand-overs, for every write: hundreds a second while a backlog drains.
    This thread sleeps through the requests that end in time and only wakes
    when one may not.
    """

    def __init__(self, expire: Callable[[], None]) -> None:
        self._expire = expire
        self._cond = threading.Condition()
        self._due: float | None = None
        self._waiting_forever = False
        self._thread: threading.Thread | None = None
        self.expired = False

    def arm(self, seconds: float) -> None:
        """Start the deadline of one request (from the worker thread)."""
        with self._cond:
            self._due = time.monotonic() + seconds
            self.expired = False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="influxdb-deadline", daemon=True
                )
                self._thread.start()
            elif self._waiting_forever:
                self._cond.notify()

    def disarm(self) -> None:
        """The request ended (the watchdog finds out at its next wake-up)."""
        with self._cond:
            self._due = None

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._due is None:
                    self._waiting_forever = True
                    self._cond.wait()
                    self._waiting_forever = False
                    continue
                left = self._due - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._due = None
                self.expired = True
                self._expire()
