"""max_tokens governance for calls that return one document (non-streaming).

Why: the PTU charges `max_tokens` x output weight at admission, so an absent or
huge `max_tokens` reserves capacity that is never used, and a long non-streaming
generation (6-8k tokens at ~33 tok/s) outlives a 60 s client window and ends in
408. So for non-streaming calls (high priority, queued and batch lines):

- `max_tokens` and `max_completion_tokens`, when given, are capped at
  `PTU_MAX_TOKENS_CEILING` (default 2,000);
- when neither is given, `max_tokens` is set to `PTU_DEFAULT_MAX_TOKENS`
  (default 1,000, itself capped at the ceiling);
- an explicit `null` counts as absent; a value that is not a positive integer is a 400.

Streaming calls are left as sent: the client sees tokens as they come, so a long
answer is neither wasted nor timed out.
"""

from __future__ import annotations

from typing import Any

from ingress.http.errors import bad_request

LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")


def _checked(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"{name} must be a positive integer", param=name)
    return value


def govern(body: dict[str, Any], *, ceiling: int, default: int) -> bool:
    """Apply the ceiling and the default to `body` in place; True when it changed."""
    changed = False
    present = False
    for name in LIMIT_FIELDS:
        if name not in body:
            continue
        value = body[name]
        if value is None:
            del body[name]
            changed = True
            continue
        present = True
        if _checked(name, value) > ceiling:
            body[name] = ceiling
            changed = True
    if not present:
        body["max_tokens"] = min(default, ceiling)
        changed = True
    return changed
