"""`ptu ingress`: run the HTTP gateway under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import sys

from ingress.app import create_app
from ingress.chat.credentials import check_credentials, deployment_auths, upstream_auth
from ingress.http.auth import is_loopback
from ingress.server import serve_until, uvicorn_config
from orchestrator.core import logs, redis_client, startup
from orchestrator.core.runtime import STOP_AFTER_DRAIN_S, run_until_signal
from orchestrator.core.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--host` (127.0.0.1) and `--port` (8080)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")


async def _preflight(settings: Settings) -> None:
    """Redis reachable and every upstream credential obtainable, before serving."""
    redis = redis_client.connect_view(settings.redis)
    try:
        await startup.check_redis(redis, settings.redis_url)
    finally:
        await redis.aclose()
    default = upstream_auth(settings)
    try:
        await check_credentials(deployment_auths(settings, default))
    finally:
        await default.close()


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Serve until SIGTERM/SIGINT, then drain open connections for up to PTU_DRAIN_TIMEOUT_S."""
    assert settings is not None
    authenticated = settings.api_keys or settings.trusted_front_secret is not None
    if not authenticated and not is_loopback(args.host):
        print(
            f"ptu ingress: refusing to bind {args.host}: without PTU_API_KEYS (or "
            "PTU_TRUSTED_FRONT_SECRET) the ingress has no authentication and serves loopback only",
            file=sys.stderr,
        )
        return 2
    logs.configure(settings.log_level, settings.log_format)
    startup.announce(settings, "ingress")
    startup.check_port(args.host, args.port, "--port")
    asyncio.run(_preflight(settings))
    config = uvicorn_config(
        create_app(settings), args.host, args.port, drain_s=settings.drain_timeout_s
    )
    # whatever Redis does, the stop ends after the drain and a few seconds of bookkeeping
    return run_until_signal(
        lambda stop: serve_until(config, stop),
        stop_within_s=settings.drain_timeout_s + STOP_AFTER_DRAIN_S,
    )
