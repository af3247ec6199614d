"""Reading what redis-py returns the same way everywhere: values, stream entries, error codes.

Every module that talks to Redis goes through these: `text` for a reply value
(the client may or may not decode responses), `entries` / `read_entries` for
stream replies (RESP2 or RESP3), `error_code` for a server error (the first word
of a RESP error reply, e.g. `BUSYGROUP`), and `ensure_group` for the idempotent
consumer-group creation both stream consumers (the queue, the estimator) need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

Entry = tuple[str, dict[str, str]]
"""A stream entry: its id and its fields."""


def text(value: Any) -> str:
    """A reply value as str, whether the client decodes responses or not."""
    return value.decode() if isinstance(value, bytes) else str(value)


def entries(raw: Any) -> list[Entry]:
    """Entries of an XRANGE / XAUTOCLAIM list, skipping ones deleted while pending."""
    out: list[Entry] = []
    for entry_id, fields in raw or []:
        if fields is None:  # deleted or trimmed while pending
            continue
        out.append((text(entry_id), {text(k): text(v) for k, v in fields.items()}))
    return out


def read_entries(reply: Any) -> list[Entry]:
    """Entries of the single stream in an XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    raw = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    if raw and isinstance(raw[0], list):  # RESP3 legacy shape wraps the entry list once more
        raw = raw[0]
    return entries(raw)


def error_code(exc: ResponseError) -> str:
    """The error code of a server error reply (`NOGROUP`, `BUSYGROUP`, `WRONGTYPE`...).

    redis-py keeps the code in `status_code` for the errors it maps to classes
    and leaves it as the first word of `args[0]` for the others.
    """
    if exc.status_code:
        return exc.status_code
    first = exc.args[0] if exc.args else ""
    return str(first).split(" ", 1)[0]


async def ensure_group(redis: aioredis.Redis, stream: str, group: str) -> None:
    """Create consumer group `group` on `stream` (and the stream), unless it exists.

    The group starts at id 0, so entries added before the first consumer came
    are consumed too. `BUSYGROUP` (the group exists) is success; any other
    server error is raised.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if error_code(exc) != "BUSYGROUP":
            raise


def script_entries(raw: Any) -> list[Entry]:
    """Entries as a Lua script returns them: `[id, [field, value, ...]]`, deleted ones skipped."""
    out: list[Entry] = []
    for item in raw or []:
        if not item or len(item) < 2 or not item[1]:
            continue
        flat = [text(v) for v in item[1]]
        out.append((text(item[0]), dict(zip(flat[::2], flat[1::2], strict=True))))
    return out
