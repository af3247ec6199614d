"""Parsing a chat completions or Responses API request into what the simulator acts on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from orchestrator.calls.versions import accepts_stream_options
from simulator.openai import chat, models, tokens
from simulator.openai.counters import UNLABELLED
from simulator.openai.responses import MIN_OUTPUT_TOKENS

RESPONSES = "responses"


class ChatError(Exception):
    """A request the simulator answers with an error envelope."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class ChatCall:
    """The parts of a chat completions (or Responses API) request the simulator acts on."""

    body: dict[str, Any]
    prompt_tokens: int
    max_tokens: int | None
    completion_tokens: int
    stream: bool
    include_usage: bool
    priority: str
    endpoint: str = "chat/completions"
    reasoning_tokens: int = 0
    """Hidden tokens a reasoning model spends before `completion_tokens` visible ones."""
    reasoning_effort: str | None = None

    @property
    def output_tokens(self) -> int:
        """Everything generated: the reasoning and the visible completion."""
        return self.reasoning_tokens + self.completion_tokens


def _invalid(message: str, param: str | None = None, code: str | None = None) -> ChatError:
    return ChatError(
        400, chat.error_body(code, message, type_="invalid_request_error", param=param)
    )


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _invalid(chat.MSG_400_JSON) from None
    if not isinstance(body, dict):
        raise _invalid(chat.MSG_400_JSON)
    return body


def parse_responses_body(raw: bytes) -> dict[str, Any]:
    """A Responses API body: a `model`, an `input` string or list, or a 400 ChatError."""
    body = _object(raw)
    if not isinstance(body.get("model"), str):
        raise _invalid(
            "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    given = body.get("input")
    if not isinstance(given, str | list) or not given:
        raise _invalid(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    limit = body.get("max_output_tokens")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or limit < MIN_OUTPUT_TOKENS
    ):
        raise _invalid(
            "Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {str(limit)[:40]} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    return body


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON body with a non-empty `messages` list, or a 400 ChatError."""
    body = _object(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    return body


def _reasoning_effort(body: dict[str, Any], endpoint: str) -> str | None:
    """A reasoning model's `reasoning_effort` (a response's `reasoning.effort`), validated."""
    if endpoint == RESPONSES:
        given = body.get("reasoning")
        effort = given.get("effort") if isinstance(given, dict) else None
    else:
        effort = body.get("reasoning_effort")
    if effort is not None and effort not in tokens.REASONING_EFFORT:
        supported = ", ".join(f"'{e}'" for e in tokens.REASONING_EFFORT)
        param = "reasoning.effort" if endpoint == RESPONSES else "reasoning_effort"
        raise _invalid(
            f"Invalid value: '{str(effort)[:40]}'. Supported values are: {supported}.",
            param,
            "invalid_value",
        )
    return effort if isinstance(effort, str) else None


def parse_call(
    request: Request,
    body: dict[str, Any],
    seed: int,
    endpoint: str = "chat/completions",
    *,
    model: str = "",
) -> ChatCall:
    """Token counts, stream options and priority label of a request to a `model` deployment."""
    reasoning = models.is_reasoning(model)
    version = request.query_params.get("api-version")
    if endpoint != RESPONSES and "stream_options" in body and not accepts_stream_options(version):
        raise _invalid(chat.MSG_400_STREAM_OPTIONS)
    if reasoning and endpoint != RESPONSES and body.get("max_tokens") is not None:
        raise _invalid(chat.MSG_400_MAX_TOKENS, "max_tokens", "unsupported_parameter")
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
    said = [body.get("instructions"), body["input"]] if endpoint == RESPONSES else body["messages"]
    fraction = tokens.content_fraction(seed, said)
    effort = _reasoning_effort(body, endpoint) if reasoning else None
    hidden = 0
    if reasoning:
        hidden = tokens.reasoning_length(tokens.reasoning_fraction(seed, said), effort, max_tokens)
    visible_bound = None if max_tokens is None else max_tokens - hidden
    visible = 0 if visible_bound == 0 else tokens.completion_length(fraction, visible_bound, forced)
    options = body.get("stream_options")
    label = request.headers.get("x-ptu-priority", "").strip().lower()[:32]
    return ChatCall(
        body=body,
        prompt_tokens=tokens.estimate_prompt_tokens(body),
        max_tokens=max_tokens,
        completion_tokens=visible,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        priority=label or UNLABELLED,
        endpoint=endpoint,
        reasoning_tokens=hidden,
        reasoning_effort=effort or ("medium" if reasoning else None),
    )
