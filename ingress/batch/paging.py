"""Listing as OpenAI paginates: a page of a Redis index after an id, and its query parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import JSONResponse

from ingress.http.errors import ApiError, bad_request
from orchestrator.core.redis_replies import text


async def list_page(
    redis: aioredis.Redis,
    index: str,
    load: Callable[[str], Any],
    limit: int,
    after: str | None,
    descending: bool = True,
) -> tuple[list[dict[str, str]], bool]:
    """A page of an index (sorted set by creation time) after the id `after`, as OpenAI
    paginates: `has_more` when items follow the page. Ids that expired are skipped."""
    start = 0
    if after is not None:
        rank = await (redis.zrevrank(index, after) if descending else redis.zrank(index, after))
        if rank is None:
            return [], False
        start = int(rank) + 1  # type: ignore[arg-type]
    out: list[dict[str, str]] = []
    while len(out) <= limit:
        want = limit + 1 - len(out)
        fetch = redis.zrevrange if descending else redis.zrange
        ids = await fetch(index, start, start + want - 1)
        if not ids:
            break
        start += len(ids)
        for raw in ids:
            try:
                out.append(await load(text(raw)))
            except ApiError:
                continue  # expired between the index and the item
    return out[:limit], len(out) > limit


def limit_param(request: Request, default: int, maximum: int) -> int:
    """The `limit` query parameter, 1..maximum."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise bad_request(f"limit must be an integer from 1 to {maximum}", param="limit")
    return int(raw)


def after_param(request: Request) -> str | None:
    """The `after` query parameter (an id), if given."""
    raw = request.query_params.get("after")
    if raw is not None and not 0 < len(raw) <= 200:
        raise bad_request("after must be an id", param="after")
    return raw


def page(data: list[dict[str, Any]], has_more: bool = False) -> JSONResponse:
    """An OpenAI list page."""
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
    )
