"""`python -m bench.harness.output_proxy`: the simulator, its low-priority outputs made short.

The `overask` reality of `ptu bench robustness`: batch lines ask for far more output than
they use (max_tokens 4000, capped at `PTU_MAX_TOKENS_CEILING`, ~100 used). The simulator
draws a completion's length from its max_tokens (20-100 % of it) unless the call carries
`x-sim-completion-tokens`, and a queued request reaches it from the worker, which forwards
no client header. So in that reality the orchestrator's processes call the simulator
through this loopback proxy: it adds the header to every call labelled
`x-ptu-priority: low` (the worker's) and passes everything else (interactive calls,
`/sim/state`) through unchanged, answers included (status, utilisation header,
retry-after). Admission still charges the max_tokens asked for, as Azure's does: the
reservation is real, only the use is short. Bench only; the product never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.core.runtime import run_until_signal
from orchestrator.core.schemas import PRIORITY_LABEL_HEADER
from orchestrator.core.serving import serve_until
from simulator.server import uvicorn_config

FORCED_LENGTH_HEADER = "x-sim-completion-tokens"
"""The simulator's per-call override of the completion length (still capped at max_tokens)."""
_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
_DECODED = _HOP | {"content-encoding"}
"""The client hands the body over decoded, so its encoding header does not apply any more."""


def create_app(upstream: str, completion_tokens: int, client: httpx2.AsyncClient) -> Starlette:
    """The proxy: every request to `upstream`, low-priority calls with their length forced."""
    base = upstream.rstrip("/")

    async def forward(request: Request) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        if request.headers.get(PRIORITY_LABEL_HEADER, "").strip().lower() == "low":
            headers.append((FORCED_LENGTH_HEADER, str(completion_tokens)))
        query = f"?{request.url.query}" if request.url.query else ""
        answer = await client.request(
            request.method,
            f"{base}{request.url.path}{query}",
            headers=headers,
            content=await request.body(),
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DECODED}
        return Response(answer.content, answer.status_code, headers=kept)

    methods = ["GET", "POST", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def main(argv: Sequence[str] | None = None) -> int:
    """Serve on a loopback port until SIGTERM (the simulator's CA from SSL_CERT_FILE)."""
    parser = argparse.ArgumentParser(prog="python -m bench.harness.output_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the simulator's URL")
    parser.add_argument("--completion-tokens", type=int, required=True)
    args = parser.parse_args(argv)

    async def run(stop: asyncio.Event) -> int:
        limits = httpx2.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx2.AsyncClient(timeout=120.0, limits=limits) as client:
            app = create_app(args.upstream, args.completion_tokens, client)
            return await serve_until(uvicorn_config(app, "127.0.0.1", args.port), stop)

    return run_until_signal(run)


if __name__ == "__main__":
    sys.exit(main())
