"""Redis dies under a running ingress: high priority still answers, from the deployment.

A real ingress (thread), a real simulator and a real server of our own that the test
kills. The interactive path makes its Redis calls (shared breaker, the tenant's counters,
token events) under a small deadline and fails open (`core/fail_open`): every
high-priority call is answered 200 by the simulator and the fail-opens are counted.
Low priority still needs Redis to store the request: 503 with `retry-after`. Liveness
(`/healthz`) does not ask Redis; readiness (`/readyz`) says it is missing. The p50 of
both phases is printed (run with `-s`), never asserted. `REDIS_DOWN_CALLS` overrides the
number of calls per phase.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import time
from collections.abc import Iterator

import httpx2
import pytest
import redis
from pydantic import SecretStr

from devstack.embedded_redis import EmbeddedRedis
from ingress.server import IngressThread
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.tenants.config import TenantConfig
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

pytestmark = pytest.mark.skipif(redis_mode.CLUSTER, reason="kills its own single server")

DEP = "ptu"
BODY = {"model": DEP, "messages": [{"role": "user", "content": "one line"}], "max_tokens": 10}
CALLS = int(os.environ.get("REDIS_DOWN_CALLS", "20"))
KEY = "k-limited"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:100"], tbt_ms=0.0, ttft_ms=20.0)
    with SimulatorThread(config) as server:
        yield server


def settings_for(server: EmbeddedRedis, sim: SimulatorThread) -> Settings:
    return Settings(
        redis_url=server.url,
        deployments=[DeploymentConfig(name=DEP, model="gpt-4o-mini", ptus=100)],
        azure_openai_endpoint=sim.url,
        azure_openai_api_key=SecretStr("k"),
        # a limited tenant: its counters are read on the interactive path
        tenants=[TenantConfig(name="limited", tokens_per_minute=10_000_000)],
        api_keys={KEY: "limited"},
    )


def high_calls(http: httpx2.Client, n: int) -> tuple[list[int], list[float]]:
    statuses, took = [], []
    for _ in range(n):
        started = time.perf_counter()
        resp = http.post("/v1/chat/completions", json=BODY, headers={"x-priority": "high"})
        took.append(time.perf_counter() - started)
        statuses.append(resp.status_code)
    return statuses, took


def fail_opens(http: httpx2.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    found = re.findall(r'ptu_ingress_redis_fail_open_total\{what="(\w+)"\} (\S+)', text)
    return {what: float(value) for what, value in found}


def test_high_priority_answers_with_redis_killed_and_counts_the_fail_opens(
    sim: SimulatorThread,
) -> None:
    with EmbeddedRedis(aof=False) as server:
        settings = settings_for(server, sim)
        with (
            IngressThread(settings) as ingress,
            httpx2.Client(base_url=ingress.url, timeout=60, headers={"api-key": KEY}) as http,
        ):
            high_calls(http, 3)  # warm: connections to the simulator and Redis
            up_statuses, up = high_calls(http, CALLS)
            assert set(up_statuses) == {200}
            assert fail_opens(http) == {}  # nothing failed open while Redis answered

            server.kill(signal.SIGKILL)
            down_statuses, down = high_calls(http, CALLS)
            low = http.post("/v1/chat/completions", json=BODY, headers={"x-priority": "low"})
            health, ready = http.get("/healthz"), http.get("/readyz")
            counted = fail_opens(http)
            print(
                f"\nhigh priority p50 through the ingress: Redis up "
                f"{statistics.median(up) * 1000:.1f} ms, Redis killed "
                f"{statistics.median(down) * 1000:.1f} ms (max {max(down) * 1000:.1f} ms, "
                f"{CALLS} calls each); fail-opens {counted}; killed, ms: "
                f"{[round(t * 1000) for t in down]}"
            )
            server.restart()  # the ingress then stops as usual

        assert down_statuses == [200] * CALLS  # every call answered by the deployment
        assert counted.get("breaker_sync", 0) >= 1
        assert counted.get("limits", 0) >= 1
        assert low.status_code == 503, low.text  # low priority cannot be stored: retry later
        assert int(low.headers["retry-after"]) >= 1
        assert health.status_code == 200 and health.json() == {"status": "ok"}  # liveness
        assert ready.status_code == 503  # readiness says Redis is missing
        assert "redis: unavailable" in ready.json()["error"]["message"]


def test_high_priority_answers_while_redis_hangs(sim: SimulatorThread) -> None:
    """Redis alive but answering nothing (`CLIENT PAUSE … ALL`): the deadlines cut in."""
    with EmbeddedRedis(aof=False) as server:
        settings = settings_for(server, sim)
        with (
            IngressThread(settings) as ingress,
            httpx2.Client(base_url=ingress.url, timeout=60, headers={"api-key": KEY}) as http,
            redis.Redis.from_url(server.url) as admin,
        ):
            high_calls(http, 3)
            _, up = high_calls(http, CALLS)
            pause_s = 8
            admin.execute_command("CLIENT", "PAUSE", pause_s * 1000, "ALL")
            paused_at = time.monotonic()
            hung_statuses, hung = high_calls(http, CALLS)
            health = http.get("/healthz")
            counted = fail_opens(http)
            print(
                f"\nhigh priority p50 through the ingress: Redis up "
                f"{statistics.median(up) * 1000:.1f} ms, Redis hung "
                f"{statistics.median(hung) * 1000:.1f} ms (max {max(hung) * 1000:.1f} ms, "
                f"{CALLS} calls each); fail-opens {counted}"
            )
            time.sleep(max(0.0, pause_s - (time.monotonic() - paused_at)) + 0.5)  # let it end
        assert time.monotonic() - paused_at >= pause_s  # the calls ran inside the hang
        assert hung_statuses == [200] * CALLS
        assert health.status_code == 200
        assert counted.get("breaker_sync", 0) + counted.get("limits", 0) >= 1


def p99(took: list[float]) -> float:
    return statistics.quantiles(took, n=100, method="inclusive")[98]


def timed_for(http: httpx2.Client, seconds: float) -> tuple[list[int], list[float]]:
    """High-priority calls one after another for `seconds`."""
    statuses: list[int] = []
    took: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s, t = high_calls(http, 1)
        statuses += s
        took += t
    return statuses, took


def test_high_priority_latency_with_redis_up_stopped_and_hung(sim: SimulatorThread) -> None:
    """p50/p99 through the ingress with Redis up, SIGKILLed and SIGSTOPped for 15 s (printed,
    not asserted: the machine is shared); every call answered 200, `/healthz` too."""
    hang_s = float(os.environ.get("REDIS_HANG_S", "15"))
    with EmbeddedRedis(aof=False) as server:
        settings = settings_for(server, sim)
        with (
            IngressThread(settings) as ingress,
            httpx2.Client(base_url=ingress.url, timeout=60, headers={"api-key": KEY}) as http,
        ):
            with redis.Redis.from_url(server.url) as admin:
                pid = int(admin.info("server")["process_id"])
            high_calls(http, 5)
            up_statuses, up = timed_for(http, hang_s)
            os.kill(pid, signal.SIGSTOP)
            try:
                hung_statuses, hung = timed_for(http, hang_s)
                health = [http.get("/healthz") for _ in range(3)]
            finally:
                os.kill(pid, signal.SIGCONT)
            time.sleep(1.0)  # back to normal, then gone
            server.kill(signal.SIGKILL)
            down_statuses, down = timed_for(http, hang_s)
            server.restart()
            counted = fail_opens(http)
    for name, took in (("up", up), ("hung (SIGSTOP)", hung), ("stopped (SIGKILL)", down)):
        print(
            f"\nhigh priority through the ingress, Redis {name}: p50 "
            f"{statistics.median(took) * 1000:.1f} ms, p99 {p99(took) * 1000:.1f} ms, "
            f"slowest {[round(t * 1000) for t in sorted(took)[-5:]]} ms ({len(took)} calls)"
        )
    print(f"p99 hung / up: {p99(hung) / p99(up):.2f}; fail-opens {counted}")
    assert set(up_statuses) == {200}
    assert set(hung_statuses) == {200}, hung_statuses  # every call answered while Redis hung
    assert set(down_statuses) == {200}
    assert all(h.status_code == 200 for h in health)  # liveness never asks Redis
