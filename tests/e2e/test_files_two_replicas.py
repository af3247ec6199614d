"""Two ingress replicas and one worker on one Redis, as processes: the `openai` SDK's Files +
Batches flow works whichever replica each step reaches, with a shared directory (the
Kubernetes RWX volume) and with Blob Storage (Azurite, the emulator).

Every step goes to the other replica than the step before: upload through A, retrieve and
read through B, create the batch through B, poll through both, read the output through A
and B, delete through B and find it gone through A. With a file store per replica (each
pod's own /tmp, as the manifests had) the second step is a 404.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from devstack.stack import SimulatorOptions, Stack
from tests.e2e.worker_helpers import MESSAGES
from tests.support.azurite import ACCOUNT, KEY, azurite_blob

PTU = "files-ptu"
LINES = 6


def _jsonl() -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": PTU, "messages": MESSAGES, "max_tokens": 5},
        }
        for i in range(LINES)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


@contextmanager
def file_store(kind: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The PTU_* variables of one file store every replica shares."""
    if kind == "shared-dir":
        yield {"PTU_FILES_DIR": str(tmp_path / "shared-files")}
        return
    with azurite_blob() as url:
        yield {
            "PTU_BLOB_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={url};"
            ),
            "PTU_BLOB_CONTAINER": "ptu-files",
        }


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["shared-dir", "blob"])
def test_files_and_batches_work_through_either_replica(kind: str, tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment=PTU, ptus=100, window_s=10, tbt_ms=0, ttft_ms=5)
    with file_store(kind, tmp_path) as store, Stack(tmp_path / "stack", sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        env = stack.base_env(**store)
        a_url = stack.start_ingress(env, "ingress")
        b_url = stack.start_ingress(env, "ingress-b")
        stack.start_worker(env)
        a = openai.OpenAI(base_url=f"{a_url}/v1", api_key="k", max_retries=0)
        b = openai.OpenAI(base_url=f"{b_url}/v1", api_key="k", max_retries=0)
        data = _jsonl()

        uploaded = a.files.create(file=("in.jsonl", data), purpose="batch")
        assert b.files.retrieve(uploaded.id).bytes == len(data)
        assert b.files.content(uploaded.id).read() == data
        batch = b.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        replicas = (a, b)
        polls = 0
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            assert time.monotonic() < deadline, f"batch still {batch.status}"
            time.sleep(0.5)
            batch = replicas[polls % 2].batches.retrieve(batch.id)
            polls += 1
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.completed, batch.request_counts.total) == (LINES, LINES)
        assert batch.output_file_id is not None
        out_a = a.files.content(batch.output_file_id).read()
        out_b = b.files.content(batch.output_file_id).read()
        assert out_a == out_b
        rows = [json.loads(line) for line in out_a.decode().splitlines()]
        assert sorted(r["custom_id"] for r in rows) == [f"line-{i}" for i in range(LINES)]
        assert {r["response"]["status_code"] for r in rows} == {200}
        listed = {f.id for f in a.files.list()}
        assert {uploaded.id, batch.output_file_id} <= listed
        assert b.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError):
            a.files.retrieve(uploaded.id)
        stack.check_alive()
