"""The fair-share decision from tables, and a simulated schedule with an injected clock."""

from __future__ import annotations

import pytest

from orchestrator.tenants import fair


@pytest.mark.parametrize(
    ("active", "virtual", "floor", "order", "lifts", "new_floor"),
    [
        # nobody backlogged: nothing to do, the floor stays
        ([], {"a": 5.0}, 2.0, [], {}, 2.0),
        # a lone tenant is served, whatever its past
        (["a"], {"a": 900.0}, 0.0, ["a"], {}, 900.0),
        # least virtual service first
        (["a", "b"], {"a": 10.0, "b": 4.0}, 0.0, ["b", "a"], {}, 4.0),
        # ties go by name, so every worker computes the same order
        (["b", "a"], {"a": 3.0, "b": 3.0}, 0.0, ["a", "b"], {}, 3.0),
        # a tenant back from idle is lifted to the floor: it banks no credit
        (["a", "b"], {"a": 1000.0, "b": 10.0}, 990.0, ["b", "a"], {"b": 990.0}, 990.0),
        # a tenant never seen starts at the floor
        (["a", "new"], {"a": 50.0}, 40.0, ["new", "a"], {"new": 40.0}, 40.0),
        # the floor never goes down, even when the least-served tenant is below it
        (["a"], {"a": 10.0}, 20.0, ["a"], {"a": 20.0}, 20.0),
        # idle tenants are not in the order at all, so their share goes to the others
        (["a", "c"], {"a": 7.0, "b": 1.0, "c": 8.0}, 5.0, ["a", "c"], {}, 7.0),
    ],
)
def test_plan(
    active: list[str],
    virtual: dict[str, float],
    floor: float,
    order: list[str],
    lifts: dict[str, float],
    new_floor: float,
) -> None:
    decision = fair.plan(active, virtual, floor)
    assert decision.order == order
    assert decision.lifts == lifts
    assert decision.floor == new_floor


@pytest.mark.parametrize(
    ("tokens", "weight", "cost"), [(300, 1, 300), (300, 3, 100), (-60, 2, -30)]
)
def test_charge_is_tokens_per_weight(tokens: float, weight: float, cost: float) -> None:
    assert fair.charge(tokens, weight) == cost


def _serve(
    weights: dict[str, float],
    sizes: dict[str, int],
    backlog: dict[str, int],
    arrivals: dict[int, str],
    steps: int,
) -> dict[str, int]:
    """Run the scheduler one slot per clock tick; returns tokens served per tenant."""
    virtual: dict[str, float] = {}
    floor = 0.0
    served = dict.fromkeys(weights, 0)
    queue = dict(backlog)
    for now in range(steps):
        if now in arrivals:
            queue[arrivals[now]] = queue.get(arrivals[now], 0) + 1_000_000
        active = [t for t, n in queue.items() if n > 0]
        decision = fair.plan(active, virtual, floor)
        virtual.update(decision.lifts)
        floor = decision.floor
        if not decision.order:
            continue
        tenant = decision.order[0]
        queue[tenant] -= 1
        served[tenant] += sizes[tenant]
        virtual[tenant] = virtual.get(tenant, 0.0) + fair.charge(sizes[tenant], weights[tenant])
    return served


@pytest.mark.parametrize(
    ("weights", "sizes"),
    [
        ({"a": 1, "b": 1}, {"a": 100, "b": 100}),
        ({"a": 1, "b": 3}, {"a": 100, "b": 100}),
        # charged in tokens: small requests get more requests, not more tokens
        ({"a": 1, "b": 1}, {"a": 1000, "b": 50}),
        ({"a": 2, "b": 1, "c": 1}, {"a": 80, "b": 400, "c": 120}),
    ],
)
def test_token_shares_follow_weights(weights: dict[str, float], sizes: dict[str, int]) -> None:
    served = _serve(weights, sizes, dict.fromkeys(weights, 1_000_000), {}, 6000)
    total = sum(served.values())
    for tenant, weight in weights.items():
        share = served[tenant] / total
        expected = weight / sum(weights.values())
        assert abs(share - expected) <= 0.02 * expected + max(sizes.values()) / total


def test_a_late_tenant_gets_its_share_at_once_but_no_back_credit() -> None:
    # "a" works alone for 1,000 ticks, then "b" arrives: from then on they alternate
    served = _serve({"a": 1, "b": 1}, {"a": 10, "b": 10}, {"a": 10_000}, {1000: "b"}, 1200)
    assert served["b"] == 100 * 10  # half of the last 200 ticks, not all of them
    assert served["a"] == 1100 * 10


def test_a_lone_tenant_gets_every_slot() -> None:
    served = _serve({"a": 1, "b": 5}, {"a": 10, "b": 10}, {"a": 500}, {}, 500)
    assert served == {"a": 5000, "b": 0}


@pytest.mark.parametrize(
    ("virtual", "pending", "floor", "order", "lifts", "new_floor"),
    [
        # a's 300 in flight are still estimates: the newcomer starts at the floor, below
        # a's 850 (its calls in flight half served), so they count against a
        ({"a": 1000.0}, {"a": 300.0}, 600.0, ["b", "a"], {"b": 600.0}, 600.0),
        # the floor rises to the least service with calls in flight half served
        ({"a": 1000.0, "b": 900.0}, {"a": 300.0}, 0.0, ["b", "a"], {}, 850.0),
        # ... which may be below another tenant's (b's calls in flight weigh too)
        ({"a": 1000.0, "b": 900.0}, {"a": 100.0, "b": 200.0}, 0.0, ["b", "a"], {}, 800.0),
        # no call in flight: the plain floor
        ({"a": 1000.0, "b": 1000.0}, {}, 900.0, ["a", "b"], {}, 1000.0),
    ],
)
def test_plan_floor_counts_calls_in_flight_half_served(
    virtual: dict[str, float],
    pending: dict[str, float],
    floor: float,
    order: list[str],
    lifts: dict[str, float],
    new_floor: float,
) -> None:
    decision = fair.plan(["a", "b"], virtual, floor, pending)
    assert (decision.order, decision.lifts, decision.floor) == (order, lifts, new_floor)


@pytest.mark.parametrize(
    ("seen", "estimate", "expected"),
    [
        # nothing seen yet: the estimate itself
        ([], 100, 100),
        # calls that used 40 of 100: the charge moves towards 40 of every 100 estimated
        ([(100, 40)] * 30, 100, 40),
        ([(100, 40)] * 30, 250, 100),
        # refused or failed calls (nothing used) teach nothing
        ([(100, 0)] * 30, 100, 100),
        # bounded: never less than 1 token, never more than twice the estimate
        ([(100, 1)] * 100, 10, 1),
        ([(10, 900)] * 100, 100, 200),
    ],
)
def test_expectation_scales_estimates_by_what_calls_used(
    seen: list[tuple[int, int]], estimate: int, expected: int
) -> None:
    expect = fair.Expectation()
    for est, actual in seen:
        expect.learn("a", est, actual)
    assert expect.expected("a", estimate) == expected
    assert expect.expected("other", estimate) == estimate  # per tenant
