"""Where redis-py's errors become the project's: at the boundary of each store.

A store (`ResultStore`, `SlotTable`, `UsageLedger`, ...) marks its Redis-facing
methods with `redis_boundary("slot table")`, or wraps a block in
`with redis_boundary("heartbeat"):`; a `RedisError` raised inside leaves as
`StoreUnavailable` (or the error class given, e.g. `QueueUnavailable` for a queue's
internals) naming the store and the operation, chained to the original. Callers catch
the project's error and never import `redis.exceptions` (httpcore's `map_exceptions`).

`ClusterClient` already turns an unreachable cluster into a `ConnectionError`, a
`RedisError`, so both deployments of Redis are covered.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, final

from redis.exceptions import RedisError

from orchestrator.core.errors import PTUError, StoreUnavailable

_P = ParamSpec("_P")
_R = TypeVar("_R")


@final
class redis_boundary:  # lower case: used as a decorator and as a context manager
    """Translate `RedisError` into `error` (default `StoreUnavailable`) naming `store`."""

    __slots__ = ("error", "store")

    def __init__(self, store: str, error: type[PTUError] = StoreUnavailable) -> None:
        self.store = store
        self.error = error

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, RedisError):
            raise self.error(f"{self.store}: {exc}") from exc

    def __call__(self, fn: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
        """Decorate a store's async method: its Redis errors leave as `error`."""
        inner = redis_boundary(f"{self.store} {fn.__name__}", self.error)

        @functools.wraps(fn)
        async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            with inner:
                return await fn(*args, **kwargs)

        return translated

    def __repr__(self) -> str:
        return f"<redis_boundary store={self.store!r} error={self.error.__name__}>"
