"""Reading Redis Stream replies the same way in every consumer (RESP2 or RESP3, bytes or str)."""

from __future__ import annotations

from typing import Any

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


def script_entries(raw: Any) -> list[Entry]:
    """Entries as a Lua script returns them: `[id, [field, value, ...]]`, deleted ones skipped."""
    out: list[Entry] = []
    for item in raw or []:
        if not item or len(item) < 2 or not item[1]:
            continue
        flat = [text(v) for v in item[1]]
        out.append((text(item[0]), dict(zip(flat[::2], flat[1::2], strict=True))))
    return out
