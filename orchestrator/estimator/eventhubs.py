"""`ptu estimator` on Event Hubs: the token-event hub into the Redis estimate.

In Azure, APIM's `log-to-eventhub` (AZURE_FACTS.md §7) writes a token record per
PTU response to the hub `PTU_EVENTHUB_TOKEN_EVENTS_NAME`. This consumer reads it
with `EventHubConsumerClient.receive_batch` (partitions balanced between
estimator replicas through `RedisCheckpointStore`, starting at "-1" where no
checkpoint exists, AZURE_FACTS.md §8) and folds each event in with the
idempotent `EstimateStore.record`. A batch is checkpointed only after all of it
is applied: a crash in between redelivers the batch, and `record` drops what it
has already seen per (request id, phase). Bodies hold the APIM record or our
`TokenEvent` JSON (`estimator.parse_event`); anything else is logged and passed.
Events enqueued more than `horizon_s` ago are passed unapplied, as the Redis
estimator does: their charge has long drained.

Freshness: after each batch, including the empty ones the SDK hands over every
`max_wait_s` while a partition is idle, the estimator heartbeats the estimate,
unless a partition it owns lags the hub by more than `max_lag_s` (time since its
newest batch's last event was enqueued): then readings age into staleness and
the throttle fails closed, as unconsumed stream entries make it for the Redis
estimator. The lag compares the hub's enqueued time with the local clock
(NTP-synced hosts: skew far below the default `max_lag_s`, the store's max age).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import structlog

from orchestrator.core.errors import MissingDependencyError, UtilisationUnavailable
from orchestrator.core.settings import Settings
from orchestrator.estimator.redis_stream import MALFORMED_EVENT, parse_event
from orchestrator.estimator.usage import record_gateway_usage
from orchestrator.tenants.ledger import UsageLedger
from orchestrator.utilisation.estimate.store import EstimateStore

if TYPE_CHECKING:
    from azure.eventhub import EventData
    from azure.eventhub.aio import EventHubConsumerClient, PartitionContext

log = structlog.get_logger(__name__)

"""What a body that is not a token event raises (JSON, mapping, validation, not text, nesting)."""
CLOSE_TIMEOUT_S = 10.0


def require_sdk() -> None:
    """Raise MissingDependencyError unless azure-eventhub can be imported."""
    try:
        import azure.eventhub  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("azure-eventhub", "azure") from exc


def enqueued_at(event: EventData, default: float) -> float:
    """Epoch seconds at which the hub took the event (`default` when it does not say)."""
    stamp = event.enqueued_time
    return stamp.timestamp() if stamp is not None else default


class EventHubsEstimator:
    """Folds the token-event Event Hub into an `EstimateStore`."""

    def __init__(
        self,
        client: EventHubConsumerClient,
        store: EstimateStore,
        *,
        horizon_s: float = 300.0,
        max_lag_s: float | None = None,
        max_batch_size: int = 200,
        max_wait_s: float = 1.0,
        clock: Callable[[], float] = time.time,
        closers: Sequence[Any] = (),
        usage: UsageLedger | None = None,
    ) -> None:
        if horizon_s <= 0 or max_batch_size <= 0 or max_wait_s <= 0:
            raise ValueError("horizon_s, max_batch_size and max_wait_s must be positive")
        self._client = client
        self._store = store
        self._usage = usage
        self._horizon_s = horizon_s
        self._max_lag_s = store.max_age_s if max_lag_s is None else max_lag_s
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._closers = list(closers)
        self._lag: dict[str, float] = {}  # partition -> seconds behind the hub
        self._lagging = False
        self.eventhub: str = client.eventhub_name
        self.applied = 0
        self.skipped = 0
        self.batches = 0

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        redis: aioredis.Redis,
        store: EstimateStore,
        *,
        horizon_s: float,
        usage: UsageLedger | None = None,
    ) -> EventHubsEstimator:
        """A consumer of `PTU_EVENTHUB_TOKEN_EVENTS_NAME` with its checkpoints in Redis."""
        require_sdk()
        from orchestrator.queues.eventhubs.auth import EventHubAuth
        from orchestrator.queues.eventhubs.checkpoint_redis import RedisCheckpointStore

        view = settings.eventhubs
        auth = EventHubAuth(view)
        client = auth.consumer(
            settings.eventhub_token_events_name, view.consumer_group, RedisCheckpointStore(redis)
        )
        return cls(
            client,
            store,
            horizon_s=horizon_s,
            max_wait_s=min(1.0, store.max_age_s / 3),
            closers=auth.closers,
            usage=usage,
        )

    @property
    def lag_s(self) -> float:
        """How far the most lagging owned partition is behind the hub (0 when caught up)."""
        return max(self._lag.values(), default=0.0)

    async def handle_batch(self, context: PartitionContext, events: Sequence[EventData]) -> None:
        """Apply a partition's batch, checkpoint its last event, heartbeat while caught up.

        Raises UtilisationUnavailable (Redis down) before the checkpoint: the SDK then
        reopens the partition from its checkpoint and the batch is redelivered.
        """
        pid = context.partition_id
        now = self._clock()
        for event in events:
            await self._apply(pid, event, now)
        if events:
            await context.update_checkpoint(events[-1])
            self._lag[pid] = max(0.0, now - enqueued_at(events[-1], now))
        else:
            self._lag[pid] = 0.0  # idle for max_wait_s: nothing is waiting
        if self._caught_up():
            try:
                await self._store.heartbeat()
            except UtilisationUnavailable as exc:
                log.warning("estimator_heartbeat_failed", eventhub=self.eventhub, error=str(exc))
        self.batches += 1

    async def _apply(self, pid: str, event: EventData, now: float) -> None:
        at = enqueued_at(event, now)
        if now - at > self._horizon_s:
            self.skipped += 1
            log.debug("token_event_too_old", partition=pid, offset=event.offset, age_s=now - at)
            return
        try:
            token_event = parse_event(event.body_as_str(), default_timestamp=at)
        except MALFORMED_EVENT as exc:
            self.skipped += 1
            log.warning(
                "token_event_malformed",
                eventhub=self.eventhub,
                partition=pid,
                offset=event.offset,
                error=str(exc)[:300],
            )
            return
        await self._store.record(token_event)
        await record_gateway_usage(self._usage, token_event)
        self.applied += 1

    def _caught_up(self) -> bool:
        lag = self.lag_s
        caught_up = lag <= self._max_lag_s
        if caught_up and self._lagging:
            log.info("estimator_caught_up", eventhub=self.eventhub)
        elif not caught_up and not self._lagging:
            log.warning("estimator_lagging", eventhub=self.eventhub, lag_s=round(lag, 3))
        self._lagging = not caught_up
        return caught_up

    async def on_partition_close(self, context: PartitionContext, reason: Any) -> None:
        """Forget a partition this process no longer owns (its lag is the new owner's)."""
        self._lag.pop(context.partition_id, None)
        log.info(
            "eventhub_partition_closed",
            eventhub=self.eventhub,
            partition=context.partition_id,
            reason=str(reason),
        )

    async def on_error(self, context: PartitionContext | None, error: Exception) -> None:
        """Log receive, load-balancing and handler errors (the SDK retries or reopens)."""
        log.warning(
            "eventhub_receive_error",
            eventhub=self.eventhub,
            partition=context.partition_id if context is not None else None,
            error=repr(error)[:300],
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then close (ownership released, unapplied redelivered).

        Re-raises what ended the SDK's receive loop if it ended on its own.
        """
        log.info("estimator_started", eventhub=self.eventhub, deployments=self._store.deployments)
        receiver = asyncio.create_task(
            self._client.receive_batch(
                on_event_batch=self.handle_batch,
                max_batch_size=self._max_batch_size,
                max_wait_time=self._max_wait_s,
                starting_position="-1",  # no checkpoint: the retained backlog, not @latest
                on_error=self.on_error,
                on_partition_close=self.on_partition_close,
            )
        )
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({receiver, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await self.close()
            _, pending = await asyncio.wait({receiver}, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("estimator_stopped", applied=self.applied, skipped=self.skipped)
        failure = None if receiver.cancelled() else receiver.exception()
        if failure is not None and not stop.is_set():
            raise failure

    async def close(self) -> None:
        """Stop receiving and release partition ownership; close the credential."""
        await self._client.close()
        for closer in self._closers:
            await closer.close()
        self._closers = []

    def __repr__(self) -> str:
        return (
            f"<EventHubsEstimator eventhub={self.eventhub} partitions={len(self._lag)} "
            f"applied={self.applied} skipped={self.skipped} lag_s={self.lag_s:.1f}>"
        )
