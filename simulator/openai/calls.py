"""Parsing a chat completions request into what the simulator acts on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from simulator.openai import chat, tokens
from simulator.openai.deployments import UNLABELLED


class ChatError(Exception):
    """A request the simulator answers with an error envelope."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class ChatCall:
    """The parts of a chat completions request the simulator acts on."""

    body: dict[str, Any]
    prompt_tokens: int
    max_tokens: int | None
    completion_tokens: int
    stream: bool
    include_usage: bool
    priority: str


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ChatError:
    return ChatError(
        400, chat.error_body(code, message, type_="invalid_request_error", param=param)
    )


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON body with a non-empty `messages` list, or a 400 ChatError."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid(chat.MSG_400_JSON) from None
    if not isinstance(body, dict):
        raise _invalid(chat.MSG_400_JSON)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    return body


def parse_call(request: Request, body: dict[str, Any], seed: int) -> ChatCall:
    """Token counts, stream options and priority label of a parsed request."""
    try:
        max_tokens = tokens.validated_max_tokens(body)
    except ValueError as exc:
        raise _invalid(str(exc), "max_tokens", "invalid_value") from None
    forced_text = request.headers.get("x-sim-completion-tokens")
    forced: int | None = None
    if forced_text is not None:
        try:
            forced = int(forced_text)
        except ValueError:
            raise _invalid("x-sim-completion-tokens must be an integer") from None
    fraction = tokens.content_fraction(seed, body["messages"])
    options = body.get("stream_options")
    label = request.headers.get("x-ptu-priority", "").strip().lower()[:32]
    return ChatCall(
        body=body,
        prompt_tokens=tokens.estimate_prompt_tokens(body),
        max_tokens=max_tokens,
        completion_tokens=tokens.completion_length(fraction, max_tokens, forced),
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        priority=label or UNLABELLED,
    )
