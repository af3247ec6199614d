"""`ptu ingress`: run the HTTP gateway under uvicorn."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from ingress.app import create_app
from ingress.auth import is_loopback
from orchestrator import logs
from orchestrator.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--host` (127.0.0.1) and `--port` (8080)."""
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn drains open connections)."""
    assert settings is not None
    if not settings.api_keys and not is_loopback(args.host):
        print(
            f"ptu ingress: refusing to bind {args.host}: without PTU_API_KEYS the ingress "
            "has no authentication and serves loopback only",
            file=sys.stderr,
        )
        return 2
    logs.configure(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
    uvicorn.Server(config).run()
    return 0
