"""Weighted fair share of a deployment's low-priority capacity: the pure decision.

Each tenant has a *virtual service* `v`: the tokens its low-priority calls used,
divided by its weight. The next call goes to the backlogged tenant with the least
`v` (ties by name), so over any period in which several tenants have work their
token counts approach the ratio of their weights, whatever the size of their
requests: the charge is in tokens, not requests. This is deficit round robin with
an infinitely small quantum (start-time fair queueing).

An idle tenant must not bank credit: one idle all night would otherwise return
with a tiny `v` and lock the others out until it caught up. So the system keeps a
`floor`, never decreasing; a tenant that becomes backlogged below it is lifted to
it. It then competes from "now": it gets its share at once, but no more. With one
backlogged tenant, it gets every slot.

Calls are charged when they start (prompt estimate + `max_tokens`) and settled
with the actual tokens when they end, so concurrent slots do not all go to one
tenant before its first call finishes. The part of `v` still only estimated (calls
in flight) is `pending`. The floor is the least service among backlogged tenants
counting their calls in flight as half served (`IN_FLIGHT_SERVED`): calls run
non-preemptively, so a newcomer finds every slot held by the others' calls, which
are on average half done. Starting it level with that service gives it the freed
slots until it has caught up with what an ideal fluid share (every backlogged
tenant served at once by weight) would have given it since it arrived: no less
(lifting it to the others' full estimates would let their calls in flight count
for nothing against them), and no more (counting their calls in flight as not
served at all would hand it a whole round of their calls as credit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

IN_FLIGHT_SERVED = 0.5
"""The part of a call in flight taken as already served when the floor is set: calls in
flight are on average half done (their starts are spread over one call duration)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What one scheduling decision says."""

    order: list[str]
    """Backlogged tenants, the one to serve first at the head."""
    lifts: dict[str, float]
    """Tenants whose virtual service rises to the floor (they were idle)."""
    floor: float
    """The new floor."""


def plan(
    active: Iterable[str],
    virtual: Mapping[str, float],
    floor: float,
    pending: Mapping[str, float] | None = None,
) -> Plan:
    """Order the backlogged tenants `active` for service, given each one's virtual service
    (`pending` of it still estimated, for calls in flight)."""
    pending = pending or {}
    current: dict[str, float] = {}
    lifts: dict[str, float] = {}
    for tenant in active:
        v = virtual.get(tenant, 0.0)
        if v < floor:
            lifts[tenant] = floor
            v = floor
        current[tenant] = v
    order = sorted(current, key=lambda t: (current[t], t))
    unserved = 1.0 - IN_FLIGHT_SERVED
    served = [current[t] - unserved * max(0.0, pending.get(t, 0.0)) for t in order]
    new_floor = max(floor, min(served)) if order else floor
    return Plan(order=order, lifts=lifts, floor=new_floor)


def charge(tokens: float, weight: float) -> float:
    """The virtual service `tokens` cost a tenant of `weight`."""
    return tokens / weight


RATIO_ALPHA = 0.2
"""Weight of the newest call in the moving average of actual over estimated tokens."""
RATIO_BOUNDS = (0.05, 2.0)


class Expectation:
    """The tokens a call is expected to use: its estimate (prompt + `max_tokens`) times
    the moving average of actual over estimated tokens seen for its tenant.

    Clients ask for more `max_tokens` than they use. Charged at its estimate, a call
    would be mostly refunded when it ends: a tenant's calls in flight would look
    larger than they are, and its virtual service would fall as they end, handing it
    back slots from a tenant that has just arrived.
    """

    def __init__(self) -> None:
        self._ratio: dict[str, float] = {}

    def expected(self, tenant: str, estimate: int) -> int:
        """The charge for a call estimated at `estimate` tokens (at least 1)."""
        return max(1, round(estimate * self._ratio.get(tenant, 1.0)))

    def learn(self, tenant: str, estimate: int, actual: int) -> None:
        """Fold in a call that was answered."""
        if estimate <= 0 or actual <= 0:
            return
        low, high = RATIO_BOUNDS
        seen = min(high, max(low, actual / estimate))
        ratio = self._ratio.get(tenant, 1.0)
        self._ratio[tenant] = ratio + RATIO_ALPHA * (seen - ratio)
