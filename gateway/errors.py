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
