"""`redis_boundary`: a store's Redis errors leave it as the project's error, nothing else does."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError, ResponseError

from orchestrator.core.boundary import redis_boundary
from orchestrator.core.errors import QueueUnavailable, StoreUnavailable


class Store:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.calls = 0

    @redis_boundary("test store")
    async def read(self, key: str) -> str:
        """Read `key`."""
        self.calls += 1
        if self.error is not None:
            raise self.error
        return key.upper()


async def test_a_decorated_method_returns_its_value() -> None:
    store = Store(None)
    assert await store.read("k") == "K"
    assert store.calls == 1
    assert Store.read.__name__ == "read" and Store.read.__doc__ == "Read `key`."


@pytest.mark.parametrize("raised", [ConnectionError("refused"), ResponseError("WRONGTYPE")])
async def test_a_redis_error_leaves_as_store_unavailable(raised: Exception) -> None:
    with pytest.raises(StoreUnavailable) as info:
        await Store(raised).read("k")
    assert str(info.value) == f"test store read: {raised}"
    assert info.value.__cause__ is raised


@pytest.mark.parametrize("raised", [ValueError("bug"), QueueUnavailable("q"), KeyError("x")])
async def test_other_errors_pass_unchanged(raised: Exception) -> None:
    with pytest.raises(type(raised)) as info:
        await Store(raised).read("k")
    assert info.value is raised


def test_as_a_context_manager_with_another_error_class() -> None:
    cause = ConnectionError("gone")
    with pytest.raises(QueueUnavailable, match=r"^liveness: gone$") as info:
        with redis_boundary("liveness", QueueUnavailable):
            raise cause
    assert info.value.__cause__ is cause
    with redis_boundary("liveness"):
        pass  # nothing raised, nothing translated
    assert "store='liveness'" in repr(redis_boundary("liveness"))
