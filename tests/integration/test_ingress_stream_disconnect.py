"""A client that hangs up cancels the upstream call; what it got is still recorded.

A stream is cut mid-way (the simulator counts what it generated); a plain call is cut
before its answer, against an upstream that never answers and notes when its connection
closes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from ingress.server import IngressThread
from orchestrator.core import keys
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode
from tests.support.stacks import flush, ingress_on

MAX_TOKENS = 4000
TBT_MS = 5.0
MESSAGES: Any = [{"role": "user", "content": "Write a very long story."}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    # 4,000 tokens at 5 ms each: a 20 s stream
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:100"], tbt_ms=TBT_MS, ttft_ms=0.0, api_key="resource-key"
    )
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def ingress(redis_url: str, sim: SimulatorThread) -> Iterator[IngressThread]:
    flush(redis_url)
    deployments = [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 100}]
    with ingress_on(redis_url, sim, "resource-key", deployments=deployments) as server:
        yield server


def sim_state(sim: SimulatorThread) -> dict[str, Any]:
    state: dict[str, Any] = httpx2.get(f"{sim.url}/sim/state", timeout=10).json()
    ptu: dict[str, Any] = state["deployments"]["ptu"]
    return ptu


def completion_tokens_metric(ingress: IngressThread) -> float:
    text = httpx2.get(f"{ingress.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ptu_tenant_tokens_total{") and 'kind="completion"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_client_hangup_ends_the_upstream_stream(
    ingress: IngressThread, sim: SimulatorThread, redis_url: str
) -> None:
    before = sim_state(sim)
    body = {"model": "ptu", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "stream": True}
    relayed = 0
    with httpx2.Client(base_url=ingress.url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            began = time.monotonic()
            for chunk in resp.iter_raw():
                relayed += chunk.count(b'"content"')
                if time.monotonic() - began > 1.0:
                    break  # the client hangs up after a second
    assert relayed > 0
    deadline = time.monotonic() + 2
    while sim_state(sim)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    after = sim_state(sim)
    assert after["in_flight"] == 0  # the upstream call ended at the hang-up, not after 20 s
    generated = after["completion_tokens"] - before["completion_tokens"]
    # it stopped generating at the hang-up: at most ~2 s of tokens after it (1 s relayed)
    assert 0 < generated < 3.0 / (TBT_MS / 1000), generated
    # what the client was sent is recorded: the usage counted, the call's `complete` event
    deadline = time.monotonic() + 5
    while completion_tokens_metric(ingress) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    counted = completion_tokens_metric(ingress)
    assert 0 < counted <= generated + 1, (counted, generated)
    with redis_mode.connect_sync(redis_url) as client:
        charges = [k for k in client.scan_iter(match=keys.estimate_request("ptu", "*"))]
        completed = [k for k in charges if client.hget(k, "complete") is not None]
    assert len(completed) == 1


class SilentUpstream:
    """A deployment that reads the request and never answers; notes when the caller hangs up."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests = 0
        self.closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SilentUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            self.requests += 1
            while conn.recv(65536):  # the request, then nothing until the caller closes
                pass
            self.closed.set()


def test_a_client_hangup_cancels_a_plain_call(redis_url: str) -> None:
    flush(redis_url)
    deployments = [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 100}]
    body = {"model": "ptu", "messages": MESSAGES, "max_tokens": 100}
    with (
        SilentUpstream() as upstream,
        ingress_on(
            redis_url, upstream, "resource-key", deployments=deployments, request_timeout_s=60,  # type: ignore[arg-type]
        ) as ingress,
    ):  # fmt: skip
        with pytest.raises(httpx2.TimeoutException):
            httpx2.post(f"{ingress.url}/v1/chat/completions", json=body, timeout=1.0)
        # the ingress let its upstream call go at once, not after the 60 s request timeout
        assert upstream.closed.wait(5.0)
        assert upstream.requests == 1
        with redis_mode.connect_sync(redis_url) as client:
            deadline = time.monotonic() + 5
            completed: list[bytes] = []
            while not completed and time.monotonic() < deadline:
                charges = list(client.scan_iter(match=keys.estimate_request("ptu", "*")))
                completed = [k for k in charges if client.hget(k, "complete") is not None]
                time.sleep(0.05)
        assert len(completed) == 1  # the admitted budget was given back
