"""Token counts the simulator charges and reports, without a tokenizer.

Prompt tokens follow OpenAI's chat accounting (3 tokens per message, 1 per name,
3 to prime the reply) with about 4 characters per text token and 85 tokens per
image part (a low-detail image); tool definitions and response formats count
from their JSON text. `orchestrator/core/tokens.py` estimates the same way.

When a request gives no `max_tokens` / `max_completion_tokens`, admission assumes
`DEFAULT_MAX_TOKENS_ESTIMATE` (1,000) output tokens: Azure documents that it
estimates a missing max_tokens and that this lowers concurrency; the figure is
ours (the orchestrator's `PTU_DEFAULT_MAX_TOKENS` default is the same).

Completion lengths are deterministic: a hash of the seed and the messages picks a
fraction in [0, 1); with a max_tokens the length is between 20 % and 100 % of it,
without one between 16 and 512 tokens. `x-sim-completion-tokens` overrides the
length, still capped at max_tokens.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
IMAGE_PART_TOKENS = 85
DEFAULT_MAX_TOKENS_ESTIMATE = 1_000
UNBOUNDED_MIN, UNBOUNDED_MAX = 16, 512
BOUNDED_MIN_FRACTION = 0.2


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                total += _text_tokens(str(part.get("text", "")))
            elif isinstance(part, dict) and part.get("type") == "image_url":
                total += IMAGE_PART_TOKENS
            else:
                total += _text_tokens(json.dumps(part))
        return total
    return _text_tokens(json.dumps(content, separators=(",", ":")))


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a chat request body (about 4 characters per token)."""
    total = REPLY_PRIMING_TOKENS
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        total += TOKENS_PER_MESSAGE
        if not isinstance(message, dict):
            total += _text_tokens(json.dumps(message))
            continue
        total += _content_tokens(message.get("content"))
        if "name" in message:
            total += TOKENS_PER_NAME
        if message.get("tool_calls"):
            total += _text_tokens(json.dumps(message["tool_calls"]))
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += _text_tokens(json.dumps(body[key], separators=(",", ":")))
    return total


def requested_max_tokens(body: dict[str, Any]) -> int | None:
    """`max_completion_tokens` or `max_tokens` from the body; None when neither is given."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer")
            return value
    return None


def admission_output_tokens(max_tokens: int | None) -> int:
    """Output tokens admission charges for: max_tokens, or the documented estimate."""
    return DEFAULT_MAX_TOKENS_ESTIMATE if max_tokens is None else max_tokens


def content_fraction(seed: int, messages: list[Any]) -> float:
    """A deterministic number in [0, 1) from the seed and the request's messages."""
    material = f"{seed}:".encode() + json.dumps(messages, sort_keys=True).encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def completion_length(fraction: float, max_tokens: int | None, forced: int | None = None) -> int:
    """Completion tokens of a request: forced or drawn from `fraction`, never above max_tokens."""
    if forced is not None:
        return max(0, forced if max_tokens is None else min(forced, max_tokens))
    if max_tokens is None:
        return UNBOUNDED_MIN + math.floor(fraction * (UNBOUNDED_MAX - UNBOUNDED_MIN + 1))
    share = BOUNDED_MIN_FRACTION + (1.0 - BOUNDED_MIN_FRACTION) * fraction
    return max(1, min(max_tokens, math.ceil(max_tokens * share - 1e-9)))
