"""The simulator's Global Batch deployments and Flex, through the unchanged `openai` SDK:
Files + Batches with a turnaround and failure knobs, `service_tier: "flex"` refused under
contention."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

from simulator.config import SimConfig
from simulator.server import SimulatorThread

KEY = "sim-key"
MESSAGES: Any = [{"role": "user", "content": "hello"}]
SPECS = [
    "ptu=gpt-4o-mini:15",
    "std=gpt-4o-mini:1000000:standard",
    "gb=gpt-4o-mini:1000000:globalbatch",
]


def _lines(n: int, model: str = "gb") -> bytes:
    rows = [
        {
            "custom_id": f"c{i}", "method": "POST", "url": "/chat/completions",
            "body": {"model": model, "messages": MESSAGES, "max_tokens": 20},
        }
        for i in range(n)
    ]  # fmt: skip
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


@contextmanager
def _sim(**knobs: Any) -> Iterator[openai.AzureOpenAI]:
    config = SimConfig.from_specs(SPECS, tbt_ms=0.0, ttft_ms=0.0, api_key=KEY, **knobs)
    with SimulatorThread(config) as server:
        client = openai.AzureOpenAI(
            azure_endpoint=server.url, api_key=KEY, api_version="2025-03-01-preview", max_retries=0
        )
        try:
            yield client
        finally:
            client.close()


def _run(client: openai.AzureOpenAI, n: int, wait_s: float) -> Any:
    uploaded = client.files.create(file=("in.jsonl", _lines(n)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "in_progress"
    deadline = time.monotonic() + wait_s
    while batch.status == "in_progress" and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return batch


def _rows(client: openai.AzureOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x]


def test_a_batch_is_answered_after_its_turnaround_with_every_custom_id_once() -> None:
    with _sim(batch_turnaround_s=0.3) as client:
        started = time.monotonic()
        batch = _run(client, 12, wait_s=10)
        assert time.monotonic() - started >= 0.3
        assert batch.status == "completed"
        rows = _rows(client, batch.output_file_id)
        assert sorted(r["custom_id"] for r in rows) == sorted(f"c{i}" for i in range(12))
        assert all(r["response"]["body"]["usage"]["completion_tokens"] > 0 for r in rows)
        assert batch.error_file_id is None


def test_failure_and_expiry_knobs_put_lines_in_the_error_file() -> None:
    with _sim(batch_turnaround_s=0.0, batch_failure_rate=0.3, batch_expiry_rate=0.3) as client:
        batch = _run(client, 60, wait_s=10)
        assert batch.status == "expired"
        ok, err = _rows(client, batch.output_file_id), _rows(client, batch.error_file_id)
        assert len(ok) + len(err) == 60
        codes = {e["error"]["code"] for e in err}
        assert codes == {"batch_expired", "server_error"}
        assert batch.request_counts.failed == len(err)


def test_a_line_for_another_deployment_is_refused_at_upload() -> None:
    with _sim() as client, pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", _lines(2, model="std")), purpose="batch")


def test_flex_is_refused_under_contention_and_answered_as_flex_otherwise() -> None:
    with _sim(flex_contention=1.0) as client:
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="std", messages=MESSAGES, service_tier="flex")
        plain = client.chat.completions.create(model="std", messages=MESSAGES)
        assert plain.choices
    with _sim(flex_contention=0.0) as client:
        answer = client.chat.completions.create(model="std", messages=MESSAGES, service_tier="flex")
        assert answer.service_tier == "flex"
