"""PTU pools: the pure member choice, the pool's configuration and how the pieces see it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingress.chat.governance import rules
from ingress.chat.pool import PoolRouter
from ingress.chat.targets import targets
from orchestrator.core.errors import ConfigError
from orchestrator.core.pools import MemberView, check_pools, pools_of, queue_key, rank
from orchestrator.core.settings import DeploymentConfig, Settings, load_settings
from orchestrator.queues.factory import pool_queues
from orchestrator.utilisation.static import StaticSource
from orchestrator.worker.main import select_deployments
from tests.support.clock import FakeClock

EAST = {"name": "east", "model": "gpt-4o", "ptus": 15, "pool": "gpt-4o-pool"}
WEST = {"name": "west", "model": "gpt-4o", "ptus": 10, "pool": "gpt-4o-pool"}
STD = {"name": "std", "model": "gpt-4o", "kind": "standard", "tpm": 1000}


def view(name: str, u: float | None, *, cap: float = 1000.0, upper: float = 0.9, **kw: Any):
    return MemberView(name, cap, upper, u, **kw)


@pytest.mark.parametrize(
    ("members", "order"),
    [
        # most headroom first: (upper - u) * capacity
        ([view("a", 0.8), view("b", 0.2)], ["b", "a"]),
        # a larger member half full has more room than a smaller one half full
        ([view("a", 0.5, cap=600), view("b", 0.5, cap=900)], ["b", "a"]),
        # but not when it is much fuller
        ([view("a", 0.1, cap=600), view("b", 0.8, cap=900)], ["a", "b"]),
        # ties keep the configured order (the preference)
        ([view("a", 0.3), view("b", 0.3), view("c", 0.3)], ["a", "b", "c"]),
        # a stale (None) reading comes after every fresh one, even a full one
        ([view("a", None), view("b", 0.95)], ["b", "a"]),
        # an open breaker comes last, after unknown readings
        ([view("a", 0.0, open=True), view("b", None), view("c", 0.5)], ["c", "b", "a"]),
        # per-member upper thresholds count
        ([view("a", 0.5, upper=0.6), view("b", 0.5, upper=0.9)], ["b", "a"]),
        ([view("a", None), view("b", None)], ["a", "b"]),
    ],
)
def test_rank_by_headroom_skipping_stale_and_open(
    members: list[MemberView], order: list[str]
) -> None:
    assert rank(members) == order


def test_rank_is_monotone_in_utilisation() -> None:
    """Raising one member's level never moves it ahead of another."""
    for u in [x / 20 for x in range(21)]:
        for v in [x / 20 for x in range(21)]:
            first = rank([view("a", u), view("b", v)])[0]
            assert first == ("a" if u <= v else "b"), (u, v)


@pytest.mark.parametrize(
    ("deployments", "line"),
    [
        (
            [EAST, {**STD, "pool": "gpt-4o-pool"}],
            "PTU_DEPLOYMENTS: pool 'gpt-4o-pool': member 'std' is a standard deployment",
        ),
        (
            [EAST, {**WEST, "model": "gpt-4o-mini"}],
            "PTU_DEPLOYMENTS: pool 'gpt-4o-pool' mixes models (gpt-4o, gpt-4o-mini)",
        ),
        (
            [EAST, {**WEST, "pool": "east"}],
            "PTU_DEPLOYMENTS: pool 'east' has the name of a deployment",
        ),
        ([{**EAST, "pool": ""}], "PTU_DEPLOYMENTS [0.pool]: String should have at least 1"),
        (
            [{**EAST, "pool": ["a", "b"]}],
            "PTU_DEPLOYMENTS [0.pool]: Input should be a valid string",
        ),
    ],
)
def test_pool_mistakes_stop_start_up_in_one_line(
    monkeypatch: pytest.MonkeyPatch, deployments: list[dict[str, object]], line: str
) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps(deployments))
    assert_one_line(line)


def test_pools_need_the_redis_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps([EAST, WEST]))
    monkeypatch.setenv("PTU_QUEUE_BACKEND", "eventhubs")
    assert_one_line("PTU_DEPLOYMENTS: PTU pools need PTU_QUEUE_BACKEND=redis (not eventhubs)")


def assert_one_line(line: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(line), message
    assert "\n" not in message


def settings(*entries: dict[str, Any], **extra: Any) -> Settings:
    return Settings(deployments=[DeploymentConfig(**e) for e in entries], **extra)


def test_pools_of_keeps_configured_order_and_queue_key() -> None:
    s = settings(WEST, STD, EAST, {**EAST, "name": "solo", "pool": None})
    assert check_pools(s.deployments) is None
    (pool,) = pools_of(s.deployments).values()
    assert (pool.name, pool.member_names, pool.model) == ("gpt-4o-pool", ["west", "east"], "gpt-4o")
    assert [queue_key(d) for d in s.deployments] == ["gpt-4o-pool", "std", "gpt-4o-pool", "solo"]


def test_members_and_pool_share_one_queue_made_once() -> None:
    s = settings(EAST, WEST, {**EAST, "name": "solo", "pool": None})
    made: list[str] = []

    def make(name: str) -> Any:
        made.append(name)
        return object()

    queues = pool_queues(s, make, s.deployments)
    assert made == ["gpt-4o-pool", "solo"]
    assert set(queues) == {"east", "west", "gpt-4o-pool", "solo"}
    assert queues["east"] is queues["west"] is queues["gpt-4o-pool"]
    assert queues["solo"] is not queues["east"]


def test_worker_takes_a_pool_name_as_its_members() -> None:
    s = settings(EAST, WEST, {**EAST, "name": "solo", "pool": None})
    assert [d.name for d in select_deployments(s, ["gpt-4o-pool"])] == ["east", "west"]
    assert [d.name for d in select_deployments(s, ["west", "gpt-4o-pool"])] == ["west", "east"]
    with pytest.raises(ConfigError, match="no deployment or pool named 'nope'"):
        select_deployments(s, ["nope"])


def test_pool_target_and_governance_rule() -> None:
    s = settings(
        {**EAST, "spillover": "std"}, {**WEST, "limit_field": "max_completion_tokens"}, STD
    )
    known = targets(s)
    pool = known["gpt-4o-pool"]
    assert [m.name for m in pool.members] == ["east", "west"]
    assert pool.provisioned and pool.speaks_for("west") and not pool.speaks_for("std")
    assert [t.name for t in pool.members[0].spillover] == ["std"]
    # a call may reach any member: the field every member takes
    assert rules(s.deployments)["gpt-4o-pool"].field == "max_completion_tokens"


class Breaker:
    def __init__(self, state: str) -> None:
        self.state = state

    def open_left(self) -> float:
        return 5.0 if self.state == "open" else 0.0


async def test_router_ranks_by_reading_spreads_a_burst_and_adds_the_chain() -> None:
    clock = FakeClock()
    s = settings({**EAST, "spillover": ["std", "west"]}, WEST, STD, estimate_window_s=60.0)
    source = StaticSource({"east": 0.30, "west": 0.30}, clock=clock)
    router = PoolRouter(s, source, {}, clock=clock)
    pool = targets(s)["gpt-4o-pool"]
    # equal levels: east (15 PTU) has more room in tokens
    chain = await router.chain(pool, "chat", 1000, 1000)
    assert [t.name for t in chain] == ["east", "west", "std"]  # west not twice
    # each call routed to east adds its charge until the next read: a burst spreads
    firsts = [(await router.chain(pool, "chat", 20_000, 20_000))[0].name for _ in range(20)]
    assert "west" in firsts and "east" in firsts
    assert source.reads == 2  # within the refresh time, no further reads
    clock.advance(1.0)
    source.set("east", 0.95)
    assert [t.name for t in await router.chain(pool, "chat", 10, 10)][:2] == ["west", "east"]


async def test_router_skips_stale_and_open_members() -> None:
    clock = FakeClock()
    s = settings(EAST, WEST)
    source = StaticSource(clock=clock, max_age_s=5.0)
    source.set("east", 0.0, observed_at=clock.now - 60)  # stale: ranks after a fresh full one
    source.set("west", 0.89)
    pool = targets(s)["gpt-4o-pool"]
    router = PoolRouter(s, source, {}, clock=clock)
    assert [t.name for t in await router.chain(pool, "chat", 10, 10)] == ["west", "east"]
    breakers: Any = {("west", "chat"): Breaker("open")}
    clock.advance(1.0)
    router = PoolRouter(s, source, breakers, clock=clock)
    assert [t.name for t in await router.chain(pool, "chat", 10, 10)] == ["east", "west"]
    # the open breaker is the chat surface's: a Responses call still ranks west by its level
    source.set("east", 0.85)
    source.set("west", 0.0)
    router = PoolRouter(s, source, breakers, clock=clock)
    assert [t.name for t in await router.chain(pool, "responses", 10, 10)] == ["west", "east"]
    assert [t.name for t in await router.chain(pool, "chat", 10, 10)] == ["east", "west"]
    source.clear("east")  # no reading at all: unknown, after a fresh member
    router = PoolRouter(s, source, {}, clock=clock)
    assert [t.name for t in await router.chain(pool, "chat", 10, 10)] == ["west", "east"]
    assert "PoolRouter" in repr(router)


def test_usage_per_member_at_its_own_price_and_by_pool() -> None:
    from orchestrator.cli.usage import period_of, render, summarise
    from orchestrator.tenants.ledger import UsageRow

    h = 3600
    s = settings(
        {**EAST, "ptu_hourly_price": 2.0}, WEST, STD, ptu_hourly_price=1.0
    )  # east at its own price, west at the global one
    used = [
        UsageRow("a", "east", "low", 0, 1000, 0, 500, 10),
        UsageRow("b", "west", "high", 0, 1000, 0, 500, 5),
        UsageRow("b", "std", "high", 0, 700, 0, 300, 2),
    ]
    period = period_of(0, 2 * h)
    by_dep = {x["deployment"]: x for x in summarise(used, "deployment", s, period)}
    assert by_dep["east"]["pool"] == by_dep["west"]["pool"] == "gpt-4o-pool"
    assert by_dep["std"]["pool"] == ""
    assert by_dep["east"]["ptu_cost"] == 2.0 * 15 * 2  # price x ptus x hours
    assert by_dep["west"]["ptu_cost"] == 1.0 * 10 * 2
    by_pool = {x["pool"]: x for x in summarise(used, "pool", s, period)}
    assert set(by_pool) == {"gpt-4o-pool", "std"}
    assert by_pool["gpt-4o-pool"]["requests"] == 15
    assert by_pool["gpt-4o-pool"]["ptu_cost"] == 60.0 + 20.0
    table = render(summarise(used, "deployment", s, period), "table", "deployment", period)
    assert table.splitlines()[1].split()[:2] == ["deployment", "pool"]
    # per tenant: each member's cost split by who used it
    by_tenant = {x["tenant"]: x["ptu_cost"] for x in summarise(used, "tenant", s, period)}
    assert by_tenant == {"a": 60.0, "b": 20.0}


def test_dead_letter_stores_of_a_pool_are_the_pools() -> None:
    from orchestrator.cli.dlq import stores_for

    s = settings(EAST, WEST, {**EAST, "name": "solo", "pool": None}, STD)
    assert stores_for(s, None) == ["gpt-4o-pool", "solo"]
    assert stores_for(s, ["west", "east"]) == ["gpt-4o-pool"]
    assert stores_for(s, ["gpt-4o-pool", "solo"]) == ["gpt-4o-pool", "solo"]
    with pytest.raises(ConfigError, match="no deployment or pool named 'nope'"):
        stores_for(s, ["nope"])
