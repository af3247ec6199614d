"""One trace across real processes: `ptu ingress` and `ptu worker` with `OTEL_TRACES_EXPORTER`.

Both processes export with the SDK's console exporter to their own stdout, configured
by the standard variables alone; the only thing linking their spans is the
`traceparent` inside the queued message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO, Any

import httpx2
import pytest

from orchestrator.core.serving import free_port
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEP = "traced-e2e"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], tbt_ms=0.0, ttft_ms=0.0)
    with SimulatorThread(config) as server:
        yield server


def _env(redis_url: str, sim: SimulatorThread) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTU_", "OTEL_"))}
    env.update(
        **redis_mode.env(redis_url),
        PTU_AZURE_OPENAI_ENDPOINT=sim.url,
        PTU_AZURE_OPENAI_API_KEY="k",
        PTU_DEPLOYMENTS=json.dumps([{"name": DEP, "model": "gpt-4o-mini", "ptus": 15}]),
        PTU_LOG_LEVEL="warning",
        PTU_DRAIN_TIMEOUT_S="2",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    return env


def _spans(out: IO[bytes]) -> list[dict[str, Any]]:
    out.seek(0)
    text, decoder, spans, at = out.read().decode(), json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return spans
        span, at = decoder.raw_decode(text, at)
        spans.append(span)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_one_trace_from_the_ingress_process_to_the_worker_process(
    redis_url: str, sim: SimulatorThread
) -> None:
    env = _env(redis_url, sim)
    port = free_port()
    ingress_cmd = [sys.executable, "-m", "orchestrator", "ingress", "--port", str(port)]
    worker_cmd = [sys.executable, "-m", "orchestrator", "worker"]
    with tempfile.TemporaryFile() as ingress_out, tempfile.TemporaryFile() as worker_out:
        ingress = subprocess.Popen(ingress_cmd, env=env, stdout=ingress_out)
        worker = subprocess.Popen(worker_cmd, env=env, stdout=worker_out)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx2.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    time.sleep(0.1)
            accepted = httpx2.post(
                url + "/v1/chat/completions",
                json={"model": DEP, "messages": [{"role": "user", "content": "hi"}]},
                headers={"x-priority": "low", "traceparent": PARENT},
                timeout=10,
            )
            assert accepted.status_code == 202, accepted.text
            done = httpx2.get(
                url + f"/v1/requests/{accepted.json()['id']}", params={"wait": 30}, timeout=40
            )
            assert done.status_code == 200 and done.json()["status"] == "completed", done.text
        finally:
            _stop(worker)  # each flushes its spans on the way out
            _stop(ingress)
        assert (ingress.returncode, worker.returncode) == (0, 0)
        by_process = {"ingress": _spans(ingress_out), "worker": _spans(worker_out)}
    ours = {
        name: {s["kind"]: s for s in spans if s["context"]["trace_id"] == f"0x{TRACE}"}
        for name, spans in by_process.items()
    }
    assert set(ours["ingress"]) == {"SpanKind.SERVER", "SpanKind.PRODUCER"}
    assert set(ours["worker"]) == {"SpanKind.CONSUMER", "SpanKind.CLIENT"}
    producer = ours["ingress"]["SpanKind.PRODUCER"]
    consumer = ours["worker"]["SpanKind.CONSUMER"]
    call = ours["worker"]["SpanKind.CLIENT"]
    assert consumer["parent_id"] == producer["context"]["span_id"]
    assert call["parent_id"] == consumer["context"]["span_id"]
    assert producer["resource"]["attributes"]["service.name"] == "ptu-ingress"
    assert call["resource"]["attributes"]["service.name"] == "ptu-worker"
    usage = done.json()["usage"]
    assert call["attributes"]["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert call["attributes"]["gen_ai.request.model"] == DEP
