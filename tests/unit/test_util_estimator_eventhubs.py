"""EventHubsEstimator batch handling with in-memory seams, and the CLI's choice of estimator."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
from azure.eventhub import EventData

from orchestrator.core.errors import ConfigError, MissingDependencyError, UtilisationUnavailable
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig, load_settings
from orchestrator.estimator.eventhubs import EventHubsEstimator
from orchestrator.estimator.main import make_estimator
from orchestrator.estimator.redis_stream import Estimator
from orchestrator.utilisation.estimate.store import EstimateStore
from tests.integration.eventhubs_fakes import FakeHub

NOW = 1_800_000_000.0


class FakeStore:
    """Records what the estimator does, in order; `fail` makes record() raise."""

    def __init__(self, *, fail: bool = False, heartbeat_fails: bool = False) -> None:
        self.max_age_s = 5.0
        self.deployments = ["d"]
        self.fail = fail
        self.heartbeat_fails = heartbeat_fails
        self.calls: list[tuple[str, Any]] = []

    async def record(self, event: TokenEvent) -> None:
        if self.fail:
            raise UtilisationUnavailable("estimate d: record failed: connection refused")
        self.calls.append(("record", event))

    async def heartbeat(self, applied: str | None = None) -> None:
        if self.heartbeat_fails:
            raise UtilisationUnavailable("estimate heartbeat failed")
        self.calls.append(("heartbeat", applied))


class FakeContext:
    def __init__(self, pid: str, calls: list[tuple[str, Any]]) -> None:
        self.partition_id = pid
        self.calls = calls

    async def update_checkpoint(self, event: EventData) -> None:
        self.calls.append(("checkpoint", (self.partition_id, event.sequence_number)))


def ctx(pid: str, store: FakeStore) -> Any:
    return FakeContext(pid, store.calls)


class StubClient:
    eventhub_name = "ptu-token-events"


def ours(rid: str, phase: str = "admit", prompt: int = 100) -> str:
    return TokenEvent(
        request_id=rid, deployment="d", phase=phase, timestamp=NOW, prompt_tokens=prompt
    ).model_dump_json()


def apim(rid: str, prompt: int = 100, response: int = 50) -> str:
    return json.dumps(
        {"id": rid, "timestamp": "2027-01-15T12:00:00.0000000Z", "deploymentName": "d",
         "promptTokens": prompt, "responseTokens": response, "totalTokens": prompt + response}
    )  # fmt: skip


def events(*bodies: str | bytes, age_s: float = 0.5, pid: str = "0") -> list[EventData]:
    hub = FakeHub(partitions=int(pid) + 1)
    return [hub.append(pid, b, enqueued_at=NOW - age_s) for b in bodies]


def estimator(store: FakeStore, **kw: Any) -> EventHubsEstimator:
    client: Any = StubClient()
    return EventHubsEstimator(client, store, clock=lambda: NOW, **kw)  # type: ignore[arg-type]


def kinds(store: FakeStore) -> list[str]:
    return [kind for kind, _ in store.calls]


async def test_batch_is_applied_then_checkpointed_at_its_last_event() -> None:
    store = FakeStore()
    est = estimator(store)
    await est.handle_batch(ctx("0", store), events(ours("a"), apim("b"), ours("c")))
    assert kinds(store) == ["record", "record", "record", "checkpoint", "heartbeat"]
    recorded = [e for kind, e in store.calls if kind == "record"]
    assert [(e.request_id, e.phase) for e in recorded] == [
        ("a", "admit"), ("b", "complete"), ("c", "admit"),
    ]  # fmt: skip
    assert (recorded[1].prompt_tokens, recorded[1].completion_tokens) == (100, 50)
    assert ("checkpoint", ("0", 2)) in store.calls
    assert store.calls[-1] == ("heartbeat", None)  # no Redis stream id to report
    assert (est.applied, est.skipped, est.batches) == (3, 0, 1)


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"deploymentName": "d", "promptTokens": 5}',  # APIM shape without id
        '{"id": "x", "deploymentName": "d", "promptTokens": "many"}',
        '{"id": "x", "deploymentName": "d", "promptTokens": -5}',
        '{"id": "x", "deploymentName": "d", "promptTokens": [1]}',
        '{"request_id": "x"}',  # our shape, incomplete
        b"\xff\xfe\x00binary",
        "[" * 100_000,  # nested past the parser's recursion limit
        "",
    ],
)
async def test_poison_event_is_skipped_and_passed(body: str | bytes) -> None:
    store = FakeStore()
    est = estimator(store)
    await est.handle_batch(ctx("0", store), events(body, ours("ok")))
    assert kinds(store) == ["record", "checkpoint", "heartbeat"]
    assert store.calls[0][1].request_id == "ok"
    assert store.calls[1] == ("checkpoint", ("0", 1))
    assert (est.applied, est.skipped) == (1, 1)


@pytest.mark.parametrize(("age_s", "applied"), [(299.0, 1), (301.0, 0), (-2.0, 1)])
async def test_events_older_than_the_horizon_are_passed_unapplied(
    age_s: float, applied: int
) -> None:
    store = FakeStore()
    est = estimator(store, horizon_s=300.0, max_lag_s=1000.0)
    await est.handle_batch(ctx("0", store), events(ours("a"), age_s=age_s))
    assert (est.applied, est.skipped) == (applied, 1 - applied)
    assert "checkpoint" in kinds(store)


async def test_redis_failure_raises_before_the_checkpoint() -> None:
    store = FakeStore(fail=True)
    est = estimator(store)
    with pytest.raises(UtilisationUnavailable):
        await est.handle_batch(ctx("0", store), events(ours("a"), ours("b")))
    assert store.calls == []  # neither checkpoint nor heartbeat: the batch comes back


async def test_heartbeat_failure_is_logged_not_raised() -> None:
    store = FakeStore(heartbeat_fails=True)
    est = estimator(store)
    await est.handle_batch(ctx("0", store), events(ours("a")))
    assert kinds(store) == ["record", "checkpoint"]


# (partition, age of the batch's last event or None for an empty batch) -> heartbeat?
HEARTBEAT_TABLE = [
    ([("0", 0.5)], [True]),
    ([("0", None)], [True]),
    ([("0", 4.9)], [True]),
    ([("0", 6.0)], [False]),  # behind the hub by more than the store's max age
    ([("0", 6.0), ("0", 0.2)], [False, True]),  # caught up again
    ([("0", 6.0), ("1", 0.2)], [False, False]),  # another owned partition still lags
    ([("0", 6.0), ("0", None)], [False, True]),  # idle: nothing waits any more
]


@pytest.mark.parametrize(("batches", "beats"), HEARTBEAT_TABLE)
async def test_heartbeat_only_while_every_owned_partition_is_caught_up(
    batches: list[tuple[str, float | None]], beats: list[bool]
) -> None:
    store = FakeStore()
    est = estimator(store)
    got: list[bool] = []
    for pid, age in batches:
        before = kinds(store).count("heartbeat")
        batch = [] if age is None else events(ours(f"r{len(got)}"), age_s=age, pid=pid)
        await est.handle_batch(ctx(pid, store), batch)
        got.append(kinds(store).count("heartbeat") > before)
    assert got == beats


async def test_a_lost_partition_no_longer_holds_heartbeats_back() -> None:
    store = FakeStore()
    est = estimator(store)
    await est.handle_batch(ctx("0", store), events(ours("a"), age_s=60))
    assert "lag_s=60.0" in repr(est)
    await est.on_partition_close(ctx("0", store), "OWNERSHIP_LOST")
    await est.handle_batch(ctx("1", store), [])
    assert kinds(store)[-1] == "heartbeat"
    assert repr(est) == (
        "<EventHubsEstimator eventhub=ptu-token-events partitions=1 applied=1 skipped=0 lag_s=0.0>"
    )


# -- the CLI picks the estimator of the configured queue backend ------------------------

CONN = "Endpoint=sb://fake.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v"
DEPLOYMENTS = [DeploymentConfig(name="d", model="custom", ptus=10, input_tpm_per_ptu=600)]


def cli_args() -> argparse.Namespace:
    return argparse.Namespace(consumer="c1", horizon_s=120.0)


async def test_cli_uses_the_redis_stream_estimator_by_default() -> None:
    client = aioredis.Redis()  # never connected: construction does no I/O
    store = EstimateStore(client, DEPLOYMENTS, window_s=60, max_age_s=5)
    est = make_estimator(cli_args(), load_settings(), client, store)
    assert isinstance(est, Estimator) and est.consumer == "c1"
    await client.aclose()


@pytest.mark.parametrize(
    ("env", "hub"),
    [
        ({"eventhub_connection_string": CONN}, "ptu-token-events"),
        ({"eventhub_connection_string": CONN, "eventhub_token_events_name": "tok"}, "tok"),
        ({"eventhub_namespace": "ns.servicebus.windows.net"}, "ptu-token-events"),
    ],
)
async def test_cli_uses_the_event_hubs_estimator_with_the_eventhubs_backend(
    env: dict[str, str], hub: str
) -> None:
    client = aioredis.Redis()
    store = EstimateStore(client, DEPLOYMENTS, window_s=60, max_age_s=1.5)
    settings = load_settings(queue_backend="eventhubs", **env)
    est = make_estimator(cli_args(), settings, client, store)
    assert isinstance(est, EventHubsEstimator)
    assert est.eventhub == hub
    assert (est._horizon_s, est._max_wait_s, est._max_lag_s) == (120.0, 0.5, 1.5)
    assert len(est._closers) == ("eventhub_namespace" in env)  # the credential to close
    await est.close()
    await client.aclose()


async def test_cli_eventhubs_backend_needs_a_namespace() -> None:
    client = aioredis.Redis()
    store = EstimateStore(client, DEPLOYMENTS, window_s=60, max_age_s=5)
    with pytest.raises(ConfigError, match="PTU_EVENTHUB_NAMESPACE"):
        make_estimator(cli_args(), load_settings(queue_backend="eventhubs"), client, store)
    await client.aclose()


async def test_cli_eventhubs_backend_without_sdk_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "azure.eventhub", None)
    client = aioredis.Redis()
    store = EstimateStore(client, DEPLOYMENTS, window_s=60, max_age_s=5)
    settings = load_settings(queue_backend="eventhubs", eventhub_connection_string=CONN)
    with pytest.raises(MissingDependencyError, match=r"azure-eventhub.*\[azure\]"):
        make_estimator(cli_args(), settings, client, store)
    await client.aclose()
