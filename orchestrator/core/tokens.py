"""Token counts of a chat request before it is sent, for the `admit` token event.

The estimate is deliberately simple and the same accounting the simulator
charges (`simulator/openai/tokens.py`): about four characters of text per token
(OpenAI's rule of thumb for English), 3 tokens of overhead per message, 1 per
`name` and 3 priming the reply. Image parts count a flat 85 tokens, the
low-detail image charge; other non-text parts and tool calls are counted from
their JSON text, and so are tool and function definitions. The `complete` event carries the
service's actual usage, so the estimate only has to be close for the short
time a call is in flight. `usage_counts` reads that usage, the same way for the
worker's calls and the ingress's proxied ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
IMAGE_PART_TOKENS = 85


def text_tokens(text: str) -> int:
    """Estimated tokens of a piece of text (ceil of characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _content_tokens(content: object) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                total += text_tokens(str(part.get("text", "")))
            elif isinstance(part, Mapping) and part.get("type") == "image_url":
                total += IMAGE_PART_TOKENS
            else:
                total += text_tokens(json.dumps(part))
        return total
    return text_tokens(json.dumps(content, separators=(",", ":")))


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a chat completions request body."""
    total = REPLY_PRIMING_TOKENS
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += TOKENS_PER_MESSAGE
            if not isinstance(message, Mapping):
                total += text_tokens(json.dumps(message))
                continue
            total += _content_tokens(message.get("content"))
            if "name" in message:
                total += TOKENS_PER_NAME
            if message.get("tool_calls"):
                total += text_tokens(json.dumps(message["tool_calls"]))
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += text_tokens(json.dumps(body[key], separators=(",", ":")))
    return total


def requested_max_tokens(body: Mapping[str, Any], default: int) -> int:
    """The completion budget the request asks for (`max_completion_tokens` wins), else default."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = _count(body.get(key))
        if value:
            return value
    return default


class UsageCounts(NamedTuple):
    """The token counts of an OpenAI `usage` object (0 where absent or malformed)."""

    prompt: int
    completion: int
    cached: int


def usage_counts(usage: Mapping[str, Any] | None) -> UsageCounts:
    """(prompt, completion, cached) tokens of an OpenAI `usage` object; zeros when absent."""
    if not usage:
        return UsageCounts(0, 0, 0)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else 0
    return UsageCounts(
        _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")), _count(cached)
    )


def _count(value: object) -> int:
    """A positive int as itself; anything else (bool, float, negative, None) as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
