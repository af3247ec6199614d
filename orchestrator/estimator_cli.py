"""`ptu estimator`: fold the token-event stream into the Redis utilisation estimate."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket

import redis.asyncio as aioredis

from orchestrator import logs
from orchestrator.errors import ConfigError
from orchestrator.estimator import Estimator
from orchestrator.runtime import run_until_signal
from orchestrator.settings import Settings
from orchestrator.utilisation.estimate import EstimateStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--consumer` (default HOST-PID) and `--horizon-s`."""
    parser.add_argument(
        "--consumer",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="consumer name in the 'estimator' group (default HOST-PID)",
    )
    parser.add_argument(
        "--horizon-s",
        type=float,
        default=300.0,
        help="acknowledge without applying events older than this (default 300)",
    )


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Consume until SIGTERM/SIGINT."""
    assert settings is not None
    if not settings.deployments:
        raise ConfigError("PTU_DEPLOYMENTS: the estimator needs at least one deployment")
    logs.configure(settings.log_level, settings.log_format)

    async def main(stop: asyncio.Event) -> int:
        redis = aioredis.Redis.from_url(settings.redis_url)
        store = EstimateStore(
            redis,
            settings.deployments,
            window_s=settings.estimate_window_s,
            max_age_s=settings.estimate_max_age_s,
        )
        estimator = Estimator(redis, store, consumer=args.consumer, horizon_s=args.horizon_s)
        try:
            await estimator.run(stop)
        finally:
            await redis.aclose()
        return 0

    return run_until_signal(main)
