"""`ptu dlq` and `ptu usage` read what the processes wrote, on whatever Redis the suite runs.

On the 3-master cluster (`PTU_TEST_REDIS=cluster`) these verbs must build a cluster
client from `PTU_REDIS_CLUSTER`, as the processes do: a plain client on one node would
answer MOVED for keys on the others.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from orchestrator.cli.main import CLOSED_PIPE_STATUS, main
from orchestrator.core import keys
from orchestrator.core.schemas import QueuedRequest
from orchestrator.queues.redis_streams import RedisStreamsQueue
from orchestrator.tenants.config import Tenancy
from orchestrator.tenants.ledger import Usage, UsageLedger
from tests import redis_mode
from tests.support import cli

DEPLOYMENTS = json.dumps(
    [{"name": f"d{i}", "model": "gpt-4o-mini", "ptus": 15} for i in range(4)]
)  # several deployments: their keys land on different nodes of a cluster


async def _seed(url: str) -> None:
    client = redis_mode.connect(url)
    try:
        await client.flushdb()
        now = time.time()
        for i in range(4):
            queue = RedisStreamsQueue(client, f"d{i}", "w1")
            await queue.put(
                QueuedRequest(
                    id=f"req_{i}",
                    deployment=f"d{i}",
                    body={"messages": []},
                    tenant="default",
                    reply_key=keys.reply(f"req_{i}"),
                    enqueued_at=now,
                    deadline=now + 600,
                )
            )
            [delivery] = await queue.receive(1, timeout_s=5.0)
            await queue.dead_letter(delivery, "test")
            await queue.close()
        ledger = UsageLedger(client, Tenancy([], {}))
        for i in range(4):
            await ledger.record(Usage("default", f"d{i}", "low", prompt_tokens=100 + i))
    finally:
        await client.aclose()


def test_dlq_and_usage_read_every_node(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_seed(redis_url))
    for name, value in {**redis_mode.env(redis_url), "PTU_DEPLOYMENTS": DEPLOYMENTS}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PTU_AZURE_OPENAI_API_KEY", "k")

    assert main(["dlq", "list", "--json"]) == 0
    out = capsys.readouterr().out
    listed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted(entry["request_id"] for entry in listed) == [f"req_{i}" for i in range(4)]

    assert main(["usage", "--since", "2h", "--by", "deployment", "--format", "json"]) == 0
    out = capsys.readouterr().out
    for i in range(4):
        assert f'"d{i}"' in out and str(100 + i) in out


def test_output_into_a_closed_pipe_ends_quietly(redis_url: str) -> None:
    """`ptu usage --format json | head`, `ptu dlq list --json | head`, ...: no traceback."""
    asyncio.run(_seed(redis_url))
    env = cli.ptu_env({**redis_mode.env(redis_url), "PTU_DEPLOYMENTS": DEPLOYMENTS})
    for args in (
        ["usage", "--since", "2h", "--format", "json"],
        ["dlq", "list", "--json"],
        ["status", "--json"],  # live: one document a second until the reader goes
    ):
        status, stderr = cli.into_closed_pipe(args, env)
        assert (status, stderr) == (CLOSED_PIPE_STATUS, ""), args
