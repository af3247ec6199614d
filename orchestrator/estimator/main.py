"""`ptu estimator`: fold the queue backend's token events into the Redis utilisation estimate.

With `PTU_QUEUE_BACKEND=redis` the events come from the Redis stream
`TOKEN_EVENTS`; with `eventhubs` from the hub `PTU_EVENTHUB_TOKEN_EVENTS_NAME`
(APIM `log-to-eventhub`), whose SDK is imported only then.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from orchestrator.core import logs, redis_client, startup
from orchestrator.core.errors import ConfigError, StoreUnavailable
from orchestrator.core.runtime import run_until_signal
from orchestrator.core.settings import Settings
from orchestrator.estimator.redis_stream import Estimator, StreamReading
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import UsageLedger
from orchestrator.utilisation.estimate.store import EstimateStore
from orchestrator.utilisation.store_factory import estimate_store

if TYPE_CHECKING:
    from orchestrator.estimator.eventhubs import EventHubsEstimator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--consumer` (default HOST-PID) and `--horizon-s`."""
    parser.add_argument(
        "--consumer",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="consumer name in the Redis stream's 'estimator' group (default HOST-PID)",
    )
    parser.add_argument(
        "--horizon-s",
        type=float,
        default=300.0,
        help="acknowledge without applying events older than this (default 300)",
    )


def make_estimator(
    args: argparse.Namespace, settings: Settings, redis: aioredis.Redis, store: EstimateStore
) -> Estimator | EventHubsEstimator:
    """The token-event consumer of the configured queue backend (no I/O until `run`)."""
    usage = UsageLedger(redis, Tenancy(settings.tenants, settings.api_keys))
    if settings.queue_backend == "eventhubs":
        from orchestrator.estimator.eventhubs import EventHubsEstimator

        return EventHubsEstimator.from_settings(
            settings, redis, store, horizon_s=args.horizon_s, usage=usage
        )
    reading = StreamReading(horizon_s=args.horizon_s)
    return Estimator(redis, store, consumer=args.consumer, reading=reading, usage=usage)


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Consume until SIGTERM/SIGINT."""
    assert settings is not None
    if not settings.deployments:
        raise ConfigError("PTU_DEPLOYMENTS: the estimator needs at least one deployment")
    logs.configure(settings.log_level, settings.log_format)
    startup.announce(settings, "estimator")

    async def main(stop: asyncio.Event) -> int:
        redis = redis_client.connect_view(settings.redis)
        try:
            await startup.check_redis(redis, settings.redis_url)
        except StoreUnavailable:
            await redis.aclose()
            raise
        store = estimate_store(settings, redis)
        try:
            estimator = make_estimator(args, settings, redis, store)
            await estimator.run(stop)
        finally:
            await redis.aclose()
        return 0

    return run_until_signal(main)
