"""`PTU_REDIS_AUTH=entra`: Entra tokens as the Redis password, renewed on open connections.

A real server stands in for Azure Managed Redis: an ACL user named like the identity's
object id whose password is the token, as the service maps them. The credential is a
token source with the `AsyncTokenCredential` surface (the tokens are JWT-shaped; the
server, not the client, verifies them), so the renewal is driven by the test's clock
and sleep.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from azure.core.credentials import AccessToken

from orchestrator.core import redis_client, startup
from orchestrator.core.errors import ConfigError, StoreUnavailable
from orchestrator.core.redis_entra import (
    REDIS_SCOPE,
    EntraRedisCredentials,
    refresh_delay,
    token_claims,
)
from orchestrator.core.settings import load_settings
from orchestrator.core.views import RedisView
from tests import redis_mode

single_server = pytest.mark.skipif(
    redis_mode.CLUSTER, reason="ACL users are per node: the cluster has its own test below"
)


def jwt(oid: str, serial: int) -> str:
    def part(doc: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'oid': oid, 'n': serial})}.c2lnbmF0dXJl"


class TokenSource:
    """Issues the tokens of a list of identities in turn, each living `ttl_s`."""

    def __init__(self, oids: list[str], clock: list[float], ttl_s: float = 3600) -> None:
        self.oids = oids
        self.clock = clock
        self.ttl_s = ttl_s
        self.issued: list[str] = []
        self.scopes: list[str] = []
        self.closed = False

    async def get_token(self, *scopes: str, **_: object) -> AccessToken:
        self.scopes += scopes
        oid = self.oids[min(len(self.issued), len(self.oids) - 1)]
        token = jwt(oid, len(self.issued))
        self.issued.append(token)
        return AccessToken(token, int(self.clock[0] + self.ttl_s))

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> TokenSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Sleeps:
    """The renewal loop's sleep: each call waits until the test lets it go."""

    def __init__(self) -> None:
        self.calls: asyncio.Queue[tuple[float, asyncio.Future[None]]] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.calls.put((seconds, done))
        await done


@pytest.fixture
async def admin(redis: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    users = ("oid-a", "oid-b")
    yield redis
    await redis.execute_command("ACL", "DELUSER", *users)


async def add_user(admin: aioredis.Redis, oid: str, token: str) -> None:
    await admin.execute_command("ACL", "SETUSER", oid, "on", f">{token}", "~*", "&*", "+@all")


async def whoami(client: aioredis.Redis) -> tuple[str, int]:
    name = await client.execute_command("ACL", "WHOAMI")
    return (name.decode() if isinstance(name, bytes) else name), int(await client.client_id())


@single_server
async def test_connections_authenticate_with_the_token_and_are_reauthenticated_when_renewed(
    redis_url: str, admin: aioredis.Redis
) -> None:
    clock = [1_000_000.0]
    source = TokenSource(["oid-a", "oid-b"], clock)
    sleeps = Sleeps()
    provider = EntraRedisCredentials(source, clock=lambda: clock[0], sleep=sleeps)
    await add_user(admin, "oid-a", jwt("oid-a", 0))
    await add_user(admin, "oid-b", jwt("oid-b", 1))
    client = redis_client.connect(redis_url, max_connections=1, credential_provider=provider)
    try:
        user, connection = await whoami(client)
        assert user == "oid-a"
        assert source.scopes == [REDIS_SCOPE]
        assert "user=oid-a expires_in_s=3600" in repr(provider)
        wait, go = await sleeps.calls.get()
        assert wait == 3600 - 300  # five minutes before expiry
        clock[0] += wait
        go.set_result(None)
        await sleeps.calls.get()  # the next renewal is scheduled: this one is pushed
        assert provider.refreshes == 1
        # the same connection, re-authenticated in place with the renewed token
        assert await whoami(client) == ("oid-b", connection)
    finally:
        await client.aclose()
        await provider.aclose()
    assert source.closed


@single_server
async def test_a_new_connection_after_expiry_fetches_a_fresh_token(
    redis_url: str, admin: aioredis.Redis
) -> None:
    clock = [1_000_000.0]
    source = TokenSource(["oid-a"], clock, ttl_s=600)
    provider = EntraRedisCredentials(source, clock=lambda: clock[0], sleep=Sleeps())
    assert (await provider.get_credentials_async())[0] == "oid-a"
    assert (await provider.get_credentials_async())[1] == source.issued[0]  # cached
    clock[0] += 301  # inside the margin: due
    await add_user(admin, "oid-a", jwt("oid-a", 1))
    client = redis_client.connect(redis_url, credential_provider=provider)
    try:
        assert (await whoami(client))[0] == "oid-a"
        assert len(source.issued) == 2
    finally:
        await client.aclose()
        await provider.aclose()


def test_renewal_comes_before_expiry_whatever_the_lifetime() -> None:
    assert refresh_delay(expires_on=4600, now=1000) == 3300
    assert refresh_delay(expires_on=1400, now=1000) == 200  # short token: half its life
    assert refresh_delay(expires_on=900, now=1000) == 0
    assert token_claims(jwt("x", 3))["oid"] == "x"
    with pytest.raises(ConfigError, match="not a JWT"):
        token_claims("opaque")


def test_entra_mode_refuses_a_password_in_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_REDIS_AUTH", "entra")
    monkeypatch.setenv("PTU_REDIS_URL", "rediss://:secret@cache.example:10000/0")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "PTU_REDIS_AUTH" in str(caught.value)
    assert "secret" not in str(caught.value)
    monkeypatch.setenv("PTU_REDIS_URL", "rediss://cache.example:10000/0")
    assert load_settings().redis == RedisView("rediss://cache.example:10000/0", False, "entra")


@single_server
async def test_the_configured_client_carries_the_entra_provider(redis_url: str) -> None:
    client = redis_client.connect_view(RedisView(redis_url, False, "entra"), max_connections=2)
    provider = client.connection_pool.connection_kwargs["credential_provider"]
    try:
        assert isinstance(provider, EntraRedisCredentials)
    finally:
        await client.aclose()
        await provider.aclose()
    plain = redis_client.connect_view(RedisView(redis_url))
    assert plain.connection_pool.connection_kwargs.get("credential_provider") is None
    await plain.aclose()


class NoIdentity(TokenSource):
    async def get_token(self, *scopes: str, **_: object) -> AccessToken:
        raise RuntimeError("DefaultAzureCredential failed to retrieve a token\nlong trace")


@single_server
async def test_no_token_is_one_line_at_start_up(redis_url: str) -> None:
    source = NoIdentity(["x"], [0.0])
    provider = EntraRedisCredentials(source, sleep=Sleeps())
    client = redis_client.connect(redis_url, credential_provider=provider)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await startup.check_redis(client, redis_url)
    finally:
        await client.aclose()
        await provider.aclose()
    message = str(caught.value)
    assert "\n" not in message
    assert "PTU_REDIS_AUTH=entra: no Entra ID token" in message
    assert "failed to retrieve a token" in message


@pytest.mark.skipif(not redis_mode.CLUSTER, reason="the cluster client: PTU_TEST_REDIS=cluster")
async def test_every_node_of_a_cluster_is_reauthenticated(redis_url: str) -> None:
    admin = redis_mode.connect(redis_url)
    await admin.ping()
    nodes = [
        aioredis.Redis(host=n.host, port=n.port)
        for n in admin.get_nodes()  # type: ignore[attr-defined]
    ]
    clock = [1_000_000.0]
    source = TokenSource(["oid-a", "oid-b"], clock)
    sleeps = Sleeps()
    provider = EntraRedisCredentials(source, clock=lambda: clock[0], sleep=sleeps)
    for node in nodes:
        await add_user(node, "oid-a", jwt("oid-a", 0))
        await add_user(node, "oid-b", jwt("oid-b", 1))
    client = redis_client.connect(redis_url, cluster=True, credential_provider=provider)
    try:
        await client.initialize()  # type: ignore[attr-defined]
        every = client.get_nodes()  # type: ignore[attr-defined]
        assert len(every) == len(nodes)
        names = await client.execute_command("ACL", "WHOAMI", target_nodes=every)  # type: ignore[call-arg]
        assert {_text(v) for v in names.values()} == {"oid-a"}
        wait, go = await sleeps.calls.get()
        clock[0] += wait
        go.set_result(None)
        await sleeps.calls.get()  # renewed and pushed to every node's connections
        names = await client.execute_command("ACL", "WHOAMI", target_nodes=every)  # type: ignore[call-arg]
        assert {_text(v) for v in names.values()} == {"oid-b"}
    finally:
        await client.aclose()
        await provider.aclose()
        for node in nodes:
            await node.execute_command("ACL", "DELUSER", "oid-a", "oid-b")
            await node.aclose()
        await admin.aclose()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FlakySource(TokenSource):
    """Fails the renewals listed in `failing` (by issue number), then issues as usual."""

    def __init__(self, oids: list[str], clock: list[float], failing: set[int]) -> None:
        super().__init__(oids, clock)
        self.failing = failing
        self.attempts = 0

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.attempts += 1
        if self.attempts in self.failing:
            raise RuntimeError("the identity endpoint did not answer")
        return await super().get_token(*scopes, **kwargs)


@single_server
async def test_a_failed_renewal_is_retried_with_backoff_while_the_token_lasts() -> None:
    clock = [1_000_000.0]
    source = FlakySource(["oid-a", "oid-b"], clock, failing={2, 3})
    sleeps = Sleeps()
    provider = EntraRedisCredentials(source, clock=lambda: clock[0], sleep=sleeps)
    errors: list[Exception] = []
    renewed: list[str] = []
    provider.on_error(errors.append)
    provider.on_next(lambda token: renewed.append(token.try_get("oid")))
    try:
        assert (await provider.get_credentials_async())[0] == "oid-a"
        waits = []
        for _ in range(3):  # due, then two retries after the failures
            wait, go = await sleeps.calls.get()
            waits.append(wait)
            clock[0] += wait
            go.set_result(None)
        await sleeps.calls.get()  # the third attempt succeeded: the next renewal is scheduled
        assert waits == [3300, 1.0, 2.0]
        assert renewed == ["oid-b"] and provider.refreshes == 1
        assert errors == []  # the token never expired meanwhile
        assert (await provider.get_credentials_async())[0] == "oid-b"
    finally:
        await provider.aclose()


@single_server
async def test_the_error_callbacks_hear_of_a_token_that_expired_unrenewed() -> None:
    clock = [1_000_000.0]
    source = FlakySource(["oid-a"], clock, failing={2, 3, 4, 5})
    source.ttl_s = 10
    sleeps = Sleeps()
    provider = EntraRedisCredentials(source, clock=lambda: clock[0], sleep=sleeps)
    errors: list[Exception] = []
    provider.on_error(errors.append)
    try:
        await provider.get_credentials_async()
        waits = []
        for _ in range(4):  # half its life, then 1, 2 and 5 s: expired at the fourth failure
            wait, go = await sleeps.calls.get()
            waits.append(wait)
            clock[0] += wait
            go.set_result(None)
        await sleeps.calls.get()
        assert waits == [5.0, 1.0, 2.0, 5.0]
        assert len(errors) == 1 and "no Entra ID token" in str(errors[0])
    finally:
        await provider.aclose()
