"""Token counts of a request before it is sent, for the `admit` token event.

The estimate is deliberately simple and the same accounting the simulator
charges (`simulator/openai/tokens.py`): about four characters of text per token
(OpenAI's rule of thumb for English), 3 tokens of overhead per message, 1 per
`name` and 3 priming the reply. Image parts count a flat 85 tokens, the
low-detail image charge; other non-text parts and tool calls are counted from
their JSON text, and so are tool and function definitions. The `complete` event carries the
service's actual usage, so the estimate only has to be close for the short
time a call is in flight. `usage_counts` reads that usage, the same way for the
worker's calls and the ingress's proxied ones.

One estimate serves both APIs: a chat completions body's `messages`, and a Responses
API body's `input` (a string, or a list of items: messages count like chat messages,
other items such as function call outputs by their JSON text) and `instructions`
(counted as one system message). `max_output_tokens` is the Responses API's
`max_tokens`; its `usage` says `input_tokens` / `output_tokens` /
`input_tokens_details.cached_tokens` where chat says `prompt_tokens` /
`completion_tokens` / `prompt_tokens_details.cached_tokens`.
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
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
IMAGE_PARTS = frozenset({"image_url", "input_image"})
LIMIT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
"""Where a request states its completion budget (chat: the first two; Responses: the last)."""


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
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in TEXT_PARTS:
                total += text_tokens(str(part.get("text", "")))
            elif kind in IMAGE_PARTS:
                total += IMAGE_PART_TOKENS
            else:
                total += text_tokens(json.dumps(part))
        return total
    return text_tokens(json.dumps(content, separators=(",", ":")))


def _message_tokens(message: Mapping[str, Any]) -> int:
    total = TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
    if "name" in message:
        total += TOKENS_PER_NAME
    if message.get("tool_calls"):
        total += text_tokens(json.dumps(message["tool_calls"]))
    return total


def _items_tokens(items: object) -> int:
    """Chat `messages`, or Responses `input` / `instructions` (a string or a list of items)."""
    if isinstance(items, str):
        return TOKENS_PER_MESSAGE + text_tokens(items)
    if not isinstance(items, list):
        return 0
    total = 0
    for item in items:
        if isinstance(item, Mapping) and "role" in item:
            total += _message_tokens(item)
        else:  # a function call output, a reasoning item, a reference: its JSON text
            total += TOKENS_PER_MESSAGE + text_tokens(json.dumps(item, separators=(",", ":")))
    return total


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a chat completions or Responses API request body."""
    total = REPLY_PRIMING_TOKENS
    for key in ("messages", "instructions", "input"):
        total += _items_tokens(body.get(key))
    for key in ("tools", "functions", "response_format", "text"):
        if key in body:
            total += text_tokens(json.dumps(body[key], separators=(",", ":")))
    return total


def requested_max_tokens(body: Mapping[str, Any], default: int) -> int:
    """The completion budget the request asks for (`max_completion_tokens` first), else default."""
    for key in LIMIT_FIELDS:
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
    """(prompt, completion, cached) tokens of a chat or Responses `usage`; zeros when absent."""
    if not usage:
        return UsageCounts(0, 0, 0)
    if "input_tokens" in usage or "output_tokens" in usage:  # the Responses API's names
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        details = usage.get("input_tokens_details")
    else:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else 0
    return UsageCounts(_count(prompt), _count(completion), _count(cached))


def _count(value: object) -> int:
    """A positive int as itself; anything else (bool, float, negative, None) as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
