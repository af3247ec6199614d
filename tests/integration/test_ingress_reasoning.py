"""A reasoning-model PTU (`o4-mini`, which refuses `max_tokens`) through the unchanged openai
SDK: high priority plain and streamed, queued, batch lines (low and high priority), with the
defaults and with a client's `max_tokens`; a capped call says so; `governance: false`
passes the body as sent."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.chat.governance import CAPPED_HEADER
from ingress.server import IngressThread
from orchestrator.core import keys
from simulator.server import SimulatorThread
from tests.integration.test_ingress_batch import worker_process
from tests.support import stacks

MESSAGES: Any = [{"role": "user", "content": "Think about it, then say hello."}]
DEPLOYMENTS = [
    {"name": "o4", "model": "o4-mini", "ptus": 15},
    {"name": "o4-raw", "model": "o4-mini", "ptus": 15, "governance": False},
    {"name": "o4-charged", "model": "o4-mini", "ptus": 15},
]
LONG = {"x-sim-completion-tokens": "2500"}
"""Visible output the simulator would give without a bound (more than the 2,000 ceiling)."""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    specs = ["o4=o4-mini:15", "o4-raw=o4-mini:15", "o4-charged=o4-mini:15"]
    with stacks.simulator(specs, "k") as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    with stacks.ingress_on(redis_url, sim, "k", deployments=DEPLOYMENTS) as server:
        yield server


@pytest.fixture(scope="module")
def worker(
    redis_url: str, sim: SimulatorThread, ingress: IngressThread
) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "o4", "o4-charged") as proc:
        yield proc


@pytest.fixture
async def client(ingress: IngressThread) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=ingress.url + "/v1", api_key="unused", max_retries=0
    ) as c:
        yield c


async def test_high_priority_with_the_defaults(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="o4", messages=MESSAGES)
    assert raw.http_response.status_code == 200
    assert CAPPED_HEADER not in raw.headers  # a default set is not a limit lowered
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens
    assert usage.completion_tokens <= 1000  # PTU_DEFAULT_MAX_TOKENS, as max_completion_tokens

    chunks = [c async for c in await client.chat.completions.create(
        model="o4", messages=MESSAGES, stream=True)]  # fmt: skip
    assert any(c.choices and c.choices[0].delta.content for c in chunks)

    response = await client.responses.create(model="o4", input="hello")
    assert response.status == "completed"


async def test_a_clients_max_tokens_becomes_max_completion_tokens(
    client: openai.AsyncOpenAI,
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="o4", messages=MESSAGES, max_tokens=300, extra_headers=LONG
    )
    assert CAPPED_HEADER not in raw.headers
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens == 300  # reasoning + visible

    stream = await client.chat.completions.create(
        model="o4", messages=MESSAGES, max_tokens=300, stream=True,
        stream_options={"include_usage": True}, extra_headers=LONG,
    )  # fmt: skip
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 300


async def test_a_capped_call_carries_the_header(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="o4", messages=MESSAGES, max_tokens=50_000, extra_headers=LONG
    )
    assert raw.http_response.status_code == 200
    assert raw.headers[CAPPED_HEADER] == "2000"
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens == 2000


async def test_governance_false_passes_the_body_as_sent(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:  # the model's own refusal, untouched
        await client.chat.completions.create(model="o4-raw", messages=MESSAGES, max_tokens=300)
    assert info.value.code == "unsupported_parameter"
    raw = await client.chat.completions.with_raw_response.create(
        model="o4-raw", messages=MESSAGES, max_completion_tokens=50_000, extra_headers=LONG
    )
    assert CAPPED_HEADER not in raw.headers
    usage = raw.parse().usage
    assert usage is not None and usage.completion_tokens > 2500  # neither capped nor defaulted


async def test_a_queued_request(
    ingress: IngressThread, worker: subprocess.Popen[bytes], client: openai.AsyncOpenAI
) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="o4", messages=MESSAGES, max_tokens=50_000, extra_headers={"x-priority": "low"}
    )
    assert raw.http_response.status_code == 202
    assert raw.headers[CAPPED_HEADER] == "2000"
    accepted = json.loads(raw.http_response.content)
    plain = await client.chat.completions.with_raw_response.create(
        model="o4", messages=MESSAGES, extra_headers={"x-priority": "low"}
    )
    assert plain.http_response.status_code == 202 and CAPPED_HEADER not in plain.headers
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=40) as http:
        for queued in (accepted, json.loads(plain.http_response.content)):
            doc = (await http.get(f"/v1/requests/{queued['id']}?wait=30")).json()
            assert (doc["status"], doc["status_code"]) == ("completed", 200), doc
            assert doc["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_the_admission_charge_is_the_limit_sent(
    ingress: IngressThread,
    worker: subprocess.Popen[bytes],
    client: openai.AsyncOpenAI,
    redis: aioredis.Redis,
) -> None:
    """The `admit` event charges the `max_completion_tokens` sent: capped high priority
    (2,000), a queued client `max_tokens` renamed (1,500), a queued call with none (1,000)."""
    await client.chat.completions.create(model="o4-charged", messages=MESSAGES, max_tokens=9000)
    low = {"x-priority": "low"}
    queued = [
        await client.chat.completions.with_raw_response.create(
            model="o4-charged", messages=MESSAGES, max_tokens=1500, extra_headers=low
        ),
        await client.chat.completions.with_raw_response.create(
            model="o4-charged", messages=MESSAGES, extra_headers=low
        ),
    ]
    ids = [json.loads(raw.http_response.content)["id"] for raw in queued]
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=40) as http:
        for rid in ids:
            doc = (await http.get(f"/v1/requests/{rid}?wait=30")).json()
            assert doc["status_code"] == 200, doc
    records = [r async for r in redis.scan_iter(match=keys.estimate_request("o4-charged", "*"))]
    charged = sorted([int(await redis.hget(r, "max_tokens") or 0) for r in records])
    assert charged == [1000, 1500, 2000]


def _line(i: int, **extra: Any) -> dict[str, Any]:
    body = {"model": "o4", "messages": [{"role": "user", "content": f"question {i}"}], **extra}
    return {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


async def _run_batch(client: openai.AsyncOpenAI, priority: str) -> list[dict[str, Any]]:
    lines = [_line(0), _line(1, max_tokens=200), _line(2, max_tokens=50_000)]
    content = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    uploaded = await client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        extra_headers={"x-priority": priority},
    )  # fmt: skip
    for _ in range(600):
        batch = await client.batches.retrieve(batch.id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            break
        await asyncio.sleep(0.05)
    assert batch.status == "completed" and batch.error_file_id is None, batch
    assert batch.output_file_id is not None
    text = (await client.files.content(batch.output_file_id)).text
    return [json.loads(x) for x in text.splitlines()]


@pytest.mark.parametrize("priority", ["low", "high"])
async def test_batch_lines(
    worker: subprocess.Popen[bytes], client: openai.AsyncOpenAI, priority: str
) -> None:
    output = await _run_batch(client, priority)
    assert [o["response"]["status_code"] for o in output] == [200, 200, 200]
    completion = [o["response"]["body"]["usage"]["completion_tokens"] for o in output]
    assert completion[0] <= 1000 and completion[1] <= 200 and completion[2] <= 2000
