"""Several token events of one deployment folded in with one optimistic transaction.

`EstimateStore.record` applies one event in two scripts (`load.lua`, then `commit.lua`'s
compare-and-set on the state's version). A process with many events in flight (an ingress
at hundreds of calls a second, a worker with dozens of calls) would apply them one by one,
and those it applies at once conflict with each other. Here a batch is applied as if its
events had come one after another, in four round trips:

1. WATCH the estimate hash;
2. `load.lua` once (state, version, the server's clock) and each event's charge record
   (`RECORD`, an HMGET each, pipelined); a batch holds one event per request (a second
   event of a request, which must see the first one's record, waits for the next round);
3. the events stepped in order, here, on the state each step leaves, at that one clock;
4. MULTI, one `commit.lua` per event (versions v, v+1, ...), EXEC.

A write to the hash by anyone else after the WATCH (another process's event, a heartbeat)
aborts the EXEC: nothing was stored, and the batch starts again, as `record` does after a
conflict. Within the transaction a commit refused (an event applied meanwhile by a
redelivery: `commit.lua` answers 0 without storing) leaves the following versions unmatched,
so they store nothing either, and those events are tried again on a fresh read, where the
applied one is skipped. Each event is therefore folded in at most once, in order, by the
same filter step `record` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import NoScriptError, WatchError

from orchestrator.core import keys
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.estimate.filter import step
from orchestrator.utilisation.estimate.state import FilterState

if TYPE_CHECKING:
    from orchestrator.utilisation.estimate.store import EstimateStore

log = structlog.get_logger(__name__)


async def apply(store: EstimateStore, d: DeploymentConfig, events: Sequence[TokenEvent]) -> None:
    """Fold `events` (all of deployment `d`) into its estimate, in order, each at most once."""
    from orchestrator.utilisation.estimate.store import MAX_CONFLICTS, RECORD, jitter_s

    redis = store._redis
    key = keys.estimate(d.name)
    remaining = list(events)
    rounds = 0
    while remaining and rounds < MAX_CONFLICTS:
        rounds += 1
        now_batch, later = _distinct(remaining)
        reqs = [keys.estimate_request(d.name, e.request_id) for e in now_batch]
        async with redis.pipeline(transaction=True) as tx:
            await tx.watch(key)
            try:
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.evalsha(store._load.sha, 1, key, store._now_arg())
                    for req in reqs:
                        pipe.hmget(req, RECORD)
                    replies = await pipe.execute()
            except NoScriptError:
                await store._load(keys=[key], args=[store._now_arg()])  # loads the script
                continue
            loaded = [text(x) for x in replies[0]]
            version, now = int(loaded[2]), float(loaded[5])
            state: FilterState | None = FilterState.loads(loaded[1]) if loaded[1] else None
            commits: list[tuple[TokenEvent, str, list[str | int]]] = []
            for event, req, raw in zip(now_batch, reqs, replies[1:], strict=True):
                signal = store._signal(d, event, [text(x) if x is not None else "" for x in raw])
                if signal is None:
                    continue  # applied already
                state = step(state, signal, now, store.window_s, store._params)
                ver = str(version + len(commits))
                commits.append((event, req, store._commit_args(ver, state, event, now)))
            if not commits:
                remaining = later
                rounds = 0
                continue
            tx.multi()  # type: ignore[no-untyped-call]
            for _event, req, args in commits:
                tx.evalsha(store._commit.sha, 2, key, req, *args)
            try:
                results: list[Any] = await tx.execute(raise_on_error=False)
            except WatchError:
                await asyncio.sleep(jitter_s())  # another writer went first
                continue
        unstored = _unstored(commits, results)
        if not unstored:
            rounds = 0  # a round that stored everything is no conflict
        remaining = unstored + later
        if any(isinstance(r, NoScriptError) for r in results):
            await store._redis.script_load(store._commit.script)
    if remaining:
        log.warning(
            "estimate_events_dropped", deployment=d.name, reason="conflicts", count=len(remaining)
        )


def _distinct(events: list[TokenEvent]) -> tuple[list[TokenEvent], list[TokenEvent]]:
    """The longest prefix of `events` with one event per request, and the rest: an event of a
    request already in the batch reads its charge record after the first one's commit."""
    seen: set[str] = set()
    for i, event in enumerate(events):
        if event.request_id in seen:
            return events[:i], events[i:]
        seen.add(event.request_id)
    return events, []


def _unstored(
    commits: Sequence[tuple[TokenEvent, str, list[str | int]]], results: Sequence[Any]
) -> list[TokenEvent]:
    """The events from the first commit that stored nothing (-1, or an error) on: they are
    read and stepped again (an event applied meanwhile is then skipped)."""
    for i, result in enumerate(results):
        if isinstance(result, Exception) or int(result) == -1:
            return [event for event, _, _ in commits[i:]]
    return []
