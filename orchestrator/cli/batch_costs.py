"""`ptu usage --by batch`: each batch created in the period, where its lines ran and what
it cost (the PTU's share, which costs nothing more, and each overflow target's).

Reads what the batch's finaliser wrote (`usage_by_target` on the batch hash: lines,
tokens and cost per target, `ingress/batch/deadline/cost`); a batch not finalised yet
shows its status and no figures. Batches are found through each tenant's index
(`keys.tenant_batches`, scored by creation), for the tenants the usage ledger and the
configuration know.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from orchestrator.core import keys
from orchestrator.core.boundary import redis_boundary
from orchestrator.core.redis_replies import text

COLUMNS = ("tenant", "status", "lines", "ptu_tokens", "overflow_tokens", "cost", "targets")


@redis_boundary("batch costs")
async def batch_rows(
    redis: aioredis.Redis, tenants: list[str], since: float, until: float
) -> list[dict[str, Any]]:
    """One row per batch created in [since, until), newest last."""
    found = set(tenants) | {text(t) for t in await redis.smembers(keys.USAGE_TENANTS)}
    rows: list[dict[str, Any]] = []
    for tenant in sorted(found):
        for raw in await redis.zrangebyscore(keys.tenant_batches(tenant), since, until):
            batch_id = text(raw)
            f = {text(k): text(v) for k, v in (await redis.hgetall(keys.batch(batch_id))).items()}
            if f:
                rows.append({"batch": batch_id, **row_of(tenant, f)})
    return rows


def row_of(tenant: str, f: dict[str, str]) -> dict[str, Any]:
    """A batch's row from its fields (pure)."""
    usage = json.loads(f["usage_by_target"]) if f.get("usage_by_target") else None
    targets: dict[str, dict[str, Any]] = (usage or {}).get("targets", {})
    ptu = f.get("deployment", "")

    def tokens(row: dict[str, Any]) -> int:
        return int(row.get("prompt_tokens", 0) + row.get("completion_tokens", 0))

    return {
        "tenant": tenant,
        "status": f.get("status", ""),
        "lines": int(f.get("total") or 0),
        "ptu_tokens": sum(tokens(r) for k, r in targets.items() if k == ptu),
        "overflow_tokens": sum(tokens(r) for k, r in targets.items() if k != ptu),
        "cost": (usage or {}).get("total_cost", 0.0),
        "targets": " ".join(f"{k}:{int(r.get('lines', 0))}" for k, r in sorted(targets.items())),
    }
