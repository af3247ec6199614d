"""`ptu bench fairness`'s measures, pure: token shares inside a window, makespans.

A call's tokens are counted evenly over its run (`started_at` to `completed_at` of its
result), so a share is of the capacity used inside the window (see `fairness`).
"""

from __future__ import annotations

import dataclasses

from orchestrator.core.schemas import ResultDocument


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """One call: whose, when it ran, the tokens it used."""

    tenant: str
    started: float
    ended: float
    tokens: int


def runs_of(tenant: str, docs: list[ResultDocument]) -> list[Run]:
    """The completed calls of `tenant`'s results."""
    out = []
    for doc in docs:
        if doc.status != "completed" or doc.started_at is None:
            continue
        usage = doc.usage or {}
        tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        out.append(Run(tenant, doc.started_at, doc.completed_at, tokens))
    return out


def spread_shares(runs: list[Run], start: float, end: float) -> dict[str, float]:
    """Each tenant's share of the tokens used inside [start, end], a call's tokens
    spread evenly over its run (so the share is of the capacity used in the window)."""
    used: dict[str, float] = {}
    for run in runs:
        overlap = max(0.0, min(end, run.ended) - max(start, run.started))
        span = run.ended - run.started
        part = overlap / span if span > 0 else float(start <= run.ended <= end)
        used[run.tenant] = used.get(run.tenant, 0.0) + run.tokens * part
    total = sum(used.values())
    return {t: (v / total if total else 0.0) for t, v in used.items()}


def shares(
    a: list[ResultDocument], b: list[ResultDocument], submitted: float, queued: float | None
) -> tuple[dict[str, float], dict[str, float]]:
    """Token shares while both had lines waiting (B's first line queued, else the start of
    its first call, to the start of its last call), and, for comparison, from B's
    submission to its last result (which adds the time before B's lines were queued and
    the tail in which B had nothing left to start and its last calls ran beside A's)."""
    runs = runs_of("a", a) + runs_of("b", b)
    b_starts = [r.started for r in runs if r.tenant == "b"]
    last_result = max(d.completed_at for d in b)
    start = queued if queued is not None else min(b_starts)
    return (
        spread_shares(runs, start, max(b_starts)),
        spread_shares(runs, submitted, last_result),
    )


def makespan(created: float, docs: list[ResultDocument]) -> float:
    """From the batch create to its last result."""
    return max(d.completed_at for d in docs) - created
