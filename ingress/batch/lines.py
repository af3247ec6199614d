"""A batch input file as a stream of lines, and a line as the request it becomes.

Lines come with the byte offset just past them, so the expansion can record how
far it got (`cursor_offset`) and a later job can reopen the file there. A line's
request is a pure function of the line, its index and the batch (id, tenant,
deadline): rebuilt after a crash, it is the same request with the same id.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ingress.batch.jsonl import line_endpoint
from ingress.batch.store import line_request_id
from ingress.chat.governance import Governance
from orchestrator.core.schemas import QueuedRequest


async def lines_from(
    chunks: AsyncIterator[bytes], offset: int = 0
) -> AsyncIterator[tuple[bytes, int]]:
    """`(line without its newline, offset after it)` for every line, blank ones too."""
    buf = b""
    pos = offset  # offset of buf[0] in the file
    async for chunk in chunks:
        buf = buf + chunk if buf else chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            yield buf[start:nl], pos + nl + 1
            start = nl + 1
        pos += start
        buf = buf[start:]
    if buf:
        yield buf, pos + len(buf)


async def requests_from(
    chunks: AsyncIterator[bytes], offset: int = 0, index: int = 0
) -> AsyncIterator[tuple[int, dict[str, Any], int]]:
    """`(line index, line object, offset after it)` of a validated file's requests from a
    line boundary at `offset` whose index is `index` (blank lines skipped)."""
    async for raw, end in lines_from(chunks, offset):
        if not raw.strip():
            continue
        yield index, json.loads(raw), end
        index += 1


def line_request(
    obj: dict[str, Any],
    index: int,
    *,
    batch_id: str,
    tenant: str,
    reply_key: str,
    deadline: float,
    now: float,
    ceiling: int,
    governance: Governance,
) -> QueuedRequest:
    """The queued request of a validated line (its body governed like any queued call)."""
    body = dict(obj["body"])
    endpoint = line_endpoint(obj.get("url"))
    governance.apply(body, str(body["model"]), ceiling=ceiling, endpoint=endpoint)
    return QueuedRequest(
        id=line_request_id(batch_id, index),
        deployment=str(body["model"]),
        body=body,
        endpoint=endpoint,
        tenant=tenant,
        custom_id=str(obj["custom_id"]),
        reply_key=reply_key,
        enqueued_at=now,
        deadline=deadline,
        batch_id=batch_id,
    )
