"""`ptu submit` as a real process against a live ingress: progress, results file, errors."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis
from rich.console import Console

from ingress.server import IngressThread
from orchestrator.cli.submit import SubmitError, custom_ids, submit
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import worker_process

DEPLOYMENTS: list[dict[str, Any]] = [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}]


def _line(i: int, **body: Any) -> str:
    payload = {"model": "ptu", "messages": [{"role": "user", "content": f"q{i}"}], **body}
    return json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": payload})  # fmt: skip


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig.from_specs(["ptu=gpt-4o-mini:15"], tbt_ms=0.0)) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = load_settings(
        redis_url=redis_url, redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url, azure_openai_api_key="k",
        deployments=DEPLOYMENTS,
    )  # fmt: skip
    with IngressThread(settings) as server:
        yield server


async def _ptu_submit(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "submit", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_submit_low_priority_end_to_end(
    ingress: IngressThread,
    sim: SimulatorThread,
    redis: aioredis.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    source = tmp_path / "work.jsonl"
    source.write_text("\n".join(_line(i, max_tokens=10) for i in range(8)) + "\n")
    with worker_process(redis_url, sim.url, DEPLOYMENTS):
        status, output = await _ptu_submit(str(source), "--url", ingress.url, "--poll-s", "0.1")
    assert status == 0, output
    assert "8/8" in output and "8 succeeded, 0 failed" in output
    results = [json.loads(x) for x in (tmp_path / "work.results.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"c{i}" for i in range(8)]
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in results)


def test_submit_high_priority_in_process(ingress: IngressThread, tmp_path: Path) -> None:
    source = tmp_path / "now.jsonl"
    source.write_text("\n".join(_line(i, max_tokens=5) for i in range(3)))
    out = tmp_path / "now-out.jsonl"
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="x", max_retries=0)
    screen = io.StringIO()
    status = submit(client, source, out, priority="high", poll_s=0.05,
                    console=Console(file=screen, width=120))  # fmt: skip
    assert status == 0
    assert "3 succeeded, 0 failed" in screen.getvalue()
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{oops", "line 1: not valid JSON"),
        (_line(1) + "\n" + json.dumps({"method": "POST"}), "line 2: 'custom_id'"),
        ("", "no requests"),
    ],
)
def test_bad_files_are_one_line_errors_before_any_call(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "in.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SubmitError) as info:
        custom_ids(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


async def test_server_side_validation_is_one_line(ingress: IngressThread, tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text(_line(1) + "\n" + _line(1) + "\n")
    status, output = await _ptu_submit(str(path), "--url", ingress.url)
    assert status == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1
    assert "line 2: duplicate custom_id 'c1' (first on line 1)" in lines[0]


async def test_unreachable_ingress(tmp_path: Path) -> None:
    from orchestrator.core.serving import free_port

    path = tmp_path / "ok.jsonl"
    path.write_text(_line(1))
    status, output = await _ptu_submit(str(path), "--url", f"http://127.0.0.1:{free_port()}")
    assert status == 1
    assert output.strip().splitlines()[-1].startswith("ptu submit: cannot reach the ingress")


def test_submit_a_file_of_responses_lines(ingress: IngressThread, tmp_path: Path) -> None:
    source = tmp_path / "responses.jsonl"
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses",
         "body": {"model": "ptu", "input": f"q{i}", "max_output_tokens": 16}}
        for i in range(3)
    ]  # fmt: skip
    source.write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "responses-out.jsonl"
    client = openai.OpenAI(base_url=ingress.url + "/v1", api_key="x", max_retries=0)
    status = submit(client, source, out, priority="high", poll_s=0.05,
                    console=Console(file=io.StringIO(), width=120))  # fmt: skip
    assert status == 0
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["response"]["body"]["object"] for r in results] == ["response"] * 3
    (batch,) = [b for b in client.batches.list().data if b.endpoint == "/v1/responses"]
    assert batch.request_counts is not None and batch.request_counts.completed == 3
