"""`/openapi.json` against the app's route table: every route, with its methods and parameters."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingress.app import create_app
from ingress.http.models import AzureChatPath
from ingress.http.openapi import Reply, documented_routes, openapi_document, operation
from orchestrator.core.settings import load_settings
from orchestrator.queues.memory import InMemoryQueue

DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1000},
]


@pytest.fixture
async def app() -> AsyncIterator[Any]:
    settings = load_settings(
        redis_url="redis://127.0.0.1:1",  # never reached: no request here touches Redis
        azure_openai_endpoint="http://127.0.0.1:1",
        azure_openai_api_key="k",
        deployments=DEPLOYMENTS,
    )
    async with httpx2.AsyncClient() as upstream:
        yield create_app(settings, http_client=upstream, queues={"ptu": InMemoryQueue()})


async def _served(app: Any) -> dict[str, Any]:
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://ingress") as http:
        resp = await http.get("/openapi.json")
    assert resp.status_code == 200
    document: dict[str, Any] = resp.json()
    return document


async def test_every_route_is_documented_with_its_methods(app: Any) -> None:
    document = await _served(app)
    table = {
        (route.path, method.lower())
        for route in app.routes
        for method in (route.methods or ()) - {"HEAD"}
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert documented == table
    assert len(table) == 48  # with /readyz, the three /responses and their GET, DELETE, cancel
    for path in (
        "/openai/v1/chat/completions",
        "/openai/chat/completions",
        "/openapi.json",
        "/v1/responses",
        "/openai/responses",
        "/openai/v1/responses",
    ):
        assert path in document["paths"]
    assert ("/openai/v1/batches/{batch_id}/cancel", "post") in documented


async def test_path_parameters_match_the_route_templates(app: Any) -> None:
    document = await _served(app)
    for path, ops in document["paths"].items():
        in_template = set(re.findall(r"{(\w+)}", path))
        for op in ops.values():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == in_template, path


async def test_every_operation_answers_errors_in_the_envelope(app: Any) -> None:
    document = await _served(app)
    schemas = document["components"]["schemas"]
    assert schemas["Deployment"] == {"type": "string", "enum": ["ptu", "paygo"]}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            for status, reply in op["responses"].items():
                if int(status) >= 400:
                    schema = reply["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (
                        method,
                        path,
                    )
    refs = re.findall(r'"#/components/schemas/([^"]+)"', str(document).replace("'", '"'))
    assert set(refs) <= set(schemas), "every reference resolves"


async def test_headers_are_documented_as_the_validators_read_them(app: Any) -> None:
    document = await _served(app)
    op = document["paths"]["/v1/chat/completions"]["post"]
    headers = {p["name"]: p["schema"] for p in op["parameters"] if p["in"] == "header"}
    assert headers["x-priority"] == {"enum": ["high", "low"], "type": "string"}
    assert headers["x-ptu-ttl-s"] == {
        "exclusiveMinimum": 0,
        "maximum": 2592000.0,
        "type": "number",
    }
    assert headers["x-reply-key"]["maxLength"] == 200
    batch = document["paths"]["/v1/batches"]["post"]
    assert [p["name"] for p in batch["parameters"]] == ["x-priority"]


def test_a_route_without_an_operation_is_refused() -> None:
    async def undocumented(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="no @operation"):
        openapi_document([Route("/x", undocumented, methods=["GET"])], [])


def test_path_parameters_must_match_the_operation() -> None:
    @operation("x", {200: Reply("ok")}, path=AzureChatPath)
    async def documented(request: Request) -> Response:
        return Response()

    with pytest.raises(TypeError, match="path parameters"):
        documented_routes([Route("/x/{other}", documented, methods=["GET"])])
