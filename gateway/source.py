"""The source stage: a supervised child process (probe-rs) or another byte stream.

Whatever the kind, bytes go through one :class:`~gateway.telemetry.LineSplitter`
and every batch of complete lines is handed to ``on_lines`` together with its
receive time. The command source restarts its child with backoff after any
exit, and a stall watchdog restarts a child that went quiet.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from gateway.backoff import Backoff
from gateway.config.sections import SourceSection
from gateway.metrics import Metrics, RateLimitedLog
from gateway.telemetry import LineSplitter

if TYPE_CHECKING:
    import serial

log = logging.getLogger(__name__)

LineHandler = Callable[[list[bytes]], Awaitable[None]]
STOP_GRACE = 3.0  # seconds between SIGINT and SIGKILL when stopping the child
READ_SIZE = 65536
EXIT_AFTER_EOF = 1.0  # seconds a child may take to exit after closing its stdout


async def stop_process(proc: trio.Process, grace: float = STOP_GRACE) -> int | None:
    """Stop ``proc`` and its process group: SIGINT, then SIGKILL after ``grace``.

    probe-rs detaches cleanly on SIGINT; SIGKILL is the backstop for a wedged
    child. Always reaps the child (no zombie). Shielded: safe under cancellation.
    """
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            _signal_group(proc, signal.SIGINT)
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.returncode is None:
            _signal_group(proc, signal.SIGKILL)
            await proc.wait()
        else:
            # The leader exited; take any stragglers in its group with it.
            _signal_group(proc, signal.SIGKILL)
    return proc.returncode


def _signal_group(proc: trio.Process, sig: signal.Signals) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


class Source:
    """Read telemetry lines and pass them on; supervise the child if there is one.

    Args:
        cfg: the ``[source]`` section.
        on_lines: called with each batch of complete lines as soon as they are
            read (it stamps them). It commits them to the buffers before returning.
        metrics: where restarts and source state are counted.
    """

    def __init__(self, cfg: SourceSection, on_lines: LineHandler, metrics: Metrics) -> None:
        self.cfg = cfg
        self.on_lines = on_lines
        self.metrics = metrics
        self.backoff = Backoff(cfg.restart_initial, cfg.restart_max)
        self.restarts: dict[str, int] = {}
        self.state = "starting"
        self.pid: int | None = None
        # Why the source last failed and since when (wall ns), for the status
        # page; cleared once lines flow again. The log says the same, but an
        # operator looking at a "failed" badge should not need the journal.
        self.last_error = ""
        self.last_error_since: int | None = None
        self._stderr_log = RateLimitedLog(log, interval=5.0)
        self._splitter = LineSplitter(cfg.max_line_bytes)
        # The process spawner; a seam for tests that need virtual time.
        self.spawn: Callable[..., Awaitable[trio.Process]] = trio.lowlevel.open_process

    # -- the common path -------------------------------------------------------

    async def _pump(self, stream: trio.abc.ReceiveStream, scope: trio.CancelScope | None) -> None:
        """Read ``stream`` to EOF, splitting lines; push back the stall deadline."""
        splitter = self._splitter = LineSplitter(self.cfg.max_line_bytes)
        while True:
            chunk = await stream.receive_some(READ_SIZE)
            if not chunk:
                break
            await self._deliver(splitter.feed(bytes(chunk)), splitter, scope)
        last = splitter.flush()
        await self._deliver([last] if last else [], splitter, scope)

    async def _deliver(
        self, lines: list[bytes], splitter: LineSplitter, scope: trio.CancelScope | None
    ) -> None:
        if splitter.too_long:
            self.metrics.lines_rejected.inc("too_long", amount=splitter.too_long)
            log.warning(
                "dropped %d line(s) longer than source.max_line_bytes=%d",
                splitter.too_long,
                self.cfg.max_line_bytes,
            )
            splitter.too_long = 0
        if not lines:
            return
        if scope is not None and self.cfg.stall_timeout > 0:
            scope.deadline = trio.current_time() + self.cfg.stall_timeout
        self.backoff.up()
        if self.last_error:
            self._note_error("")
        await self.on_lines(lines)

    async def _retry_later(self, reason: str, what: str, exc: OSError) -> None:
        """Count a failed start, log it, keep it as the last error, and wait out the backoff."""
        self.state = "failed"
        self._count_restart(reason)
        delay = self.backoff.next_delay()
        self._note_error(f"{what}: {exc.strerror or exc}")
        log.error("source: %s: %s; retrying in %.1f s", what, exc.strerror or exc, delay)
        await trio.sleep(delay)

    def _note_error(self, text: str) -> None:
        """Set the last error; its "since" moves only when the text changes."""
        if text != self.last_error:
            self.last_error = text
            self.last_error_since = time.time_ns() if text else None

    def _count_restart(self, reason: str) -> None:
        self.restarts[reason] = self.restarts.get(reason, 0) + 1
        self.metrics.source_restarts.inc(reason)

    # -- run --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the configured source until cancelled (or, for stdin/file, EOF).

        Reports ready once its supervision loop runs: for a command or a serial
        port after the first attempt to start it (a missing program or device
        is retried, not fatal); for a file once it is open.

        Raises:
            OSError: the file of a ``file`` source cannot be opened.
        """
        kind = self.cfg.kind
        try:
            if kind == "command":
                await self._run_command(task_status)
            elif kind == "stdin":
                await self._run_stdin(task_status)
            elif kind == "file":
                await self._run_file(task_status)
            else:
                await self._run_serial(task_status)
        finally:
            self.metrics.source_up = False
            self.state = "stopped"

    async def _run_command(self, task_status: trio.TaskStatus[None]) -> None:
        argv = list(self.cfg.command)
        ready = _Once(task_status)
        while True:
            self.state = "starting"
            try:
                proc = await self.spawn(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # its own group, so we can stop all of it
                )
            except OSError as exc:
                ready()
                await self._retry_later("failed_to_start", f"cannot start {argv[0]}", exc)
                continue
            ready()
            reason = await self._supervise(proc)
            self._count_restart(reason)
            self._note_error(f"{argv[0]}: {reason.replace('_', ' ')}")
            delay = self.backoff.next_delay()
            log.warning("source: %s (%s); restarting in %.1f s", argv[0], reason, delay)
            await trio.sleep(delay)

    async def _supervise(self, proc: trio.Process) -> str:
        """Read one child's output until it exits or stalls; return the reason."""
        self.pid = proc.pid
        self.state = "running"
        self.metrics.source_up = True
        log.info("source: started %s (pid %d)", self.cfg.command[0], proc.pid)
        stalled = False
        closed_stdout = False
        try:
            async with trio.open_nursery() as nursery:
                assert proc.stderr is not None
                assert proc.stdout is not None
                nursery.start_soon(self._log_stderr, proc.stderr)
                with trio.CancelScope() as scope:
                    if self.cfg.stall_timeout > 0:
                        scope.deadline = trio.current_time() + self.cfg.stall_timeout
                    await self._pump(proc.stdout, scope)
                stalled = scope.cancelled_caught
                if not stalled:
                    # End of output: a child that exits closes stdout first, so
                    # give it a moment before calling it a child that closed
                    # its stdout and kept running.
                    with trio.move_on_after(EXIT_AFTER_EOF):
                        await proc.wait()
                    closed_stdout = proc.returncode is None
                await stop_process(proc)
                nursery.cancel_scope.cancel()
        finally:
            await stop_process(proc)
            self.metrics.source_up = False
            self.pid = None
            self.state = "restarting"
        if stalled:
            log.warning(
                "source: no line for %.0f s (source.stall_timeout); restarting the child",
                self.cfg.stall_timeout,
            )
            return "stalled"
        if closed_stdout:
            log.warning(
                "source: %s closed its stdout but kept running; restarting it", self.cfg.command[0]
            )
            return "stdout_closed"
        code = proc.returncode
        if code is not None and code < 0:
            return f"signal_{-code}"
        return f"exit_code_{code}"

    async def _log_stderr(self, stream: trio.abc.ReceiveStream) -> None:
        splitter = LineSplitter(4096)
        while chunk := await stream.receive_some(READ_SIZE):
            for line in splitter.feed(bytes(chunk)):
                text = line.decode("utf-8", "replace").strip()
                if text:
                    self._stderr_log.log(logging.INFO, "stderr", "source stderr: %s", text)

    async def _run_stdin(self, task_status: trio.TaskStatus[None]) -> None:
        self.state = "running"
        self.metrics.source_up = True
        stream = trio.lowlevel.FdStream(os.dup(0))
        task_status.started()
        async with stream:
            await self._pump(stream, None)
        log.info("source: end of stdin; buffers keep draining until stopped")

    async def _run_file(self, task_status: trio.TaskStatus[None]) -> None:
        rate = self.cfg.rate
        splitter = self._splitter = LineSplitter(self.cfg.max_line_bytes)
        async with await trio.open_file(self.cfg.path, "rb") as f:
            self.state = "running"
            self.metrics.source_up = True
            task_status.started()
            next_at = trio.current_time()
            while chunk := await f.read(READ_SIZE):
                lines = splitter.feed(bytes(chunk))
                if rate <= 0:
                    await self._deliver(lines, splitter, None)
                    continue
                for line in lines:  # paced replay, one line at a time
                    await trio.sleep_until(next_at)
                    next_at = max(next_at + 1.0 / rate, trio.current_time())
                    await self._deliver([line], splitter, None)
        last = splitter.flush()
        await self._deliver([last] if last else [], splitter, None)
        log.info("source: replay of %s finished", self.cfg.path)

    async def _run_serial(self, task_status: trio.TaskStatus[None]) -> None:
        port = self.cfg.port
        ready = _Once(task_status)
        while True:
            self.state = "starting"
            try:
                fd = open_serial(port, self.cfg.baud)
            except OSError as exc:
                ready()
                await self._retry_later("device_missing", f"cannot open {port}", exc)
                continue
            ready()
            self.state = "running"
            self.metrics.source_up = True
            log.info("source: reading %s at %d baud", port, self.cfg.baud)
            reason = "device_closed"
            stream = trio.lowlevel.FdStream(fd)
            try:
                with trio.CancelScope() as scope:
                    if self.cfg.stall_timeout > 0:
                        scope.deadline = trio.current_time() + self.cfg.stall_timeout
                    await self._pump(stream, scope)
                if scope.cancelled_caught:
                    reason = "stalled"
            except (trio.BrokenResourceError, OSError) as exc:
                # The USB device went away (EIO) or was unplugged mid-read.
                reason = "device_lost"
                log.warning("source: %s: %s", port, exc.__cause__ or exc)
            finally:
                self.metrics.source_up = False
                self.state = "restarting"
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            self._count_restart(reason)
            self._note_error(f"{port}: {reason.replace('_', ' ')}")
            delay = self.backoff.next_delay()
            log.warning("source: %s (%s); reopening in %.1f s", port, reason, delay)
            await trio.sleep(delay)


class _Once:
    """Calls ``task_status.started()`` the first time it is called."""

    def __init__(self, task_status: trio.TaskStatus[None]) -> None:
        self.task_status = task_status
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.task_status.started()


def open_serial(port: str, baud: int) -> int:
    """Open a serial device raw (8N1, no echo, no flow control); return the fd.

    pyserial does the termios work and takes an exclusive lock on the device
    (``flock``), so a second gateway or a terminal left open on the same port
    is refused instead of splitting the lines between two readers. The
    returned descriptor is a duplicate the caller owns; the lock lives as long
    as it is open. pyserial discards input already waiting when it opens the
    port: on a USB CDC device nothing is read while the port is closed, so
    that is at most what arrived during the open itself.

    Raises:
        OSError: the device is missing, busy, locked by another reader or not a
            terminal; or the baud rate is refused.
    """
    # Imported here: only a serial source needs pyserial (half a MB of RSS).
    import serial

    try:
        device = serial.Serial(port, baud, timeout=0, exclusive=True)
    except ValueError as exc:  # a baud rate pyserial refuses
        raise OSError(errno.EINVAL, f"unsupported baud rate {baud}: {exc}") from exc
    except serial.SerialException as exc:
        text = exc.strerror if isinstance(exc.strerror, str) else str(exc)
        raise OSError(_errno_of(exc), text) from exc
    try:
        return os.dup(device.fileno())
    finally:
        device.close()


def _errno_of(exc: serial.SerialException) -> int:
    """The system's error code behind pyserial's exception (EIO when none is told).

    pyserial passes the code of a failed open() on, but wraps a failed
    termios call (a file that is not a terminal) without one.
    """
    if isinstance(exc.errno, int):
        return exc.errno
    cause = exc.__context__
    if cause is not None and cause.args and isinstance(cause.args[0], int):
        return cause.args[0]
    return errno.EIO
