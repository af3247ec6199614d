"""`PTU_EVENTHUB_CHECKPOINT_STORE=blob`: checkpoints in Blob storage, where KEDA reads them.

Against Azurite (Microsoft's Azure Storage emulator, from npm, installed by `make install`
into deploy/validate) on a loopback port: the Event Hubs queue, driven by the SDK's own
EventProcessor over an in-memory partition log (`eventhubs_fakes`), balances and
checkpoints through the SDK's `BlobCheckpointStore`, and each acknowledged partition's
checkpoint lands as blob metadata at `<namespace>/<hub>/<consumer group>/checkpoint/<id>`,
the layout KEDA's `azure-eventhub` scaler reads with `checkpointStrategy: blobMetadata`.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.eventhub.extensions.checkpointstoreblobaio._vendor.storage.blob.aio import (
    ContainerClient,
)

from orchestrator.core.errors import ConfigError
from orchestrator.core.serving import free_port
from orchestrator.core.settings import load_settings
from orchestrator.queues.eventhubs.queue import EventHubsQueue
from tests.integration.eventhubs_fakes import CG, HUB, NS
from tests.integration.test_queue_contract import request
from tests.integration.test_queue_eventhubs import Harness, receive_all

AZURITE = Path(__file__).resolve().parents[2] / "deploy" / "validate" / "node_modules" / ".bin"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's published development-account key (not a secret)."""
CONTAINER = "ptu-checkpoints"


def _wait_for(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"Azurite did not listen on {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = AZURITE / "azurite-blob"
    if not binary.exists():
        pytest.skip("Azurite is not installed (make install runs npm ci in deploy/validate)")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent",
         "--skipApiVersionCheck", "--location", str(tmp_path_factory.mktemp("azurite"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(port, 30.0)
        yield (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
    finally:
        proc.terminate()  # Azurite waits for idle keep-alive connections: then kill
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
async def container(azurite: str) -> AsyncIterator[ContainerClient]:
    client = ContainerClient.from_connection_string(azurite, CONTAINER)
    async with client:
        if not await client.exists():
            await client.create_container()
        async for blob in client.list_blobs():
            await client.delete_blob(blob.name)
        yield client


async def _metadata(container: ContainerClient, prefix: str) -> dict[str, dict[str, Any]]:
    out = {}
    async for blob in container.list_blobs(name_starts_with=prefix, include=["metadata"]):
        out[blob.name.rsplit("/", 1)[1]] = dict(blob.metadata or {})
    return out


async def test_acknowledged_events_checkpoint_as_blob_metadata_where_keda_reads(
    redis: aioredis.Redis, azurite: str, container: ContainerClient
) -> None:
    harness = Harness(redis)
    store = BlobCheckpointStore.from_connection_string(azurite, CONTAINER)
    harness.store = store
    q = harness.queue()
    try:
        sent = [request(i) for i in range(6)]
        for m in sent:
            await q.put(m)
        got = await receive_all(q, 6)
        assert sorted(d.message.id for d in got) == sorted(m.id for m in sent)
        for d in got:
            await q.ack(d)
        assert await q.depth() == 0  # the depth reads the same checkpoints back
    finally:
        await q.close()
        await store.close()
    last = {pid: len(log) - 1 for pid, log in harness.hub.logs.items() if log}
    prefix = f"{NS}/{HUB}/{CG}/".lower()
    checkpoints = await _metadata(container, prefix + "checkpoint/")
    assert {pid: int(meta["sequencenumber"]) for pid, meta in checkpoints.items()} == last
    owners = await _metadata(container, prefix + "ownership/")
    assert set(owners) == set(harness.hub.logs)  # the load balancing went through Blob too
    assert len({meta["ownerid"] for meta in owners.values()}) == 1  # one consumer owns both


async def test_the_setting_selects_the_blob_store(redis: aioredis.Redis, azurite: str) -> None:
    settings = load_settings(
        queue_backend="eventhubs",
        eventhub_connection_string=(
            f"Endpoint=sb://{NS}/;SharedAccessKeyName=k;SharedAccessKey=a2V5;EntityPath=x"
        ),
        eventhub_checkpoint_store="blob",
        eventhub_checkpoint_connection_string=azurite,
    )
    q = EventHubsQueue.from_view(
        "ptu-requests-d1", (settings.eventhubs, settings.checkpoints), redis, "d1", "w1"
    )
    try:
        assert isinstance(q.checkpoint_store, BlobCheckpointStore)
        assert q.eventhub == "ptu-requests-d1"
    finally:
        await q.close()


def test_the_blob_store_needs_an_account() -> None:
    with pytest.raises(ConfigError, match=r"^PTU_EVENTHUB_CHECKPOINT_BLOB_URL: required"):
        load_settings(queue_backend="eventhubs", eventhub_checkpoint_store="blob")
