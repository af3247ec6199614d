"""`expires_after` on files and `output_expires_after` on batches, through the openai SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types.file_create_params import ExpiresAfter

from ingress.batch.files import FILE_TTL_S
from ingress.server import IngressThread
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

LINE = {
    "custom_id": "q-0", "method": "POST", "url": "/v1/chat/completions",
    "body": {"model": "ptu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
}  # fmt: skip
CONTENT = json.dumps(LINE).encode() + b"\n"
HOUR: ExpiresAfter = {"anchor": "created_at", "seconds": 3600}


class Clock:
    """The ingress's clock, moved on by the test (files expire by it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def ingress(redis_url: str, clock: Clock) -> Iterator[IngressThread]:
    config = SimConfig.from_specs(["ptu=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0)
    with SimulatorThread(config) as sim:
        settings = load_settings(
            redis_url=redis_url,
            redis_cluster=redis_mode.CLUSTER,
            azure_openai_endpoint=sim.url,
            azure_openai_api_key="k",
            deployments=[{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}],
        )
        with IngressThread(settings, clock=clock) as server:
            yield server


@pytest.fixture
async def client(ingress: IngressThread) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=ingress.url + "/v1", api_key="unused", max_retries=0
    ) as c:
        yield c


async def test_a_file_expires_when_it_says_and_is_gone_then(
    client: openai.AsyncOpenAI, clock: Clock
) -> None:
    short = await client.files.create(
        file=("in.jsonl", CONTENT),
        purpose="batch",
        expires_after=HOUR,
    )
    plain = await client.files.create(file=("in.jsonl", CONTENT), purpose="batch")
    assert short.expires_at == short.created_at + 3600
    assert plain.expires_at == plain.created_at + FILE_TTL_S
    assert (await client.files.retrieve(short.id)).expires_at == short.expires_at

    clock.now += 3600
    for gone in (client.files.retrieve(short.id), client.files.content(short.id)):
        with pytest.raises(openai.NotFoundError):
            await gone
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(
            input_file_id=short.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    listed = [f.id async for f in client.files.list()]
    assert plain.id in listed and short.id not in listed
    assert (await client.files.retrieve(plain.id)).id == plain.id


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"},
         "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
         "expires_after.seconds"),
        ({"expires_after[anchor]": "created_at", "expires_after[seconds]": "1.5"},
         "expires_after.seconds"),
        ({"expires_after[anchor]": "last_used", "expires_after[seconds]": "3600"},
         "expires_after.anchor"),
        ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
        ({"expires_after": '{"anchor":"created_at","seconds":3600}'}, "expires_after"),
    ],
)  # fmt: skip
async def test_a_bad_expires_after_is_a_400_naming_it(
    ingress: IngressThread, fields: dict[str, str], param: str
) -> None:
    async with httpx2.AsyncClient(base_url=ingress.url, timeout=10) as http:
        resp = await http.post(
            "/v1/files",
            data={"purpose": "batch", **fields},
            files={"file": ("in.jsonl", CONTENT)},
        )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


async def test_output_expires_after_sets_the_output_files_expiry(
    client: openai.AsyncOpenAI,
) -> None:
    uploaded = await client.files.create(file=("in.jsonl", CONTENT), purpose="batch")
    for bad in ({"anchor": "created_at", "seconds": 60}, {"seconds": 7200}, "7200"):
        with pytest.raises(openai.BadRequestError) as info:
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                completion_window="24h", output_expires_after=bad,  # type: ignore[arg-type]
            )  # fmt: skip
        assert str(info.value.param).startswith("output_expires_after")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
        extra_headers={"x-priority": "high"},
    )  # fmt: skip
    done = await _finished(client, batch.id)
    assert done.status == "completed" and done.output_file_id is not None
    output = await client.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 7200


async def _finished(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(400):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish")
