"""The batch flow through the unchanged openai SDK: upload, create, retrieve, files, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
import redis.asyncio as aioredis

from ingress.server import IngressThread
from orchestrator.core import keys
from orchestrator.core.settings import Settings, load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEPLOYMENTS = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "idle", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "flaky", "model": "gpt-4o-mini", "ptus": 15},
    {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1_000_000},
]


def _line(i: int, model: str = "ptu", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **extra}
    return {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs(
        [
            "ptu=gpt-4o-mini:15",
            "idle=gpt-4o-mini:15",
            "flaky=gpt-4o-mini:15",
            "paygo=gpt-4o-mini:1000000:standard",
        ],
        tbt_ms=0.0,
        ttft_ms=0.0,
    )
    with SimulatorThread(config) as server:
        yield server


def _settings(redis_url: str, sim: SimulatorThread, **extra: Any) -> Settings:
    return load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key="k",
        deployments=DEPLOYMENTS,
        **extra,
    )


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    with IngressThread(_settings(redis_url, sim)) as server:
        yield server


@contextlib.contextmanager
def worker_process(
    redis_url: str,
    sim_url: str,
    deployments: list[dict[str, Any]],
    *only: str,
    api_key: str = "k",
    **overrides: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """`ptu worker` as a real process, consuming `only` (default: every provisioned one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(
        **redis_mode.env(redis_url),
        PTU_AZURE_OPENAI_ENDPOINT=sim_url,
        PTU_AZURE_OPENAI_API_KEY=api_key,
        PTU_DEPLOYMENTS=json.dumps(deployments),
        PTU_LOG_LEVEL="warning",
        PTU_DRAIN_TIMEOUT_S="2",
    )
    env.update(overrides)
    args = [sys.executable, "-m", "orchestrator", "worker"]
    for name in only:
        args += ["--deployment", name]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15):
                log.seek(0)
                print(log.read().decode(errors="replace")[-3000:])


@pytest.fixture(scope="module")
def worker(
    redis_url: str, sim: SimulatorThread, ingress: IngressThread
) -> Iterator[subprocess.Popen[bytes]]:
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "ptu") as proc:
        yield proc


async def _wait_terminal(client: openai.AsyncOpenAI, batch_id: str) -> Any:
    for _ in range(600):
        batch = await client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "cancelled", "expired"):
            return batch
        await asyncio.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish: {batch}")


async def test_batch_flow_with_the_openai_client(
    ingress: IngressThread, worker: subprocess.Popen[bytes]
) -> None:
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    lines = [_line(i, max_tokens=20) for i in range(7)]
    uploaded = await client.files.create(file=("in.jsonl", _jsonl(lines)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(_jsonl(lines))
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"run": "test"},
    )  # fmt: skip
    assert batch.status == "validating"  # answered at once; the lines are queued by a job
    assert batch.request_counts is not None and batch.request_counts.total == 7
    assert batch.metadata == {"run": "test"}

    done = await _wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.completed == 7 and done.request_counts.failed == 0
    assert done.output_file_id and done.completed_at and done.error_file_id is None
    output = [
        json.loads(x) for x in (await client.files.content(done.output_file_id)).text.splitlines()
    ]
    ok_ids = [o["custom_id"] for o in output]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in output)
    assert all(o["response"]["body"]["choices"] for o in output)
    assert ok_ids == [x["custom_id"] for x in lines]  # input order kept
    listed = await client.batches.list()
    assert done.id in [b.id for b in listed.data]
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    await client.close()


async def test_async_azure_client_batch_flow_with_an_error_file(
    ingress: IngressThread, sim: SimulatorThread, worker: subprocess.Popen[bytes], redis_url: str
) -> None:
    # every call to "flaky" fails with a 5xx; a worker with one attempt reports it as failed
    httpx2.patch(f"{sim.url}/sim/deployments/flaky", json={"error_rate": 1.0}).raise_for_status()
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=ingress.url, api_key="unused", api_version="2024-10-21", max_retries=0
    )
    lines = [_line(1, max_tokens=8), _line(2, model="flaky", max_tokens=8)]
    uploaded = await client.files.create(file=("a.jsonl", _jsonl(lines)), purpose="batch")
    assert (await client.files.retrieve(uploaded.id)).filename == "a.jsonl"
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
    )
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "flaky", PTU_MAX_ATTEMPTS="1"):
        done = await _wait_terminal(client, batch.id)  # type: ignore[arg-type]
    assert done.status == "completed"
    assert done.request_counts.completed == 1 and done.request_counts.failed == 1
    output = json.loads((await client.files.content(done.output_file_id)).text)
    assert output["custom_id"] == "q-1" and output["response"]["status_code"] == 200
    error = json.loads((await client.files.content(done.error_file_id)).text)
    assert error["custom_id"] == "q-2" and error["response"]["status_code"] >= 500
    assert error["error"]["message"]
    assert (await client.files.delete(uploaded.id)).deleted
    await client.close()


def test_sync_azure_client_create_and_cancel(ingress: IngressThread) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=ingress.url, api_key="unused", api_version="2024-10-21", max_retries=0
    )
    uploaded = client.files.create(file=("i.jsonl", _jsonl([_line(1, model="idle")])),
                                   purpose="batch")  # fmt: skip
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert client.batches.retrieve(batch.id).status in ("validating", "in_progress")
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    client.close()


async def test_cancel_closes_queued_lines_and_the_worker_skips_them(
    ingress: IngressThread, sim: SimulatorThread, redis: aioredis.Redis, redis_url: str
) -> None:
    # no worker consumes "idle" yet: the lines wait in its queue
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    uploaded = await client.files.create(
        file=("c.jsonl", _jsonl([_line(i, model="idle") for i in range(5)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for _ in range(200):  # every line queued (one chunk) before the cancel
        if (await client.batches.retrieve(batch.id)).status == "in_progress":
            break
        await asyncio.sleep(0.05)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = await _wait_terminal(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.request_counts.failed == 5 and done.output_file_id is None
    errors = [
        json.loads(x) for x in (await client.files.content(done.error_file_id)).text.splitlines()
    ]
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert await redis.xlen(keys.tenant_queue("idle", "default", "batch")) == 5
    # a real worker now drains the queue and skips every cancelled line: nothing reaches the PTU
    with worker_process(redis_url, sim.url, DEPLOYMENTS, "idle"):
        for _ in range(300):
            if await redis.xlen(keys.tenant_queue("idle", "default", "batch")) == 0:
                break
            await asyncio.sleep(0.05)
    assert await redis.xlen(keys.tenant_queue("idle", "default", "batch")) == 0
    async with httpx2.AsyncClient() as http:
        state = (await http.get(sim.url + "/sim/state")).json()["deployments"]["idle"]
    assert state["requests"] == 0
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(batch.id)
    await client.close()


async def test_high_priority_batch_runs_in_the_ingress(ingress: IngressThread) -> None:
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    lines = [_line(i, max_tokens=10) for i in range(4)] + [_line(9, model="paygo", max_tokens=10)]
    uploaded = await client.files.create(file=("h.jsonl", _jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        extra_headers={"x-priority": "high"},
    )  # fmt: skip
    done = await _wait_terminal(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.completed == 5 and done.error_file_id is None
    text = (await client.files.content(done.output_file_id)).text
    assert len(text.splitlines()) == 5
    await client.close()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json\n", "line 1: not valid JSON"),
        (_jsonl([_line(1), _line(1)]), "line 2: duplicate custom_id 'q-1' (first on line 1)"),
        (_jsonl([_line(1), {**_line(2), "method": "GET"}]), "line 2: 'method'"),
        (_jsonl([{**_line(1), "url": "/v1/embeddings"}]), "line 1: 'url'"),
        (_jsonl([_line(1, model="gpt-unknown")]), "line 1: body.model 'gpt-unknown'"),
        (_jsonl([_line(1, stream=True)]), "line 1: body.stream"),
        (_jsonl([_line(1, max_tokens=0)]), "line 1: body: max_tokens"),
        (b"\n\n", "no requests"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_upload_validation_names_the_line(
    ingress: IngressThread, content: bytes, needle: str
) -> None:
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("bad.jsonl", content), purpose="batch")
    assert needle in info.value.message


def test_batch_create_errors(ingress: IngressThread) -> None:
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    uploaded = client.files.create(file=("s.jsonl", _jsonl([_line(1, model="paygo")])),
                                   purpose="batch")  # fmt: skip
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "line 1" in info.value.message and "standard" in info.value.message
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings",  # type: ignore[arg-type]
            completion_window="24h",
        )  # fmt: skip


def test_tenants_do_not_share_files_or_batches(redis_url: str, sim: SimulatorThread) -> None:
    settings = _settings(redis_url, sim, api_keys={"ka": "alpha", "kb": "beta"})
    with IngressThread(settings) as server:
        alpha = openai.OpenAI(base_url=server.url + "/v1", api_key="ka", max_retries=0)
        beta = openai.OpenAI(base_url=server.url + "/v1", api_key="kb", max_retries=0)
        uploaded = alpha.files.create(file=("t.jsonl", _jsonl([_line(1)])), purpose="batch")
        batch = alpha.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        with pytest.raises(openai.NotFoundError):
            beta.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            beta.files.content(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            beta.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            beta.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):
            beta.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        assert beta.batches.list().data == []
        assert alpha.batches.cancel(batch.id).status in ("cancelling", "cancelled")


def test_lists_paginate_as_openai_defines(redis_url: str, sim: SimulatorThread) -> None:
    settings = _settings(redis_url, sim, api_keys={"kp": "pager"})
    with IngressThread(settings) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="kp", max_retries=0)
        files = [
            client.files.create(file=(f"p{i}.jsonl", _jsonl([_line(i, model="idle")])),
                                purpose="batch").id
            for i in range(5)
        ]  # fmt: skip
        first = client.files.list(limit=2)
        assert [f.id for f in first.data] == files[::-1][:2] and first.has_more
        assert [f.id for f in client.files.list(limit=2)] == files[::-1]  # auto-pagination
        oldest = client.files.list(limit=10, order="asc")
        assert [f.id for f in oldest.data] == files and not oldest.has_more
        batches = [
            client.batches.create(input_file_id=f, endpoint="/v1/chat/completions",
                                  completion_window="24h").id
            for f in files[:3]
        ]  # fmt: skip
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == batches[::-1][:2] and page.has_more
        rest = client.batches.list(limit=2, after=page.data[-1].id)
        assert [b.id for b in rest.data] == batches[:1] and not rest.has_more
        assert [b.id for b in client.batches.list(limit=1)] == batches[::-1]
        for b in batches:
            client.batches.cancel(b)
        client.close()


async def test_a_100_mb_file_through_the_sdk(ingress: IngressThread, redis: aioredis.Redis) -> None:
    # 2,000 lines of ~50 KB: uploaded, validated, created, cancelled, its error file read back
    client = openai.AsyncOpenAI(base_url=ingress.url + "/v1", api_key="unused", max_retries=0)
    pad = "x" * 50_000
    content = _jsonl([_line(i, model="idle", max_tokens=5) for i in range(2000)])
    content = content.replace(b"question ", f"{pad} question ".encode())
    assert len(content) > 100_000_000
    uploaded = await client.files.create(file=("big.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content) and uploaded.status == "processed"
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "validating" and batch.request_counts.total == 2000
    for _ in range(400):
        if (await client.batches.retrieve(batch.id)).status == "in_progress":
            break
        await asyncio.sleep(0.05)
    await client.batches.cancel(batch.id)
    done = await _wait_terminal(client, batch.id)
    assert done.status == "cancelled" and done.request_counts.failed == 2000
    errors = (await client.files.content(done.error_file_id)).text.splitlines()
    assert [json.loads(e)["custom_id"] for e in errors] == [f"q-{i}" for i in range(2000)]
    assert (await client.files.content(uploaded.id)).content == content
    await client.close()
