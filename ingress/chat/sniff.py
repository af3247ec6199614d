"""What the ingress reads of a body it relays without parsing it whole.

A chat completion's `usage` comes last and its `finish_reason` near the end, so both are
found from the end of the bytes; a stream's finish reason is in one of its chunks; the
service tier applied is named in the body (in every chunk of a stream). A
response (Responses API) is parsed whole for its finish reason (`calls.outcome`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from orchestrator.calls.outcome import finish_reason

_DECODER = json.JSONDecoder()
_FINISH_REASON = re.compile(rb'"finish_reason"\s*:\s*"([A-Za-z_]{1,40})"')
_SERVICE_TIER = re.compile(rb'"service_tier"\s*:\s*"([A-Za-z_-]{1,40})"')


def usage_of(content: bytes) -> dict[str, Any] | None:
    """The `usage` object of a completion, parsing only that object (it comes last)."""
    at = content.rfind(b'"usage"')
    start = content.find(b"{", at) if at >= 0 else -1
    if start < 0:
        return None
    try:
        usage, _ = _DECODER.raw_decode(content[start:].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


def finish_reason_in(content: bytes) -> str | None:
    """The last `finish_reason` string in a completion or SSE chunk."""
    found = _FINISH_REASON.findall(content[-4096:]) if content else None
    return found[-1].decode() if found else None


def service_tier_in(content: bytes) -> str | None:
    """The last `service_tier` a completion, a response or an SSE chunk names."""
    found = _SERVICE_TIER.findall(content) if content else None
    return found[-1].decode() if found else None


def response_end(content: bytes) -> str | None:
    """A response's (Responses API) finish reason: its incomplete reason, else its status."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    return finish_reason(body) if isinstance(body, dict) else None
