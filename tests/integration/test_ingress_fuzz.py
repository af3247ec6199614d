"""Property-based fuzzing of every ingress route from its own OpenAPI document.

The document is the one the app serves, generated from its route table, so every
route is fuzzed. Schemathesis generates valid (positive) and invalid (negative)
requests for each operation, a bounded number per route. Invariants: never a 5xx;
every status is one the operation documents; errors always in the OpenAI envelope;
a JSON answer fits the model its operation names; a request the ingress accepted
(202) is really recorded and on the queue; and a valid request is never refused
for a header or query value (the documented schema and the validator agree).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx2
import hypothesis
import pytest
import redis
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode

from ingress.app import create_app
from ingress.batch.store import line_request_id
from ingress.http.answers import QueuedRequestStatus
from ingress.http.errors import ErrorEnvelope
from ingress.http.openapi import JSON, Operation, documented_routes
from ingress.server import IngressThread
from orchestrator.core import keys
from orchestrator.core.settings import Settings, load_settings
from orchestrator.queues.memory import InMemoryQueue
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

MAX_EXAMPLES = 10
DEPLOYMENTS: list[dict[str, Any]] = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15, "spillover": "paygo"},
    {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 100_000_000},
]
STREAM_CAP = 256
NAMESPACE_CHECKED = frozenset({"x-reply-key"})
"""Parameters with a rule the schema cannot state (the key must be in the caller's namespace)."""


def _settings(redis_url: str, endpoint: str) -> Settings:
    return load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=endpoint,
        azure_openai_api_key="k",
        deployments=DEPLOYMENTS,
        max_body_bytes=65_536,
    )


def _app_contract() -> tuple[dict[str, Any], dict[tuple[str, str], Operation]]:
    """The document and the operations of an app built like the one under test."""

    async def build() -> Any:
        async with httpx2.AsyncClient() as upstream:
            settings = _settings("redis://127.0.0.1:1", "http://127.0.0.1:1")
            return create_app(settings, http_client=upstream, queues={"ptu": InMemoryQueue()})

    app = asyncio.run(build())
    ops = {(m, route.path): op for route, m, op in documented_routes(app.routes)}
    return app.state.openapi, ops


DOCUMENT, CONTRACT = _app_contract()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [(op.method.upper(), op.path) for op in (r.ok() for r in SCHEMA.get_all_operations())]


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[IngressThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "paygo=gpt-4o-mini:100000000:standard"], tbt_ms=0.0, ttft_ms=0.0
    )
    with SimulatorThread(config) as sim, IngressThread(_settings(redis_url, sim.url)) as ingress:
        assert httpx2.get(ingress.url + "/openapi.json").json() == DOCUMENT
        yield ingress


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_mode.connect_sync(redis_url)
    yield client
    client.close()


def _header(response: Any, name: str) -> str | None:
    value = response.headers.get(name)
    return value[0] if isinstance(value, list) else value


def _params_of(case: Any) -> Mapping[str, object]:
    return {**(case.headers or {}), **(case.query or {})}


def _bounded_output(case: Any) -> None:
    """Cap a streamed completion's length: the simulator would stream every token asked for.

    (A real deployment refuses a limit above the model's output maximum; the
    ingress passes a streaming request's limit through as sent, by design.)
    """
    body = case.body
    if isinstance(body, dict) and body.get("stream") is True:
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = body.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > STREAM_CAP:
                body[name] = STREAM_CAP


def _check(case: Any, stack: IngressThread, store: redis.Redis, mode: GenerationMode) -> int:
    """Send `case` and check the invariants on the answer; returns its status."""
    _bounded_output(case)
    response = case.call(base_url=stack.url, timeout=30)
    status = response.status_code
    where = f"{case.method} {case.formatted_path} {case.headers} {case.query}"
    assert status < 500, f"{where}: {status} {response.text[:300]}"
    if status == 400 and response.text == "Invalid HTTP request received.":
        return status  # uvicorn refused a malformed request (`content-length: ''`) before the app
    op = CONTRACT[(case.method.upper(), case.path)]
    assert status in op.responses or status in op.errors, f"{where}: undocumented {status}"
    media_type = (_header(response, "content-type") or "").split(";")[0]
    if status >= 400:
        assert media_type == JSON, f"{where}: {status} {response.text[:200]}"
        error = ErrorEnvelope.model_validate_json(response.content).error
        if status == 400 and mode == GenerationMode.POSITIVE:
            documented = set(_params_of(case)) - NAMESPACE_CHECKED
            assert error.param not in documented, f"{where}: valid {error.param} refused"
        return status
    reply = op.responses[status]
    if reply.model is not None and media_type == JSON:
        reply.model.model_validate_json(response.content)
    if status == 202:
        accepted = QueuedRequestStatus.model_validate_json(response.content)
        record = store.hgetall(keys.request(accepted.id))
        assert record[b"status"] in (b"queued", b"in_progress")
        if case.path.endswith(("/chat/completions", "/responses")):
            assert _header(response, "location") == f"/v1/requests/{accepted.id}"
        entries = store.xrange(keys.queue(record[b"deployment"].decode()))
        assert any(json.loads(fields[b"message"])["id"] == accepted.id for _, fields in entries), (
            "accepted but not on the queue"
        )
    return status


def _examples(strategy: Any, test: Any) -> None:
    """Run `test` on MAX_EXAMPLES cases of `strategy`, reproducibly."""
    hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )(hypothesis.given(case=strategy)(test))()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_route_invariants(
    stack: IngressThread, store: redis.Redis, method: str, path: str, mode: GenerationMode
) -> None:
    def check(case: Any) -> None:  # hypothesis wants a test that returns None
        _check(case, stack, store, mode)

    _examples(SCHEMA[path][method].as_strategy(generation_mode=mode), check)


@pytest.mark.parametrize(
    "path", [p for m, p in OPERATIONS if p.endswith(("/chat/completions", "/responses"))]
)
def test_low_priority_chat_invariants(stack: IngressThread, store: redis.Redis, path: str) -> None:
    """Valid chat completions and responses sent at low priority: each 202 is on the queue."""
    statuses: list[int] = []

    def low(case: Any) -> None:
        case.headers = {**(case.headers or {}), "x-priority": "low"}
        if "x-reply-key" in case.headers:  # a key of the documented shape, in our namespace
            case.headers["x-reply-key"] = keys.tenant_reply(
                "default", case.headers["x-reply-key"][-8:]
            )
        statuses.append(_check(case, stack, store, GenerationMode.POSITIVE))

    _examples(SCHEMA[path]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE), low)
    assert 202 in statuses, f"no request was queued: {statuses}"


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_valid_line = st.fixed_dictionaries(
    {
        "custom_id": _text.filter(bool),
        "method": st.just("POST"),
        "url": st.sampled_from(["/v1/chat/completions", "/chat/completions"]),
        "body": st.fixed_dictionaries(
            {
                "model": st.sampled_from(["ptu", "paygo"]),
                "messages": st.lists(
                    st.fixed_dictionaries({"role": st.just("user"), "content": _text}),
                    min_size=1,
                    max_size=2,
                ),
            },
            optional={"max_tokens": st.integers(1, 5000), "temperature": st.floats(0, 2)},
        ),
    }
)
_valid_response_line = st.fixed_dictionaries(
    {
        "custom_id": _text.filter(bool),
        "method": st.just("POST"),
        "url": st.just("/v1/responses"),
        "body": st.fixed_dictionaries(
            {"model": st.sampled_from(["ptu", "paygo"]), "input": _text.filter(bool)},
            optional={"max_output_tokens": st.integers(16, 5000), "instructions": _text},
        ),
    }
)
_bad_line = st.one_of(
    _text,
    st.dictionaries(_text, st.integers() | _text, max_size=3).map(json.dumps),
    _valid_line.map(lambda x: json.dumps({**x, "method": "GET"})),
    _valid_line.map(lambda x: json.dumps({**x, "body": {**x["body"], "model": "nope"}})),
    _valid_line.map(lambda x: json.dumps({**x, "body": {**x["body"], "max_tokens": 0}})),
    _valid_line.map(lambda x: json.dumps({**x, "body": {**x["body"], "stream": True}})),
)
_file = st.tuples(
    st.lists(
        st.one_of(_valid_line, _valid_response_line),
        min_size=1,
        max_size=6,
        unique_by=lambda x: x["custom_id"],
    ),
    st.one_of(st.none(), st.none(), st.none(), _bad_line, st.just("duplicate")),
    st.integers(0, 6),
).map(
    lambda t: (
        [json.dumps(x) for x in t[0]][: t[2]]
        + ([] if t[1] is None else [json.dumps(t[0][0]) if t[1] == "duplicate" else t[1]])
        + [json.dumps(x) for x in t[0]][t[2] :]
    )
)


@hypothesis.given(
    lines=_file.filter(lambda ls: all("\n" not in x and "\r" not in x for x in ls)),
    priority=st.sampled_from(["low", "low", "high", "bogus"]),
)
@hypothesis.settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_batch_files_never_5xx_and_never_lose_lines(
    stack: IngressThread, store: redis.Redis, lines: list[str], priority: str
) -> None:
    with httpx2.Client(base_url=stack.url + "/v1", timeout=30) as http:
        content = "\n".join(lines).encode()
        upload = http.post(
            "/files", files={"file": ("f.jsonl", content)}, data={"purpose": "batch"}
        )
        assert upload.status_code in (200, 400), upload.text
        if upload.status_code != 200:
            assert upload.json()["error"]["message"]
            return
        created = http.post(
            "/batches",
            json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
                  "completion_window": "24h"},
            headers={"x-priority": priority},
        )  # fmt: skip
        assert created.status_code in (200, 400), created.text
        if created.status_code != 200:
            return
        batch = created.json()
        assert batch["request_counts"]["total"] == sum(1 for x in lines if x.strip())
        if priority == "low":
            for _ in range(300):  # the expansion job queues the lines in the background
                if store.hget(keys.batch(batch["id"]), "expanded") == b"1":
                    break
                time.sleep(0.05)
            queued = {
                json.loads(fields[b"message"])["id"]
                for _, fields in store.xrange(keys.tenant_queue("ptu", "default", "batch"))
            }
            for index in range(batch["request_counts"]["total"]):
                request_id = line_request_id(batch["id"], index)
                assert request_id in queued, "batch line accepted but not on the queue"
                assert store.exists(keys.request(request_id))
        again = http.get(f"/batches/{batch['id']}")
        assert again.status_code == 200
        cancelled = http.post(f"/batches/{batch['id']}/cancel")
        assert cancelled.status_code in (200, 409)
