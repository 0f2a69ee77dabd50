"""The gateway's exception tree: the retry decision lives in the error."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is invalid; `key` is the dotted key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class InfluxWriteError(GatewayError):
    """A write to InfluxDB failed.

    Attributes:
        status: HTTP status, or None for a network error.
        retryable: whether the same batch may succeed later.
        retry_after: seconds the server asked us to wait, if any.
        split: the batch should be split (413, or 400/422 to isolate bad points).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = True,
        retry_after: float | None = None,
        split: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.split = split


class BufferDirInUse(GatewayError):
    """Another gateway holds the buffer directory: two would lose each other's records.

    Attributes:
        directory: the buffer directory.
        pid: the process holding it, as it wrote itself into the lock file;
            None where that cannot be known (an older gateway, a file it
            could not write, or a process of another pid namespace).
    """

    def __init__(self, directory: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"buffer directory {directory} is in use by another gateway ({who}): "
            "stop that one first, or give this one a buffer directory of its own"
        )
        self.directory = directory
        self.pid = pid


def leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf exception of a (possibly nested) exception group.

    Trio nurseries wrap errors in groups; retry loops want the one that happened.
    """
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every (non-empty) secret replaced by ``***``.

    Applied where an error text enters the gateway's state (a sink's
    ``last_error``), so that nothing serialised later can carry a secret.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
