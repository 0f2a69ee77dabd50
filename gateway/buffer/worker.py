"""One thread for every call into the store's ``diskcache.Cache``.

diskcache opens one SQLite connection per thread. Trio's worker threads come
and go, so each of them would open a connection of its own: a file deleted
under the store would then be recreated, empty, by the next new thread, and
closing the store would close only one of them. Running every call on one
thread keeps one connection, which the store opens, reads, writes and closes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")


class StoreThread:
    """A single worker thread; calls run on it one at a time, in order."""

    def __init__(self, name: str = "buffer-store") -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._ident: int | None = None
        self._closed = False
        self._pool.submit(self._note_ident).result()

    def _note_ident(self) -> None:
        self._ident = threading.get_ident()

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the thread and return its result (blocking)."""
        if threading.get_ident() == self._ident or self._closed:
            # On the thread already, or after close() (nothing left to keep apart).
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` on the thread without blocking Trio.

        Like ``trio.to_thread.run_sync``, a cancellation waits for the call to
        end: a transaction is never left half-way by a cancelled task.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = self._pool.submit(fn, *args)
        future.add_done_callback(wake)
        with trio.CancelScope(shield=True):
            await done.wait()
        return future.result()

    def close(self) -> None:
        """Let the thread end once the calls submitted so far are done."""
        self._closed = True
        self._pool.shutdown(wait=False)
