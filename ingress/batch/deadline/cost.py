"""What a batch cost, by where its lines ran: the PTU's share and each overflow target's.

Tallied by the finaliser from the result documents as it writes the output (`usage` and
`deployment` of each; a line Flex served names `service_tier: "flex"` in its answer). The
PTU's tokens cost nothing more (the PTU is paid by the hour whatever it does); an overflow
target's cost at the prices of its `overflow` entry (per 1M input and output tokens),
Flex's when the answer says Flex served it, else the standard entry's. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator.core.deployments import OverflowEntry
from orchestrator.core.schemas import ResultDocument


class Tally:
    """Lines, tokens and cost per target of one batch."""

    __slots__ = ("_prices", "rows")

    def __init__(self, overflow: Sequence[OverflowEntry]) -> None:
        self._prices: dict[str, dict[str, tuple[float, float]]] = {}
        for e in overflow:
            self._prices.setdefault(e.name, {})[e.kind] = (e.price_in, e.price_out)
        self.rows: dict[str, dict[str, float]] = {}

    def add(self, doc: ResultDocument) -> None:
        """Count one line's result."""
        usage = doc.usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        response: dict[str, Any] = doc.response or {}
        flex = response.get("service_tier") == "flex"
        name = doc.deployment or ""
        label = name + (":flex" if flex else "")
        kinds = self._prices.get(name, {})
        order = ("flex", "standard", "batch") if flex else ("standard", "batch", "flex")
        price_in, price_out = next((kinds[k] for k in order if k in kinds), (0.0, 0.0))
        row = self.rows.setdefault(
            label, {"lines": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        )
        row["lines"] += 1
        row["prompt_tokens"] += prompt
        row["completion_tokens"] += completion
        row["cost"] += (prompt * price_in + completion * price_out) / 1e6

    def as_dict(self) -> dict[str, Any]:
        """The rows by target and the batch's total cost (what `usage_by_target` shows)."""
        rows = {k: {**v, "cost": round(v["cost"], 6)} for k, v in self.rows.items()}
        return {"targets": rows, "total_cost": round(sum(v["cost"] for v in self.rows.values()), 6)}

    def __repr__(self) -> str:
        return f"<Tally targets={sorted(self.rows)}>"
