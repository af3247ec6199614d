"""What the ingress checks and changes in a chat completions or responses body before it leaves.

`check_chat_body` validates the body against `ChatCompletionRequest` (the model
the OpenAPI document is generated from): a non-empty `messages` list of objects
with a string `role`, booleans and objects where the API has them, positive
integer token limits. `check_responses_body` does the same with `ResponsesRequest`.
Everything else passes through as sent.

`govern` applies max_tokens governance to calls that return one document (non-streaming).

Why: the PTU charges `max_tokens` x output weight at admission, so an absent or
huge `max_tokens` reserves capacity that is never used, and a long non-streaming
generation (6-8k tokens at ~33 tok/s) outlives a 60 s client window and ends in
408. So for non-streaming calls (high priority, queued and batch lines):

- `max_tokens` and `max_completion_tokens` (a response's `max_output_tokens`), when
  given, are capped at `PTU_MAX_TOKENS_CEILING` (default 2,000);
- when neither is given, `max_tokens` (`max_output_tokens`) is set to
  `PTU_DEFAULT_MAX_TOKENS` (default 1,000, itself capped at the ceiling);
- an explicit `null` counts as absent (a value that is not a positive integer was
  already refused by `check_chat_body`).

Streaming calls are left as sent: the client sees tokens as they come, so a long
answer is neither wasted nor timed out.
"""

from __future__ import annotations

from typing import Any

from ingress.http.models import ChatCompletionRequest, ResponsesRequest, validated
from orchestrator.core.schemas import Endpoint

LIMIT_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    "chat/completions": ("max_tokens", "max_completion_tokens"),
    "responses": ("max_output_tokens",),
}
"""Each API's completion limits; the first is the one set when none is given."""


def check_chat_body(body: dict[str, Any], where: str = "") -> None:
    """400 (prefixed with `where`) unless `body` fits `ChatCompletionRequest`."""
    validated(ChatCompletionRequest, body, where)


def check_responses_body(body: dict[str, Any], where: str = "") -> None:
    """400 (prefixed with `where`) unless `body` fits `ResponsesRequest`."""
    validated(ResponsesRequest, body, where)


def govern(
    body: dict[str, Any], *, ceiling: int, default: int, endpoint: Endpoint = "chat/completions"
) -> bool:
    """Apply the ceiling and the default to `body` in place; True when it changed.

    `body` has passed its check: its limits are positive integers or null.
    """
    changed = False
    present = False
    fields = LIMIT_FIELDS[endpoint]
    for name in fields:
        if name not in body:
            continue
        value = body[name]
        if value is None:
            del body[name]
            changed = True
            continue
        present = True
        if value > ceiling:
            body[name] = ceiling
            changed = True
    if not present:
        body[fields[0]] = min(default, ceiling)
        changed = True
    return changed
