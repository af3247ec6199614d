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
in flight) is `pending`; the floor is the least *settled* service (`v - pending`)
among backlogged tenants, so a newcomer starts level with what the others have
been served, and their calls in flight count against them as they should (lifting
it to their estimates would hand them that many tokens of advantage).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


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
    settled = [current[t] - max(0.0, pending.get(t, 0.0)) for t in order]
    new_floor = max(floor, min(settled)) if order else floor
    return Plan(order=order, lifts=lifts, floor=new_floor)


def charge(tokens: float, weight: float) -> float:
    """The virtual service `tokens` cost a tenant of `weight`."""
    return tokens / weight
