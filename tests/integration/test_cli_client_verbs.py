"""`ptu result` and `ptu batches` against a real ingress (and a worker) over loopback."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from openai.types import Batch

from ingress.server import IngressThread
from orchestrator.cli.main import CLOSED_PIPE_STATUS
from orchestrator.core.serving import free_port
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.integration.test_ingress_batch import worker_process
from tests.support import cli

DEPLOYMENTS: list[dict[str, Any]] = [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}]
BODY = {"model": "ptu", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig.from_specs(["ptu=gpt-4o-mini:15"], tbt_ms=0.0)) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    settings = load_settings(
        redis_url=redis_url, redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url, azure_openai_api_key="k", deployments=DEPLOYMENTS,
    )  # fmt: skip
    with IngressThread(settings) as server:
        yield server


def ptu(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    """A client verb with the ingress given by PTU_INGRESS_URL only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env["PTU_INGRESS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip


def enqueue(url: str) -> str:
    response = httpx2.post(
        f"{url}/v1/chat/completions", json=BODY, headers={"x-priority": "low"}, timeout=10
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_result_while_queued_then_completed(
    redis_url: str, sim: SimulatorThread, ingress: IngressThread
) -> None:
    rid = enqueue(ingress.url)
    waiting = ptu("result", rid, url=ingress.url)  # no worker yet: still queued
    assert waiting.returncode == 3, waiting.stderr
    assert json.loads(waiting.stdout)["status"] == "queued"
    with worker_process(redis_url, sim.url, DEPLOYMENTS):
        done = ptu("result", rid, "--wait", "60", url=ingress.url)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["id"] == rid and doc["status"] == "completed" and doc["status_code"] == 200


def test_result_errors_are_one_line(ingress: IngressThread) -> None:
    unknown = ptu("result", "req_nope", url=ingress.url)
    assert unknown.returncode == 1
    assert unknown.stderr.count("\n") == 1 and "no request req_nope" in unknown.stderr
    down = f"http://127.0.0.1:{free_port()}"
    unreachable = ptu("result", "req_x", url=down)
    assert unreachable.returncode == 1 and "Traceback" not in unreachable.stderr
    assert unreachable.stderr.strip() == (
        f"ptu result: cannot reach the ingress at {down} (--url or PTU_INGRESS_URL)"
    )


def create_batch(client: openai.OpenAI) -> Batch:
    """A low-priority batch of 3 lines (no worker runs them)."""
    lines = "".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": BODY}) + "\n"
        for i in range(3)
    )  # fmt: skip
    file = client.files.create(file=("in.jsonl", io.BytesIO(lines.encode())), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
        extra_headers={"x-priority": "low"},
    )  # fmt: skip


def test_batches_list_show_cancel(ingress: IngressThread) -> None:
    client = openai.OpenAI(base_url=f"{ingress.url}/v1", api_key="unused")
    batch = create_batch(client)
    for _ in range(300):  # validation runs beside the request: wait until it is in progress
        if client.batches.retrieve(batch.id).status != "validating":
            break
        time.sleep(0.1)
    listed = ptu("batches", "list", url=ingress.url)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith(batch.id))
    assert "in_progress" in line and "0/3 done" in line
    shown = ptu("batches", "show", batch.id, url=ingress.url)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == batch.id
    cancelled = ptu("batches", "cancel", batch.id, url=ingress.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(batch.id) and "cancel" in cancelled.stdout
    missing = ptu("batches", "show", "batch_nope", url=ingress.url)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("ptu batches: the ingress answered 404")
    no_id = ptu("batches", "cancel", url=ingress.url)
    assert no_id.returncode == 1 and "give the batch id" in no_id.stderr
    client.close()


def test_client_verbs_into_a_closed_pipe_end_quietly(ingress: IngressThread) -> None:
    """`ptu result ID | head`, `ptu batches list --json | head`: no traceback."""
    rid = enqueue(ingress.url)
    with openai.OpenAI(base_url=f"{ingress.url}/v1", api_key="unused") as client:
        create_batch(client)
    env = cli.ptu_env({"PTU_INGRESS_URL": ingress.url})
    for args in (["result", rid], ["batches", "list", "--json"]):
        status, stderr = cli.into_closed_pipe(args, env)
        assert (status, stderr) == (CLOSED_PIPE_STATUS, ""), args
