"""When the upstream fails, as real processes: an outage, a second region, a wrong endpoint.

The outage length is `PTU_E2E_OUTAGE_S`-free on purpose: it is the module constant
`OUTAGE_S` (30 s, the acceptance figure), overridable with the environment variable
`OUTAGE_S` for a quicker local run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis

from devstack.stack import API_KEY, SimulatorOptions, Stack
from orchestrator.core import keys
from orchestrator.core.serving import free_port
from tests.e2e.worker_helpers import MESSAGES, enqueue, results_written, wait_for

OUTAGE_S = float(os.environ.get("OUTAGE_S", "30"))
PTU = "outage-ptu"
PAYGO = "paygo"
N = 300


def _sim_state(url: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx2.get(f"{url}/sim/state", headers={"api-key": API_KEY}).json()
    return state["deployments"]


def _patch(url: str, name: str, **changes: float) -> None:
    httpx2.patch(
        f"{url}/sim/deployments/{name}", json=changes, headers={"api-key": API_KEY}
    ).raise_for_status()


def _statuses(client: redis.Redis, ids: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rid in ids:
        raw = client.get(keys.result(rid))
        status = json.loads(raw)["status"] if raw else "none"
        out[status] = out.get(status, 0) + 1
    return out


def _start_second_region(stack: Stack) -> str:
    port = free_port()
    stack._spawn(
        "simulator-2",
        ["simulator", "--port", str(port), "--deployment", f"{PAYGO}=gpt-4o-mini:10000000:standard",
         "--api-key", API_KEY, "--ttft-ms", "20", "--tbt-ms", "0", "--log-level", "warning"],
        {},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    stack._wait_http("simulator-2", f"{url}/sim/state")
    return url


def _low_calls_once_tripped(client: redis.Redis, sim_url: str, outage_s: float) -> int:
    """Wait out the outage; the simulator's low-priority call count when the shared breaker
    first read open (plus the 0.5 s every process takes to adopt it)."""
    ends = time.monotonic() + outage_s
    tripped: int | None = None
    while time.monotonic() < ends:
        if tripped is None and client.hget(keys.breaker(PTU), "state") == b"open":
            time.sleep(0.5)
            tripped = _sim_state(sim_url)[PTU]["by_priority"]["low"]["requests"]
        time.sleep(0.1)
    assert tripped is not None, "the breaker never opened"
    return tripped


def _high_priority_caller(
    ingress: str, stop: threading.Event, seen: list[tuple[int, str | None]]
) -> None:
    with httpx2.Client(base_url=ingress, timeout=30) as client:
        while not stop.is_set():
            resp = client.post(
                f"/openai/deployments/{PTU}/chat/completions?api-version=2024-10-21",
                json={"messages": MESSAGES, "max_tokens": 10},
                headers={"x-priority": "high"},
            )
            seen.append((resp.status_code, resp.headers.get("x-ptu-deployment")))
            time.sleep(0.1)


@pytest.mark.timeout(240 + 2 * OUTAGE_S)
def test_outage_loses_nothing_and_high_priority_spills_to_the_second_region(
    tmp_path: Path,
) -> None:
    sim = SimulatorOptions(deployment=PTU, ptus=100, window_s=10, tbt_ms=0, ttft_ms=300)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        region2 = _start_second_region(stack)
        client = redis.Redis.from_url(stack.redis_url)
        deployments = [
            {"name": PTU, "model": "gpt-4o-mini", "ptus": 100, "spillover": [PAYGO]},
            {"name": PAYGO, "model": "gpt-4o-mini", "kind": "standard", "tpm": 10_000_000,
             "endpoint": region2, "api_key_env": "REGION2_KEY"},
        ]  # fmt: skip
        env = stack.base_env(PTU_DEPLOYMENTS=json.dumps(deployments), REGION2_KEY=API_KEY)
        ids = enqueue(stack.redis_url, PTU, N)
        stack.start_ingress(env)
        stack.start_worker(env)
        wait_for(lambda: results_written(client, ids) >= 30, stack, 60)

        _patch(stack.sim_url, PTU, error_rate=1.0)
        before = _sim_state(stack.sim_url)[PTU]["by_priority"]["low"]["requests"]
        done_before = results_written(client, ids)
        stop, seen = threading.Event(), []
        caller = threading.Thread(
            target=_high_priority_caller, args=(stack.ingress_url, stop, seen)
        )
        caller.start()
        tripped = _low_calls_once_tripped(client, stack.sim_url, OUTAGE_S)
        stop.set()
        caller.join(30)
        during = _sim_state(stack.sim_url)[PTU]["by_priority"]["low"]["requests"] - before
        after_trip = _sim_state(stack.sim_url)[PTU]["by_priority"]["low"]["requests"] - tripped
        done_during = results_written(client, ids) - done_before
        _patch(stack.sim_url, PTU, error_rate=0.0)
        ended = time.monotonic()

        wait_for(lambda: results_written(client, ids) == N, stack, 180)
        recovery_s = time.monotonic() - ended
        statuses = _statuses(client, ids)
        paygo = _sim_state(region2)[PAYGO]["requests"]
        print(
            f"\noutage {OUTAGE_S:g} s: low-priority upstream calls during it {during}, "
            f"after the shared trip {after_trip}, "
            f"results during it {done_during}, final {statuses}, dead letters "
            f"{client.xlen(keys.dead_letter(PTU))}; high priority {len(seen)} calls, "
            f"answered by {sorted({d for _, d in seen if d})}, statuses "
            f"{sorted({s for s, _ in seen})}, region-2 calls {paygo}; "
            f"all done {recovery_s:.1f} s after the outage"
        )
        assert statuses == {"completed": N}  # nothing failed for good
        assert client.xlen(keys.dead_letter(PTU)) == 0
        # once the trip is shared: the calls already sent plus the half-open probes, one per
        # open period (10 s by default). Before it, each process counts its own failures (the
        # ingress's interactive calls too), so how many low-priority calls go out then depends
        # on how fast the machine is: bounded loosely (without a breaker, 10 slots retrying
        # failures that answer at once send hundreds in 30 s).
        assert after_trip <= 10 + OUTAGE_S / 10 + 2, after_trip
        assert during <= 3 * (10 + 5) + OUTAGE_S / 10, during
        assert seen and all(s == 200 for s, _ in seen), seen
        assert all(d == PAYGO for _, d in seen), seen
        client.close()


def test_wrong_endpoint_pauses_then_the_right_one_completes_everything(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=PTU, ptus=100, window_s=10, tbt_ms=0, ttft_ms=20)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        ids = enqueue(stack.redis_url, PTU, 20)
        stack.start_estimator(stack.base_env())  # keeps the estimate fresh: no ingress here
        wrong = f"http://127.0.0.1:{free_port()}"
        stack.start_worker(stack.base_env(PTU_AZURE_OPENAI_ENDPOINT=wrong, PTU_MAX_ATTEMPTS="2"))
        log_file = tmp_path / "logs" / "worker.log"
        wait_for(lambda: "upstream_unreachable_paused" in log_file.read_text(), stack, 30)
        time.sleep(3)  # it stays paused: nothing spends attempts, nothing is dead-lettered
        lines = [x for x in log_file.read_text().splitlines() if "upstream_unreachable" in x]
        assert len(lines) == 1 and wrong in lines[0] and "cause" in lines[0], lines
        assert results_written(client, ids) == 0
        assert client.xlen(keys.dead_letter(PTU)) == 0
        stack.stop("worker")

        stack.start_worker(stack.base_env(), name="worker-2")
        started = time.monotonic()
        wait_for(lambda: results_written(client, ids) == 20, stack, 60)
        took = time.monotonic() - started
        # the breaker the first worker left open waits out its open time, then one probe
        print(f"\nrestarted with the right endpoint: 20 results {took:.1f} s after its start")
        assert _statuses(client, ids) == {"completed": 20}
        client.close()


def _dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")} | env
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "dlq", *args],
        env=full, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_dlq_replay_yields_exactly_one_new_result(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=PTU, ptus=100, window_s=10, tbt_ms=0, ttft_ms=20)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        client = redis.Redis.from_url(stack.redis_url)
        env = stack.base_env(PTU_MAX_ATTEMPTS="1", PTU_BREAKER_MIN_CALLS="1000")
        _patch(stack.sim_url, PTU, error_rate=1.0)
        (rid,) = enqueue(stack.redis_url, PTU, 1)
        stack.start_estimator(env)
        stack.start_worker(env)
        wait_for(lambda: results_written(client, [rid]) == 1, stack, 30)
        # the result is written first, then the delivery dead-lettered (`dispatch/settle`)
        wait_for(lambda: client.xlen(keys.dead_letter(PTU)) >= 1, stack, 30)
        assert client.xlen(keys.dead_letter(PTU)) == 1
        listed = _dlq(env, "list", "--json")
        assert listed.returncode == 0 and rid in listed.stdout, listed

        _patch(stack.sim_url, PTU, error_rate=0.0)
        replayed = _dlq(env, "replay", rid)
        assert replayed.returncode == 0, replayed.stderr
        new_id = replayed.stdout.split(" as ")[-1].strip()
        wait_for(lambda: results_written(client, [new_id]) == 1, stack, 30)
        again = _dlq(env, "replay", rid)  # the entry is gone: nothing more is queued
        assert again.returncode == 1

        docs = [json.loads(x) for x in client.lrange(keys.reply(rid), 0, -1)]
        assert [(d["id"], d["status"]) for d in docs] == [(rid, "failed"), (new_id, "completed")]
        assert docs[1]["replay_of"] == rid
        assert client.xlen(keys.dead_letter(PTU)) == 0
        client.close()
