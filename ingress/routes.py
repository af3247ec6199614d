"""The ingress's route table: each handler carries its `@operation` contract, from which the
OpenAPI document is generated (`http.openapi`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingress.http import errors
from ingress.http.answers import Health, Readiness
from ingress.http.health import readiness
from ingress.http.openapi import Reply, operation
from ingress.wiring import Wired

PREFIXES = ("/v1", "/openai", "/openai/v1")
"""Where the OpenAI-shaped routes live: OpenAI clients use /v1, AzureOpenAI clients /openai."""


def route_table(w: Wired) -> list[Route]:
    """Every route of the app, bound to the collaborators in `w`."""
    parts, metrics, chat, requests_api = w.parts, w.metrics, w.chat, w.requests_api
    file_routes, batches, operator_key = w.file_routes, w.batches, w.operator_key

    def operator_only(request: Request) -> None:
        if not operator_key.allows(request.headers):
            raise errors.ApiError(
                401,
                "invalid_api_key",
                "this endpoint needs the metrics key (PTU_METRICS_API_KEY): send it as the "
                "api-key header or Authorization: Bearer <key>",
            )

    @operation("liveness: the process serves (never touches Redis)", {200: Reply("alive", Health)})
    async def healthz(request: Request) -> Response:
        # Redis trouble must not make the orchestrator restart every ingress: the
        # interactive path answers without Redis (core/fail_open); /readyz checks it
        return JSONResponse({"status": "ok"})

    @operation(
        "readiness: Redis takes writes, every queue answers, utilisation is readable",
        {200: Reply("ready, check by check", Readiness)},
        errors=(503,),
    )
    async def readyz(request: Request) -> Response:
        checks = await readiness(parts.redis, parts.queues, parts.estimate)
        failing = {name: state for name, state in checks.items() if state != "ok"}
        if failing:
            detail = "; ".join(f"{name}: {state}" for name, state in failing.items())
            raise errors.ApiError(503, "not_ready", f"not ready: {detail}"[:1000])
        return JSONResponse(Readiness(status="ready", checks=checks).model_dump())

    @operation(
        "Prometheus metrics (with PTU_METRICS_API_KEY set: that key, as api-key or bearer)",
        {200: Reply("text exposition", media_type="text/plain")},
        errors=(401,),
    )
    async def prometheus(request: Request) -> Response:
        operator_only(request)
        return Response(metrics.render(), media_type=metrics.content_type)

    @operation(
        "this document (OpenAPI 3.1; with PTU_METRICS_API_KEY set: that key)",
        {200: Reply("the document")},
        errors=(401,),
    )
    async def openapi(request: Request) -> Response:
        operator_only(request)
        return JSONResponse(request.app.state.openapi)

    routes = [
        Route("/openai/deployments/{deployment}/chat/completions", chat.azure, methods=["POST"]),
        Route("/v1/requests/{request_id}", requests_api.get, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    for p in PREFIXES:
        routes += [
            Route(f"{p}/chat/completions", chat.openai, methods=["POST"]),
            Route(f"{p}/responses", chat.responses, methods=["POST"]),
            Route(f"{p}/responses/{{response_id}}", w.background.retrieve, methods=["GET"]),
            Route(f"{p}/responses/{{response_id}}", w.background.delete, methods=["DELETE"]),
            Route(f"{p}/responses/{{response_id}}/cancel", w.background.cancel, methods=["POST"]),
            Route(f"{p}/files", file_routes.upload, methods=["POST"]),
            Route(f"{p}/files", file_routes.list_files, methods=["GET"]),
            Route(f"{p}/files/{{file_id}}", file_routes.retrieve, methods=["GET"]),
            Route(f"{p}/files/{{file_id}}", file_routes.delete, methods=["DELETE"]),
            Route(f"{p}/files/{{file_id}}/content", file_routes.content, methods=["GET"]),
            Route(f"{p}/batches", batches.create, methods=["POST"]),
            Route(f"{p}/batches", batches.list_batches, methods=["GET"]),
            Route(f"{p}/batches/{{batch_id}}", batches.retrieve, methods=["GET"]),
            Route(f"{p}/batches/{{batch_id}}/cancel", batches.cancel, methods=["POST"]),
        ]
    return routes
