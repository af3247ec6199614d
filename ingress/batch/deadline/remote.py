"""Overflow to a Global or Data Zone Batch deployment: submit, poll, merge back once.

The planner hands over lines it claimed (`deadline/claims`); they are written as one JSONL
file, their `custom_id` our request id (the line's own `custom_id` stays in its record and
its result), the `model` the Batch deployment, and uploaded and submitted through the
resource's Files + Batches API with the `openai` SDK (`AsyncAzureOpenAI`, the worker's
client: the resource's key or Entra ID). The remote batch is recorded on our batch's hash
(`remote:<id>`: target, our ids and custom ids), so any ingress polls it after a restart.

Each poll renews the lines' claims (they stay ours while the Batch deployment works). When
the remote batch ends, every answered line gets its result by `ResultStore.complete`
(exactly once, whoever polls); a line answered with a 4xx fails with that error; a line
answered 5xx or left unprocessed (expired, cancelled, failed batch) has its claim released
at once, so the next planner round takes it over and calls it synchronously (Flex, then
standard) within the deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import openai
import structlog

from ingress.batch.deadline.claims import Claims
from ingress.batch.store import BatchStore
from orchestrator.core.deployments import OverflowEntry
from orchestrator.core.results import ResultStore
from orchestrator.core.schemas import QueuedRequest, ResultDocument

log = structlog.get_logger(__name__)

PREFIX = "remote:"
"""Batch hash fields naming the remote batches in flight."""
ENDED = ("completed", "failed", "expired", "cancelled")


class RemoteBatches:
    """The remote batches of our batches."""

    def __init__(
        self,
        store: BatchStore,
        results: ResultStore,
        claims: Claims,
        client_for: Callable[[OverflowEntry], openai.AsyncAzureOpenAI],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._results = results
        self._claims = claims
        self._client_for = client_for
        self._clock = clock

    async def submit(
        self, batch_id: str, entry: OverflowEntry, reqs: Sequence[QueuedRequest]
    ) -> str:
        """Upload and submit `reqs` to the Batch deployment; the remote batch id."""
        rows = [
            {"custom_id": r.id, "method": "POST", "url": "/chat/completions",
             "body": {**r.body, "model": entry.name}}
            for r in reqs
        ]  # fmt: skip
        data = b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in rows)
        client = self._client_for(entry)
        uploaded = await client.files.create(file=(f"{batch_id}.jsonl", data), purpose="batch")
        remote = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        record = {
            "target": entry.name, "ids": [r.id for r in reqs],
            "custom_ids": [r.custom_id for r in reqs], "deployment": reqs[0].deployment,
            "enqueued_at": reqs[0].enqueued_at, "at": self._clock(),
        }  # fmt: skip
        await self._store.update(batch_id, **{PREFIX + remote.id: json.dumps(record)})
        log.info("batch_lines_submitted_remote", batch_id=batch_id, remote=remote.id,
                 target=entry.name, lines=len(reqs))  # fmt: skip
        return remote.id

    async def poll(self, batch_id: str, entries: Sequence[OverflowEntry], owner: str) -> int:
        """Poll our batch's remote batches; merge the ended ones. Lines merged."""
        f = {**await self._store.fields(batch_id), "id": batch_id}
        merged = 0
        by_name = {e.name: e for e in entries if e.kind == "batch"}
        for field, raw in f.items():
            if not field.startswith(PREFIX):
                continue
            record = json.loads(raw)
            entry = by_name.get(record["target"])
            if entry is None:
                continue
            client = self._client_for(entry)
            remote = await client.batches.retrieve(field.removeprefix(PREFIX))
            if remote.status not in ENDED:
                await self._claims.touch(record["ids"], owner, self._clock())
                continue
            merged += await self._merge(f, record, client, remote, owner)
            await self._store.forget_fields(f["id"], field)
        return merged

    async def _merge(
        self, f: dict[str, str], record: dict[str, Any], client: openai.AsyncAzureOpenAI,
        remote: Any, owner: str,
    ) -> int:  # fmt: skip
        rows: dict[str, dict[str, Any]] = {}
        for file_id in (remote.output_file_id, remote.error_file_id):
            if file_id:
                text = (await client.files.content(file_id)).text
                for line in text.splitlines():
                    if line.strip():
                        row = json.loads(line)
                        rows[str(row.get("custom_id"))] = row
        custom = dict(zip(record["ids"], record["custom_ids"], strict=True))
        now, merged, retry = self._clock(), 0, []
        for rid in record["ids"]:
            doc = _doc(rid, custom[rid], rows.get(rid), record, f, now)
            if doc is None:
                retry.append(rid)
            elif await self._results.complete(doc, f["reply_key"]):
                await self._store.incr(f["id"], "overflow_done")
                merged += 1
        if retry:  # released: the next planner round takes them over, synchronously
            await self._claims.touch(retry, owner, 0.0)
            await self._store.update(f["id"], overflow_rescan="1")
        log.info("batch_remote_merged", batch_id=f["id"], remote=remote.id, status=remote.status,
                 merged=merged, retried=len(retry))  # fmt: skip
        return merged


def _doc(
    rid: str, custom_id: str | None, row: dict[str, Any] | None, record: dict[str, Any],
    f: dict[str, str], now: float,
) -> ResultDocument | None:  # fmt: skip
    """The result of one remote line; None when it should run again elsewhere."""
    response = (row or {}).get("response") or {}
    status = int(response.get("status_code") or 0)
    if row is None or status == 0 or status == 429 or status >= 500:
        return None
    body = response.get("body") or {}
    ok = 200 <= status < 300
    error = None if ok else (body.get("error") or (row.get("error") or {"code": str(status)}))
    return ResultDocument(
        id=rid, custom_id=custom_id, status="completed" if ok else "failed", status_code=status,
        response=body if ok else None, error=error, usage=body.get("usage") if ok else None,
        deployment=record["target"], attempts=1, enqueued_at=float(record["enqueued_at"]),
        completed_at=now, batch_id=f["id"], tenant=f["tenant"],
    )  # fmt: skip
