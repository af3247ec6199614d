"""PTU pools: provisioned deployments of one model that clients address by one name.

Every `PTU_DEPLOYMENTS` entry with the same `pool` is a member of that pool. The pool's
name works wherever a deployment name does; the members keep their own resource, PTU
count, thresholds and price. Low-priority work for a pool (or for a member named
directly) waits in one queue, keyed by the pool's name (`queue_key`), which every
member's lane in `ptu worker` drains at its own throttle's pace. High-priority calls go
to the member with the most headroom (`rank`), the others and the chosen member's own
spillover chain behind it.

`rank` is the pure choice: headroom is what is left below the member's upper threshold,
in input-token equivalents per minute (`(upper - u) * capacity`), so a large member that
is half full ranks above a small one that is half full. Only a fresh reading counts; a
member with a stale or missing reading comes after every fresh one, and a member whose
breaker is open after those. Ties keep the configured order, which is the preference:
list the members a caller should use first (its own region's) first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.core.deployments import DeploymentConfig


@dataclass(frozen=True, slots=True)
class Pool:
    """A pool's name and its members, in configured (preference) order."""

    name: str
    members: tuple[DeploymentConfig, ...]

    @property
    def model(self) -> str:
        """The one model every member serves."""
        return self.members[0].model

    @property
    def member_names(self) -> list[str]:
        """The members' deployment names, in preference order."""
        return [m.name for m in self.members]


def pools_of(deployments: Sequence[DeploymentConfig]) -> dict[str, Pool]:
    """Every pool of `deployments` by name, members in configured order."""
    members: dict[str, list[DeploymentConfig]] = {}
    for d in deployments:
        if d.pool is not None:
            members.setdefault(d.pool, []).append(d)
    return {name: Pool(name, tuple(ms)) for name, ms in members.items()}


def queue_key(d: DeploymentConfig) -> str:
    """The name a deployment's low-priority queue is kept under: its pool's, else its own."""
    return d.pool if d.pool is not None else d.name


def check_pools(deployments: Sequence[DeploymentConfig]) -> str | None:
    """What is wrong with the pools of `deployments`, in one line; None when nothing is."""
    names = {d.name for d in deployments}
    for pool in pools_of(deployments).values():
        if pool.name in names:
            return (
                f"pool {pool.name!r} has the name of a deployment: clients could not tell "
                "which one they call; rename the pool"
            )
        for m in pool.members:
            if m.kind != "provisioned":
                return (
                    f"pool {pool.name!r}: member {m.name!r} is a standard deployment; a pool's "
                    "members are provisioned (PTU) deployments (list it in 'spillover')"
                )
        models = sorted({m.model for m in pool.members})
        if len(models) > 1:
            return f"pool {pool.name!r} mixes models ({', '.join(models)}): one model per pool"
    return None


@dataclass(frozen=True, slots=True)
class MemberView:
    """What the choice knows of one member: its capacity, threshold and reading."""

    name: str
    capacity_tpm: float
    upper: float
    utilisation: float | None
    """The member's calibrated estimate (fraction); None when stale or unknown."""
    open: bool = False
    """Its breaker is open: it is refusing calls."""

    @property
    def headroom_tpm(self) -> float | None:
        """Input-token equivalents per minute left below the upper threshold (None: unknown)."""
        if self.utilisation is None:
            return None
        return (self.upper - self.utilisation) * self.capacity_tpm


def rank(members: Sequence[MemberView]) -> list[str]:
    """The members in the order a high-priority call tries them.

    Fresh and not open, most headroom first (ties keep the configured order); then those
    without a fresh reading, in configured order; then those whose breaker is open.
    """
    order = {m.name: i for i, m in enumerate(members)}

    def key(m: MemberView) -> tuple[int, float, int]:
        headroom = m.headroom_tpm
        if m.open:
            return (2, 0.0, order[m.name])
        if headroom is None:
            return (1, 0.0, order[m.name])
        return (0, -headroom, order[m.name])

    return [m.name for m in sorted(members, key=key)]


def pool_of_names(deployments: Sequence[DeploymentConfig]) -> Mapping[str, str]:
    """Member deployment name → its pool's name."""
    return {d.name: d.pool for d in deployments if d.pool is not None}
