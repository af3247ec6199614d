"""Token counts of a chat request before it is sent, for the `admit` token event.

The estimate is deliberately simple and documented so every component that
needs it agrees: about four characters of text per token (OpenAI's rule of
thumb for English), plus the chat format's overhead of 4 tokens per message
and 3 tokens priming the reply. Non-text content parts (images, audio) count a
flat 85 tokens each, the low-detail image charge. Tool and function
definitions are counted from their JSON text. The `complete` event carries the
service's actual usage, so the estimate only has to be close for the short
time a call is in flight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3
NON_TEXT_PART_TOKENS = 85


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
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += text_tokens(part["text"])
            else:
                total += NON_TEXT_PART_TOKENS
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
                continue
            total += _content_tokens(message.get("content"))
            name = message.get("name")
            if isinstance(name, str):
                total += text_tokens(name)
            if "tool_calls" in message:
                total += _content_tokens(json.dumps(message["tool_calls"]))
    for key in ("tools", "functions", "response_format"):
        if key in body:
            total += text_tokens(json.dumps(body[key], separators=(",", ":")))
    return total


def requested_max_tokens(body: Mapping[str, Any], default: int) -> int:
    """The completion budget the request asks for (`max_completion_tokens` wins), else default."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default
