"""A fault-injecting TCP proxy (Trio, in its own thread) for broker and database links.

Modes: ``pass`` (forward), ``refuse`` (reset every new and existing connection),
``blackhole`` (accept and stay silent; bytes in both directions vanish), and
``heal`` (back to ``pass``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

import trio

from tests.services import free_port, wait_listening

_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class Proxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target`` with switchable faults."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.mode = "pass"
        self._conns: set[trio.SocketStream] = set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        wait_listening(self.port)
        return self

    def close(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(10)

    def set_mode(self, mode: str) -> None:
        """Switch mode; ``refuse`` also resets the connections already open."""
        assert self._token is not None
        trio.from_thread.run_sync(
            self._apply, "pass" if mode == "heal" else mode, trio_token=self._token
        )

    def _apply(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            for conn in list(self._conns):
                _reset(conn)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.mode == "refuse":
            _reset(client)
            return
        self._conns.add(client)
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            _reset(client)
            self._conns.discard(client)
            return
        self._conns.add(upstream)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
        finally:
            self._conns.discard(client)
            self._conns.discard(upstream)
            for s in (client, upstream):
                with (
                    trio.CancelScope(shield=True),
                    contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError
                    ),
                ):
                    await s.aclose()

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if self.mode == "blackhole":
                    continue  # swallowed: a hung peer
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        scope.cancel()


def _reset(stream: trio.SocketStream) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a firewall would."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()
    except OSError:
        pass
