"""The Responses API through the ingress with the unchanged openai SDK: high, low and batch."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import Response

from ingress.server import IngressThread
from orchestrator.core.schemas import TokenEvent
from orchestrator.core.settings import Settings, load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import worker_process

AZURE_API_VERSION = "2025-04-01-preview"
DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "spilly", "model": "gpt-4o-mini", "ptus": 15, "spillover": "paygo"},
    {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1_000_000},
]
STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


class Sink:
    """Every token event the ingress records (in place of the Redis estimate)."""

    def __init__(self) -> None:
        self.events: list[TokenEvent] = []

    async def record(self, event: TokenEvent) -> None:
        self.events.append(event)

    async def complete_of(self, predicate: Any) -> TokenEvent:
        for _ in range(200):
            found = [e for e in self.events if e.phase == "complete" and predicate(e)]
            if found:
                return found[-1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no complete event: {self.events}")


@pytest.fixture(scope="module", autouse=True)
def _fresh_redis(redis_url: str) -> None:
    """Nothing an earlier module left: its queued `ptu` requests would reach this worker."""
    with redis_mode.connect_sync(redis_url) as client:
        client.flushdb()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "spilly=gpt-4o-mini:15", "paygo=gpt-4o-mini:1000000:standard"],
        tbt_ms=0.0,
        ttft_ms=0.0,
        api_key="resource-key",
    )
    with SimulatorThread(config) as server:
        yield server


def _settings(redis_url: str, sim: SimulatorThread) -> Settings:
    return load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="resource-key",
        deployments=DEPLOYMENTS,
    )


@pytest.fixture(scope="module")
def sink() -> Sink:
    return Sink()


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    with IngressThread(_settings(redis_url, sim)) as server:
        yield server


@pytest.fixture(scope="module")
def observed(redis_url: str, sim: SimulatorThread, sink: Sink) -> Iterator[IngressThread]:
    """An ingress whose token events go to `sink` (the other one feeds the Redis estimate)."""
    with IngressThread(_settings(redis_url, sim), token_sink=sink) as server:
        yield server


@pytest.fixture(scope="module")
def worker(redis_url: str, sim: SimulatorThread) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu", api_key="resource-key") as proc:
        yield proc


def _clients(ingress: IngressThread) -> list[openai.AsyncOpenAI]:
    """The three ways the SDK reaches the Responses API: /v1, /openai/v1 and Azure's /openai."""
    return [
        openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0),
        openai.AsyncOpenAI(base_url=ingress.url + "/openai/v1", api_key="unused", max_retries=0),
        openai.AsyncAzureOpenAI(
            azure_endpoint=ingress.url, api_key="unused", api_version=AZURE_API_VERSION,
            max_retries=0,
        ),
    ]  # fmt: skip


@pytest.fixture
async def clients(ingress: IngressThread) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    made = _clients(ingress)
    yield made
    for client in made:
        await client.close()


@pytest.fixture
async def watched(observed: IngressThread) -> AsyncIterator[list[openai.AsyncOpenAI]]:
    made = _clients(observed)
    yield made
    for client in made:
        await client.close()


async def test_high_priority_plain_response_with_governance_and_usage(
    watched: list[openai.AsyncOpenAI], sink: Sink
) -> None:
    for client in watched:
        raw = await client.responses.with_raw_response.create(
            model="ptu", input="Say hello to the provisioned deployment.", instructions="Be brief."
        )
        assert raw.http_response.status_code == 200
        assert raw.headers["x-ptu-deployment"] == "ptu"
        assert raw.headers["azure-openai-deployment-utilization"].endswith("%")
        response = raw.parse()
        assert response.object == "response" and response.status == "completed"
        assert response.output_text
        assert response.max_output_tokens == 1000  # PTU_DEFAULT_MAX_TOKENS set by the ingress
        assert response.usage is not None and response.usage.output_tokens > 0
        usage = response.usage
        event = await sink.complete_of(lambda e, u=usage: e.completion_tokens == u.output_tokens)
        assert event.prompt_tokens == usage.input_tokens and event.deployment == "ptu"

    capped = await watched[0].responses.create(
        model="ptu", input="A long essay, please.", max_output_tokens=50_000,
        extra_headers={"x-sim-completion-tokens": "3000"},
    )  # fmt: skip
    # capped at PTU_MAX_TOKENS_CEILING (2,000) before the call; the output stopped there
    assert capped.max_output_tokens == 2000
    assert capped.status == "incomplete" and capped.incomplete_details is not None
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert capped.usage is not None and capped.usage.output_tokens == 2000


async def test_high_priority_stream_passes_every_event_and_feeds_the_estimate(
    watched: list[openai.AsyncOpenAI], sink: Sink
) -> None:
    for client in watched:
        stream = await client.responses.create(
            model="ptu",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Stream it."}]}],
            max_output_tokens=40,
            extra_headers={"x-sim-completion-tokens": "12"},
            stream=True,
        )
        events = [event async for event in stream]
        kinds = [e.type for e in events]
        assert list(dict.fromkeys(kinds)) == STREAM_EVENTS
        assert kinds.count("response.output_text.delta") == 12
        assert [e.sequence_number for e in events] == list(range(len(events)))
        final = events[-1]
        assert final.type == "response.completed"
        usage = final.response.usage
        assert usage is not None and usage.output_tokens == 12
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert final.response.output_text == text
        # the usage of `response.completed` is what the complete token event carries
        event = await sink.complete_of(lambda e: e.completion_tokens == 12)
        assert event.prompt_tokens == usage.input_tokens and event.max_tokens == 40

    # the SDK's own stream helper assembles the same final response
    async with watched[0].responses.stream(model="ptu", input="Once more.") as helper:
        async for _ in helper:
            pass
        assert (await helper.get_final_response()).output_text


async def test_spillover_names_the_next_deployment_in_the_body(
    sim: SimulatorThread, clients: list[openai.AsyncOpenAI]
) -> None:
    httpx2.patch(sim.url + "/sim/deployments/spilly", json={"error_rate": 1.0})
    try:
        raw = await clients[0].responses.with_raw_response.create(model="spilly", input="hi")
        stream = await clients[0].responses.create(model="spilly", input="hi", stream=True)
        events = [e async for e in stream]
    finally:
        httpx2.patch(sim.url + "/sim/deployments/spilly", json={"error_rate": 0.0})
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ptu-deployment"] == "paygo"
    assert raw.parse().status == "completed"
    assert events[-1].type == "response.completed"


async def test_low_priority_is_queued_and_answered_as_a_response_by_the_worker(
    ingress: IngressThread,
    sim: SimulatorThread,
    clients: list[openai.AsyncOpenAI],
    worker: subprocess.Popen[bytes],
) -> None:
    before = httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]["by_priority"]
    accepted = []
    for client in clients:
        raw = await client.responses.with_raw_response.create(
            model="ptu", input="Summarise the quarterly report.", max_output_tokens=30,
            extra_headers={"x-priority": "low"},
        )  # fmt: skip
        assert raw.http_response.status_code == 202
        body = raw.http_response.json()
        assert body["object"] == "queued_request" and body["status"] == "queued"
        assert raw.headers["location"] == f"/v1/requests/{body['id']}"
        accepted.append(body)
    fetch = clients[0]  # GET /v1/requests/{id} lives under /v1
    for body in accepted:
        done = await fetch.get(
            f"/requests/{body['id']}", cast_to=httpx2.Response, options={"params": {"wait": 20}}
        )
        assert done.status_code == 200
        doc = done.json()
        assert doc["status"] == "completed" and doc["status_code"] == 200, doc
        response = Response.model_validate(doc["response"])  # the Responses object itself
        assert response.output_text and response.max_output_tokens == 30
        assert doc["usage"]["output_tokens"] <= 30 and doc["usage"]["input_tokens"] > 0
    after = httpx2.get(sim.url + "/sim/state").json()["deployments"]["ptu"]["by_priority"]
    assert after["low"]["requests"] - before.get("low", {}).get("requests", 0) == len(accepted)


async def test_low_priority_stream_is_refused(clients: list[openai.AsyncOpenAI]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await clients[0].responses.create(
            model="ptu", input="hi", stream=True, extra_headers={"x-priority": "low"}
        )
    assert info.value.body["param"] == "stream"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"input": "hi"}, 400, "invalid_request"),
        ({"model": "nope", "input": "hi"}, 404, "DeploymentNotFound"),
        ({"model": "ptu", "input": "hi", "background": "yes"}, 400, "invalid_request"),
        ({"model": "ptu", "input": "hi", "max_output_tokens": 0}, 400, "invalid_request"),
        ({"model": "ptu", "input": 7}, 400, "invalid_request"),
    ],
)
async def test_bad_responses_bodies_answer_in_the_envelope(
    ingress: IngressThread, body: dict[str, Any], status: int, code: str
) -> None:
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=30) as http:
        resp = await http.post("/v1/responses", json=body)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code


def _line(i: int) -> dict[str, Any]:
    body = {"model": "ptu", "input": f"question {i}", "max_output_tokens": 20}
    return {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses", "body": body}


async def _terminal(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(500):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


@pytest.mark.parametrize("priority", ["low", "high"])
async def test_a_batch_of_responses_lines_through_files_and_batches(
    clients: list[openai.AsyncOpenAI], worker: subprocess.Popen[bytes], priority: str
) -> None:
    client = clients[0]
    lines = [_line(i) for i in range(5)]
    content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    uploaded = await client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h",
        extra_headers={"x-priority": priority},
    )  # fmt: skip
    assert batch.endpoint == "/v1/responses"
    done = await _terminal(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None and done.request_counts.completed == 5
    assert done.output_file_id and done.error_file_id is None
    text = (await client.files.content(done.output_file_id)).text
    output = [json.loads(x) for x in text.splitlines()]
    assert [o["custom_id"] for o in output] == [x["custom_id"] for x in lines]
    for o in output:
        assert o["response"]["status_code"] == 200 and o["error"] is None
        response = Response.model_validate(o["response"]["body"])
        assert response.object == "response" and response.output_text
        assert response.usage is not None and response.usage.output_tokens <= 20


async def test_a_batch_line_is_checked_as_its_url_says(
    clients: list[openai.AsyncOpenAI],
) -> None:
    bad = {**_line(0), "body": {"model": "ptu", "input": 3}}
    with pytest.raises(openai.BadRequestError) as info:  # checked at upload already
        await clients[0].files.create(file=("a.jsonl", json.dumps(bad).encode()), purpose="batch")
    assert "line 1: body: input" in str(info.value)
    response_line = _line(1)
    as_chat = {**response_line, "url": "/v1/chat/completions"}
    with pytest.raises(openai.BadRequestError) as info:  # a chat line needs messages
        await clients[0].files.create(
            file=("b.jsonl", json.dumps(as_chat).encode()), purpose="batch"
        )
    assert "line 1: body: messages" in str(info.value)
    ok = await clients[0].files.create(
        file=("c.jsonl", json.dumps(response_line).encode()), purpose="batch"
    )
    assert ok.purpose == "batch"


def test_the_readme_responses_example_runs_as_written(
    ingress: IngressThread, worker: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### The Responses API", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "8080" not in code  # the reader's ingress is wherever PTU_INGRESS_URL says
    monkeypatch.setenv("PTU_INGRESS_URL", ingress.url)
    code = code.replace("gpt-4o-mini-ptu", "ptu")
    scope: dict[str, Any] = {"print": lambda *args: None}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["raw"].http_response.status_code == 202
    done = scope["done"]
    assert done["status"] == "completed", done
    assert Response.model_validate(done["response"]).output_text
