"""Several token events of one deployment folded in with one optimistic transaction.

`EstimateStore.record` applies one event in two scripts (`load.lua`, then `commit.lua`'s
compare-and-set on the state's version). A process with many events in flight (an ingress
at hundreds of calls a second, a worker with dozens of calls) would apply them one by one,
and those it applies at once conflict with each other. Here a batch is applied as if its
events had come one after another, in two round trips on one connection:

1. WATCH the estimate hash, `load.lua` once (state, version, the server's clock) and each
   event's charge record (`RECORD`, an HMGET each); a batch holds one event per request (a
   second event of a request, which must see the first one's record, waits for the next
   round);
2. the events stepped in order, here, on the state each step leaves, at that one clock;
   then MULTI, one `commit.lua` per event (versions v, v+1, ...), EXEC.

A write to the hash by anyone else after the WATCH (another process's event, a heartbeat)
aborts the EXEC: nothing was stored, and the batch starts again, as `record` does after a
conflict. Within the transaction a commit refused (an event applied meanwhile by a
redelivery: `commit.lua` answers 0 without storing) leaves the following versions unmatched,
so they store nothing either, and those events are tried again on a fresh read, where the
applied one is skipped. Each event is therefore folded in at most once, in order, by the
same filter step `record` runs.

The two round trips are written on a connection of the client's pool directly (redis-py's
pipeline would spend one more on the WATCH and another on checking the scripts exist); a
connection interrupted mid-exchange is dropped, so no later command reads its replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from redis.exceptions import NoScriptError, ResponseError

from orchestrator.core import keys
from orchestrator.core.redis_replies import text
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.estimate.filter import step
from orchestrator.utilisation.estimate.state import FilterState

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection

    from orchestrator.utilisation.estimate.store import EstimateStore

log = structlog.get_logger(__name__)

Commit = tuple[TokenEvent, list[Any]]
"""An event and the EVALSHA of its commit."""


async def apply(store: EstimateStore, d: DeploymentConfig, events: Sequence[TokenEvent]) -> None:
    """Fold `events` (all of deployment `d`) into its estimate, in order, each at most once."""
    from orchestrator.utilisation.estimate.store import MAX_CONFLICTS

    remaining = list(events)
    conflicts = 0
    while remaining and conflicts < MAX_CONFLICTS:
        batch, later = _distinct(remaining)
        try:
            unstored = await _round(store, d, batch)
        except NoScriptError:  # the server lost its scripts (a restart): load them again
            await store._redis.script_load(store._load.script)
            await store._redis.script_load(store._commit.script)
            conflicts += 1
            continue
        if unstored is None or unstored:
            conflicts += 1
            await asyncio.sleep(_jitter())  # another writer went first
        remaining = (batch if unstored is None else unstored) + later
    if remaining:
        log.warning(
            "estimate_events_dropped", deployment=d.name, reason="conflicts", count=len(remaining)
        )


async def _round(
    store: EstimateStore, d: DeploymentConfig, batch: list[TokenEvent]
) -> list[TokenEvent] | None:
    """One read-step-commit of `batch`: the events not stored (None: all, the EXEC aborted)."""
    from orchestrator.utilisation.estimate.store import RECORD

    key = keys.estimate(d.name)
    reqs = [keys.estimate_request(d.name, e.request_id) for e in batch]
    pool = store._redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        reads: list[list[Any]] = [
            ["WATCH", key],
            ["EVALSHA", store._load.sha, 1, key, store._now_arg()],
        ]
        reads += [["HMGET", req, *RECORD] for req in reqs]
        replies = await _exchange(conn, reads)
        for reply in replies:
            if isinstance(reply, ResponseError):
                await _exchange(conn, [["UNWATCH"]])
                raise reply
        commits = _stepped(store, d, batch, reqs, replies[1], replies[2:])
        if not commits:
            await _exchange(conn, [["UNWATCH"]])
            return []
        writes = [["MULTI"], *(args for _, args in commits), ["EXEC"]]
        results = (await _exchange(conn, writes))[-1]
    except BaseException:
        await conn.disconnect()  # replies may be left unread: nobody reads them
        raise
    finally:
        await pool.release(conn)
    if results is None:
        return None
    if isinstance(results, ResponseError):
        raise results
    return _unstored(commits, results)


def _stepped(
    store: EstimateStore,
    d: DeploymentConfig,
    batch: Sequence[TokenEvent],
    reqs: Sequence[str],
    load: Any,
    records: Sequence[Any],
) -> list[Commit]:
    """The commits of `batch` stepped in order from what was read (applied events left out)."""
    loaded = [text(x) for x in load]
    version, now = int(loaded[2]), float(loaded[5])
    state: FilterState | None = FilterState.loads(loaded[1]) if loaded[1] else None
    key = keys.estimate(d.name)
    commits: list[Commit] = []
    for event, req, raw in zip(batch, reqs, records, strict=True):
        signal = store._signal(d, event, [text(x) if x is not None else "" for x in raw])
        if signal is None:
            continue  # applied already
        state = step(state, signal, now, store.window_s, store._params)
        args = store._commit_args(str(version + len(commits)), state, event, now)
        commits.append((event, ["EVALSHA", store._commit.sha, 2, key, req, *args]))
    return commits


async def _exchange(conn: AbstractConnection, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """Send `commands` in one write; their replies, an error reply as its exception."""
    await conn.send_packed_command(conn.pack_commands(commands))
    out: list[Any] = []
    for _ in commands:
        try:
            out.append(await conn.read_response())
        except ResponseError as err:
            out.append(err)
    return out


async def each(store: EstimateStore, events: Sequence[TokenEvent]) -> None:
    """`record` for every event, those of distinct requests at once (Redis Cluster: no
    transaction over scripts); a second event of a request after the first."""
    remaining = list(events)
    while remaining:
        now, remaining = _distinct(remaining)
        await asyncio.gather(*(store.record(event) for event in now))


def _distinct(events: list[TokenEvent]) -> tuple[list[TokenEvent], list[TokenEvent]]:
    """The longest prefix of `events` with one event per request, and the rest: an event of a
    request already in the batch reads its charge record after the first one's commit."""
    seen: set[str] = set()
    for i, event in enumerate(events):
        if event.request_id in seen:
            return events[:i], events[i:]
        seen.add(event.request_id)
    return events, []


def _unstored(commits: Sequence[Commit], results: Sequence[Any]) -> list[TokenEvent]:
    """The events from the first commit that stored nothing (-1, or an error) on: they are
    read and stepped again (an event applied meanwhile is then skipped)."""
    for i, result in enumerate(results):
        if isinstance(result, NoScriptError):
            raise result
        if isinstance(result, Exception) or int(result) == -1:
            return [event for event, _ in commits[i:]]
    return []


def _jitter() -> float:
    from orchestrator.utilisation.estimate.store import jitter_s

    return jitter_s()
