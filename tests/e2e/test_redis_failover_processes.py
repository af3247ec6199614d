"""`ptu ingress` and `ptu worker` as processes on a 3+3 Valkey cluster whose queue master
dies while its replica is behind: every accepted request ends in one result or a 410.

The processes are configured as an operator would: `PTU_REDIS_URL` names every node
(seed nodes), `PTU_REDIS_WAIT_REPLICAS=0` (so the window's requests are accepted and then
lost: the loud path), `PTU_RECONCILE_INTERVAL_S=1`. The replica of the stream's master
is cut off, 60 requests are posted, the master is SIGKILLed and the replica promoted.
Every accepted id is polled until it answers: never 404, none `queued` after the bound,
each 410 `request_lost` counted in `ptu_requests_lost_total`, the rest 200 with exactly
one result on its reply key. About a minute.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import httpx2
from redis.cluster import RedisCluster

from devstack.embedded_cluster import EmbeddedCluster
from devstack.stack import SimulatorOptions, Stack
from orchestrator.core import keys
from tests.e2e.worker_helpers import wait_for

DEPLOYMENT = "ptu"
BODY = {"model": DEPLOYMENT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
BEFORE, WINDOW = 40, 60


def post(http: httpx2.Client, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        resp = http.post("/v1/chat/completions", json=BODY, headers={"x-priority": "low"})
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    return ids


def test_processes_lose_nothing_silently_across_a_failover(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=DEPLOYMENT, model="gpt-4o-mini", ptus=100, ttft_ms=150)
    with (
        EmbeddedCluster(replicas=1, node_timeout_ms=2000) as cluster,
        Stack(tmp_path, sim) as stack,
    ):
        stack.start_simulator()
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
        env = {
            "PTU_REDIS_URL": f"redis://{seeds}/0",
            "PTU_REDIS_CLUSTER": "true",
            "PTU_REDIS_WAIT_REPLICAS": "0",
            "PTU_RECONCILE_INTERVAL_S": "1",
            "PTU_DEPLOYMENTS": sim.deployments_json(),
            "PTU_AZURE_OPENAI_ENDPOINT": stack.sim_url,
            "PTU_AZURE_OPENAI_API_KEY": sim.api_key,
            "PTU_MAX_CONCURRENCY": "2",  # slow: a backlog waits in the stream
            "PTU_QUEUE_CLAIM_IDLE_S": "5",
            "PTU_QUEUE_LIVENESS_S": "2",
            "PTU_LOG_LEVEL": "warning",
            "PTU_DRAIN_TIMEOUT_S": "2",
        }
        stack.start_ingress(env)
        stack.start_worker(env)
        with RedisCluster.from_url(cluster.url) as admin:
            port = admin.get_node_from_key(keys.queue(DEPLOYMENT)).port
            wait_for(lambda: admin.exists(keys.INCARNATION) == 1, stack, 30)
        master = next(n for n in cluster.nodes if n.port == port)
        replica = cluster.nodes[cluster.nodes.index(master) + cluster.masters]
        with httpx2.Client(base_url=stack.ingress_url, timeout=60) as http:
            time.sleep(1.5)  # the ingress has read the marker: its ids are signed
            early = post(http, BEFORE)
            cluster.cut_off(replica)
            late = post(http, WINDOW)
            master.kill()
            cluster.promote(replica)
            last: dict[str, int] = {}
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for rid in early + late:
                    if last.get(rid) in (200, 410):
                        continue
                    resp = http.get(f"/v1/requests/{rid}")
                    assert resp.status_code != 404, (rid, resp.text)
                    last[rid] = resp.status_code
                if all(v in (200, 410) for v in last.values()):
                    break
                stack.check_alive()
                time.sleep(0.5)
            metrics = http.get("/metrics").text
        with RedisCluster.from_url(replica.url) as client:  # promoted: alive
            replies = {rid: client.llen(keys.reply(rid)) for rid in early + late}
        stack.check_alive()  # the ingress and the worker lived through it
    tally = Counter(last.values())
    counted = sum(float(v) for v in re.findall(r"ptu_requests_lost_total\{[^}]*\} (\S+)", metrics))
    print(f"\nprocesses: answers {dict(tally)}; ptu_requests_lost_total {counted}")
    assert tally[202] == 0 and set(tally) <= {200, 410}, tally  # none queued for ever
    assert tally[410] >= 1 and counted == tally[410]  # the window's losses, each counted
    assert all(last[rid] == 200 for rid in early)  # replicated before the lag: answered
    assert set(replies.values()) == {1}, replies  # one result each, on its reply key
