"""Tenant token limits shared by two `ptu ingress` processes on one Redis, and the
start-up check of the tenant configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from orchestrator.core.serving import free_port
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

DEP = "ptu"
MESSAGES = [{"role": "user", "content": "Summarise the quarterly report in one line."}]
TENANTS = [
    {"name": "rate", "tokens_per_minute": 300},
    {"name": "quota", "token_quota": 200, "token_quota_period": "daily"},
    {"name": "free", "weight": 2},
]
KEYS = {"k-rate": "rate", "k-quota": "quota", "k-free": "free"}


def _env(redis_url: str, sim_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(
        PTU_REDIS_URL=redis_url,
        PTU_REDIS_CLUSTER="true" if redis_mode.CLUSTER else "false",
        PTU_AZURE_OPENAI_ENDPOINT=sim_url,
        PTU_AZURE_OPENAI_API_KEY="k",
        PTU_DEPLOYMENTS=json.dumps([{"name": DEP, "model": "gpt-4o-mini", "ptus": 15}]),
        PTU_TENANTS=json.dumps(TENANTS),
        PTU_API_KEYS=json.dumps(KEYS),
        PTU_LOG_LEVEL="warning",
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig.from_specs([f"{DEP}=gpt-4o-mini:15"], window_s=10.0, tbt_ms=0, ttft_ms=0)
    with SimulatorThread(config) as server:
        yield server


@pytest.fixture(scope="module")
def ingresses(redis_url: str, sim: SimulatorThread) -> Iterator[list[str]]:
    procs, urls = [], []
    try:
        for _ in range(2):
            port = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "ingress", "--port", str(port)],
                env=_env(redis_url, sim.url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        for url, proc in zip(urls, procs, strict=True):
            while True:
                try:
                    if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def _chat(url: str, key: str, priority: str = "high") -> httpx2.Response:
    return httpx2.post(
        f"{url}/v1/chat/completions",
        json={"model": DEP, "messages": MESSAGES, "max_tokens": 60},
        headers={"api-key": key, "x-priority": priority, "x-sim-completion-tokens": "50"},
        timeout=30,
    )


def _until_refused(urls: list[str], key: str, status: int) -> tuple[int, httpx2.Response]:
    """Alternate between the two ingresses until one refuses; (tokens used before, refusal)."""
    used = 0
    for n in range(40):
        resp = _chat(urls[n % 2], key)
        if resp.status_code == status:
            return used, resp
        assert resp.status_code == 200, resp.text
        usage = resp.json()["usage"]
        used += usage["prompt_tokens"] + usage["completion_tokens"]
        time.sleep(0.3)  # the usage write is in the background: let it land
    raise AssertionError(f"never refused with {status} after {used} tokens")


def _eventually_status(url: str, key: str, priority: str, status: int) -> bool:
    """True once a call answers `status` (tried for up to a second, every 0.1 s)."""
    deadline = time.monotonic() + 1.0
    while True:
        if _chat(url, key, priority).status_code == status:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_tokens_per_minute_hold_across_two_ingresses(ingresses: list[str]) -> None:
    used, refused = _until_refused(ingresses, "k-rate", 429)
    assert used >= 300 - 80  # refused only once the window was about full, on either replica
    assert refused.json()["error"]["code"] == "tokens_per_minute_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    retry_s, retry_ms = int(refused.headers["retry-after"]), int(refused.headers["retry-after-ms"])
    assert 1 <= retry_s <= 120 and abs(retry_ms / 1000 - retry_s) <= 1
    # the other replica knows too, for both priorities, once its copy of the counters is
    # re-read (every REFRESH_S, 0.2 s; a second allows for a loaded machine)
    for url in ingresses:
        assert _eventually_status(url, "k-rate", "high", 429)
        assert _eventually_status(url, "k-rate", "low", 429)
    # another tenant is not affected
    assert _chat(ingresses[0], "k-free").status_code == 200


def test_quota_holds_across_two_ingresses(ingresses: list[str]) -> None:
    used, refused = _until_refused(ingresses, "k-quota", 403)
    assert 200 - 80 <= used <= 200 + 80
    error = refused.json()["error"]
    assert (error["code"], error["type"]) == ("token_quota_exceeded", "permission_error")
    for url in ingresses:
        assert _eventually_status(url, "k-quota", "high", 403)
        assert _eventually_status(url, "k-quota", "low", 403)
    metrics = httpx2.get(f"{ingresses[0]}/metrics", timeout=5).text
    assert (
        'ptu_tenant_requests_total{deployment="ptu",priority="high",status="limited",tenant="quota"}'
        in metrics
    )
    assert (
        'ptu_tenant_tokens_total{deployment="ptu",kind="completion",priority="high",tenant="quota"}'
        in metrics
    )
    assert (
        'ptu_ingress_high_latency_seconds_bucket{deployment="ptu",le="0.01",phase="ttfb"}'
        in metrics
    )


@pytest.mark.parametrize(
    ("tenants", "keys", "fragment"),
    [
        ([{"name": "a", "weight": 0}], {"k": "a"}, "PTU_TENANTS [0.weight]"),
        ([{"name": "a"}], {"k": "nobody"}, "PTU_API_KEYS: tenant 'nobody' is not in PTU_TENANTS"),
    ],
)
def test_bad_tenant_config_stops_the_ingress_with_one_line(
    redis_url: str, tenants: list[dict[str, object]], keys: dict[str, str], fragment: str
) -> None:
    env = _env(redis_url, "http://127.0.0.1:9")
    env.update(PTU_TENANTS=json.dumps(tenants), PTU_API_KEYS=json.dumps(keys))
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "ingress", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], done.stderr
