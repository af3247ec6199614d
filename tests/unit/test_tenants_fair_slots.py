"""The fair-share decision driving M non-preemptive slots, on an injected clock.

A pure event simulation of what the workers do: a freed slot goes to the head of
`fair.plan`'s order; the call is charged its expected tokens when it starts (as
pending; `fair.Expectation`, as the worker's accounting does) and settled with its
actual tokens when it ends. Shares are measured as
`ptu bench fairness` measures them (`bench.scenarios.fairness_shares.spread_shares`):
tokens spread over each call's run, in the window in which both tenants had
lines waiting (B's arrival to the start of B's last call).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from bench.scenarios.fairness_shares import Run, spread_shares
from orchestrator.tenants import fair


@dataclass
class Slots:
    """M slots shared by tenants; `clock` is the simulated time."""

    slots: int
    weights: dict[str, float]
    seed: int = 0
    clock: float = 0.0
    virtual: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    floor: float = 0.0
    waiting: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    running: list[tuple[float, int, str, int, int, float, int]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    expect: fair.Expectation = field(default_factory=fair.Expectation)
    _seq: int = 0

    def submit(self, tenant: str, n: int, tokens: int, estimate: int, duration_s: float) -> None:
        """`n` lines of `tokens` (charged `estimate` at the start), each about `duration_s`."""
        self.waiting.setdefault(tenant, []).extend([(tokens, estimate, duration_s)] * n)
        self._fill()

    def run_until(self, until: float) -> None:
        """Process ends (and the starts they allow) up to `until`."""
        while self.running and self.running[0][0] <= until:
            self._end()
        self.clock = max(self.clock, until)

    def run_until_done(self, tenant: str) -> None:
        """Until `tenant` has nothing waiting or running."""
        while self.waiting.get(tenant) or any(r[2] == tenant for r in self.running):
            self._end()

    def _end(self) -> None:
        ended, _, tenant, tokens, charged, started, estimate = heapq.heappop(self.running)
        self.clock = ended
        weight = self.weights[tenant]
        self.virtual[tenant] += fair.charge(tokens - charged, weight)
        self.pending[tenant] -= fair.charge(charged, weight)
        self.expect.learn(tenant, estimate, tokens)
        self.runs.append(Run(tenant, started, ended, tokens))
        self._fill()

    def _fill(self) -> None:
        rnd = random.Random(self.seed * 100_003 + self._seq)
        while len(self.running) < self.slots:
            active = [t for t, lines in self.waiting.items() if lines]
            decision = fair.plan(active, self.virtual, self.floor, self.pending)
            self.virtual.update(decision.lifts)
            self.floor = decision.floor
            if not decision.order:
                return
            tenant = decision.order[0]
            tokens, estimate, duration_s = self.waiting[tenant].pop(0)
            weight, charged = self.weights[tenant], self.expect.expected(tenant, estimate)
            self.virtual[tenant] = self.virtual.get(tenant, 0.0) + fair.charge(charged, weight)
            self.pending[tenant] = self.pending.get(tenant, 0.0) + fair.charge(charged, weight)
            self._seq += 1
            took = duration_s * (0.7 + 0.6 * rnd.random())
            entry = (self.clock + took, self._seq, tenant, tokens, charged, self.clock, estimate)
            heapq.heappush(self.running, entry)


def _beside(
    slots: int,
    big: int,
    small: int,
    weight_b: float,
    sizes: dict[str, int],
    seed: int,
    unused: int = 20,
) -> tuple[float, float]:
    """B's share while both had lines waiting, and B's makespan, beside A's batch; every
    call is estimated at `unused` tokens more than it uses (`max_tokens` it leaves)."""
    sim = Slots(slots, {"a": 1.0, "b": weight_b}, seed=seed)
    sim.submit("b", 5, sizes["b"], sizes["b"] + unused, 0.25 * sizes["b"] / 60)
    sim.run_until_done("b")
    sim.submit("a", big, sizes["a"], sizes["a"] + unused, 0.25 * sizes["a"] / 60)
    sim.run_until(sim.clock + 3.0)
    arrived = sim.clock
    sim.submit("b", small, sizes["b"], sizes["b"] + unused, 0.25 * sizes["b"] / 60)
    sim.run_until_done("b")
    last_start = max(r.started for r in sim.runs if r.tenant == "b")
    runs = sim.runs + [Run(r[2], r[5], r[0], r[3]) for r in sim.running]
    share = spread_shares(runs, arrived, last_start)["b"]
    return share, max(r.ended for r in sim.runs if r.tenant == "b") - arrived


def _alone(slots: int, small: int, size: int, seed: int) -> float:
    sim = Slots(slots, {"b": 1.0}, seed=seed)
    sim.submit("b", small, size, size + 20, 0.25 * size / 60)
    sim.run_until_done("b")
    return max(r.ended for r in sim.runs)


@pytest.mark.parametrize(
    ("slots", "small", "weight_b", "sizes", "unused"),
    [
        (10, 20, 1.0, {"a": 60, "b": 60}, 20),
        (10, 20, 3.0, {"a": 60, "b": 60}, 20),
        # calls use far fewer tokens than their estimate (max_tokens mostly unused)
        (10, 20, 3.0, {"a": 40, "b": 40}, 60),
        (10, 20, 1.0, {"a": 40, "b": 40}, 60),
        (10, 60, 3.0, {"a": 30, "b": 90}, 100),
        (10, 20, 2.0, {"a": 60, "b": 60}, 20),
        (10, 200, 3.0, {"a": 60, "b": 60}, 20),
        (4, 20, 1.0, {"a": 60, "b": 60}, 20),
        (4, 20, 3.0, {"a": 60, "b": 60}, 20),
        (20, 40, 1.0, {"a": 60, "b": 60}, 20),
        (20, 60, 3.0, {"a": 60, "b": 60}, 20),
        # charged in tokens: B's shorter lines get B more lines, not more tokens
        (10, 60, 1.0, {"a": 120, "b": 40}, 20),
        (10, 60, 3.0, {"a": 40, "b": 120}, 20),
    ],
)
def test_token_share_while_both_wait_follows_weights(
    slots: int, small: int, weight_b: float, sizes: dict[str, int], unused: int
) -> None:
    expected = weight_b / (1.0 + weight_b)
    got = [_beside(slots, 2000, small, weight_b, sizes, seed, unused)[0] for seed in range(6)]
    mean = sum(got) / len(got)
    assert abs(mean - expected) <= 0.10 * expected, got


# B has at least twice as many lines as slots: with fewer, alone they run in one round
# and beside A even an ideal fluid half share takes exactly two, leaving no margin
@pytest.mark.parametrize(("slots", "small"), [(10, 20), (10, 60), (4, 20), (20, 40), (5, 40)])
def test_equal_weights_makespan_within_twice_alone(slots: int, small: int) -> None:
    sizes = {"a": 60, "b": 60}
    ratios = [
        _beside(slots, 2000, small, 1.0, sizes, seed)[1] / _alone(slots, small, 60, seed)
        for seed in range(6)
    ]
    assert sum(ratios) / len(ratios) <= 2.0, ratios


def test_newcomer_does_not_take_every_slot_at_equal_weights() -> None:
    # counting the incumbent's calls in flight as not served at all would hand B the
    # first round of freed slots outright; half served, A keeps some of them
    sim = Slots(10, {"a": 1.0, "b": 1.0})
    sim.submit("a", 1000, 60, 60, 0.25)
    sim.run_until(3.0)
    arrived = sim.clock
    sim.submit("b", 100, 60, 60, 0.25)
    sim.run_until(arrived + 0.25)
    starts = [r for r in sim.runs if r.started >= arrived] + [
        Run(r[2], r[5], r[0], r[3]) for r in sim.running if r[5] >= arrived
    ]
    by_b = sum(1 for r in starts if r.tenant == "b")
    assert 0 < len(starts) - by_b < by_b


def test_a_lone_tenant_keeps_every_slot_and_banks_no_credit() -> None:
    sim = Slots(10, {"a": 1.0, "b": 1.0})
    sim.submit("b", 30, 60, 60, 0.25)
    sim.run_until_done("b")  # b alone: every slot
    assert max(len([r for r in sim.runs if r.started <= t < r.ended]) for t in (0.1, 0.3)) == 10
    sim.submit("a", 10_000, 60, 60, 0.25)
    sim.run_until(sim.clock + 30.0)  # a alone for a long time, b idle
    arrived = sim.clock
    sim.submit("b", 400, 60, 60, 0.25)
    sim.run_until(arrived + 5.0)
    after = [r for r in sim.runs if r.started >= arrived + 1.0]
    share_b = sum(1 for r in after if r.tenant == "b") / len(after)
    assert 0.4 <= share_b <= 0.6  # its share, not a burst to make up for its idle time


@pytest.mark.parametrize(
    ("runs", "window", "share_b"),
    [
        # wholly inside: plain token counts
        ([Run("a", 1, 2, 100), Run("b", 1, 2, 300)], (0, 10), 0.75),
        # a call half inside the window counts half its tokens
        ([Run("a", 0, 2, 100), Run("b", 1, 2, 50)], (1, 5), 0.5),
        # outside the window: not counted at all
        ([Run("a", 0, 1, 100), Run("b", 2, 3, 100), Run("a", 6, 7, 999)], (0.5, 5), 2 / 3),
    ],
)
def test_spread_shares(runs: list[Run], window: tuple[float, float], share_b: float) -> None:
    assert spread_shares(runs, *window)["b"] == pytest.approx(share_b)
