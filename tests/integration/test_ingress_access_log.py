"""Every request the ingress answers leaves one access line with the client's address.

The ingress's own refusals (401, 400, 404, 413) and its 202s are written by the
`AccessLog` middleware, a forwarded call by its call path; each line carries `client`,
`method` and `path`, and a health probe that succeeds leaves none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import structlog
from structlog.testing import LogCapture

from ingress.http.access import client_address
from ingress.server import IngressThread
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEPLOYMENTS = [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}]
BODY = {"model": "ptu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
KEY = {"api-key": "key-a"}


@pytest.fixture(scope="module")
def ingress(redis_url: str) -> Iterator[IngressThread]:
    config = SimConfig.from_specs(["ptu=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0)
    with SimulatorThread(config) as sim:
        settings = load_settings(
            redis_url=redis_url, redis_cluster=redis_mode.CLUSTER, azure_openai_endpoint=sim.url,
            azure_openai_api_key="k", deployments=DEPLOYMENTS, api_keys={"key-a": "alpha"},
            max_body_bytes=4_096,
        )  # fmt: skip
        with IngressThread(settings) as server:
            yield server


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    """The access lines written meanwhile, with the request's bound context merged in."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, capture],
        cache_logger_on_first_use=False,
    )
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


def _only_line(lines: list[dict[str, Any]], path: str) -> dict[str, Any]:
    (line,) = [x for x in lines if x["event"] == "access" and x.get("path") == path]
    return line


def test_refusals_and_acceptances_leave_one_line_with_the_client(
    ingress: IngressThread, access_lines: list[dict[str, Any]]
) -> None:
    url = ingress.url
    with httpx2.Client(base_url=url, timeout=30) as client:
        cases = [
            ("/v1/chat/completions", {}, 401, "invalid_api_key", ""),
            ("/openai/deployments/nope/chat/completions", KEY, 404, "DeploymentNotFound",
             "alpha"),
        ]  # fmt: skip
        for path, headers, status, code, tenant in cases:
            response = client.post(path, json=BODY, headers=headers)
            assert response.status_code == status, response.text
            line = _only_line(access_lines, path)
            assert (line["status"], line["tenant"]) == (status, tenant), access_lines
            assert line["error"] == response.json()["error"]["code"] == code
            assert line["client"].startswith("127.0.0.1:") and line["method"] == "POST"
            access_lines.clear()

        bad = client.post("/v1/chat/completions", content=b"{not json", headers=KEY)
        assert bad.status_code == 400
        line = _only_line(access_lines, "/v1/chat/completions")
        assert (line["status"], line["tenant"], line["error"]) == (
            400,
            "alpha",
            bad.json()["error"]["code"],
        )
        access_lines.clear()

        big = client.post("/v1/chat/completions", content=b"x" * 10_000, headers=KEY)
        assert big.status_code == 413
        assert _only_line(access_lines, "/v1/chat/completions")["status"] == 413
        access_lines.clear()

        queued = client.post(
            "/v1/chat/completions", json=BODY, headers={**KEY, "x-priority": "low"}
        )
        assert queued.status_code == 202
        line = _only_line(access_lines, "/v1/chat/completions")
        assert (line["status"], line["request_id"], line["deployment"], line["priority"]) == (
            202, queued.json()["id"], "ptu", "low",
        )  # fmt: skip
        assert line["tenant"] == "alpha" and line["error"] is None and line["latency_ms"] >= 0
        access_lines.clear()

        answered = client.post("/v1/chat/completions", json=BODY, headers=KEY)
        assert answered.status_code == 200, answered.text
        line = _only_line(access_lines, "/v1/chat/completions")  # the call path's, alone
        assert (line["status"], line["priority"], line["tenant"]) == (200, "high", "alpha")
        assert line["client"].startswith("127.0.0.1:") and line["prompt_tokens"] > 0
        access_lines.clear()

        assert client.get("/healthz").status_code == 200
        assert not [x for x in access_lines if x["event"] == "access"]


def test_the_client_address_is_host_and_port_ipv6_bracketed() -> None:
    assert client_address({"client": ("10.0.0.7", 5123)}) == "10.0.0.7:5123"
    assert client_address({"client": ("::1", 5123)}) == "[::1]:5123"
    assert client_address({}) is None and client_address({"client": None}) is None
