"""Builders for Azure OpenAI chat completion bodies, SSE chunks and error envelopes."""

from __future__ import annotations

import json
from typing import Any

MODEL_VERSIONS = {
    "gpt-4o": "gpt-4o-2024-11-20",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    "o1": "o1-2024-12-17",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
}
SYSTEM_FINGERPRINT = "fp_sim0000001"
_SAFE = {"filtered": False, "severity": "safe"}
PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            "hate": _SAFE,
            "jailbreak": {"filtered": False, "detected": False},
            "self_harm": _SAFE,
            "sexual": _SAFE,
            "violence": _SAFE,
        },
    }
]
CONTENT_FILTER_RESULTS = {
    "hate": _SAFE,
    "protected_material_code": {"filtered": False, "detected": False},
    "protected_material_text": {"filtered": False, "detected": False},
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
# One word with its leading space is one token of the simulated output.
VOCABULARY = tuple(
    " " + w
    for w in (
        "the quick brown fox jumps over a lazy dog while seven bright lanterns glow softly "
        "across quiet harbour streets and every patient sailor counts distant silver waves "
        "before morning tides return gentle winds carry old songs through narrow green hills "
        "where small rivers meet wide open fields under clear blue skies today"
    ).split()
)


def model_version(model: str) -> str:
    """The versioned model name Azure reports for a base model."""
    return MODEL_VERSIONS.get(model, model)


def completion_tokens_text(count: int, salt: int) -> list[str]:
    """`count` deterministic output tokens."""
    n = len(VOCABULARY)
    return [VOCABULARY[(salt + i * 7) % n] for i in range(count)]


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The usage object of a response or of the final stream chunk.

    `completion_tokens` includes the `reasoning_tokens` (a reasoning model's hidden ones).
    """
    return {
        "completion_tokens": completion_tokens,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": reasoning_tokens,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens": prompt_tokens,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


HONOURED_TIERS = frozenset({"priority", "flex"})
"""The tiers a standard deployment applies when asked (AZURE_FACTS.md §10); any other ask,
and any ask of a provisioned deployment, is served at `default`."""


def applied_tier(body: dict[str, Any], kind: str) -> str | None:
    """The `service_tier` an answer names: only when the request asked for one."""
    asked = body.get("service_tier")
    if not isinstance(asked, str):
        return None
    return asked if kind == "standard" and asked in HONOURED_TIERS else "default"


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int = 0,
    service_tier: str | None = None,
) -> dict[str, Any]:
    """A non-streaming `chat.completion` body in Azure's shape (`service_tier`: the tier
    applied, named when the request asked for one)."""
    tier = {} if service_tier is None else {"service_tier": service_tier}
    return {
        "choices": [
            {
                "content_filter_results": CONTENT_FILTER_RESULTS,
                "finish_reason": finish_reason,
                "index": 0,
                "logprobs": None,
                "message": {
                    "annotations": [],
                    "content": content,
                    "refusal": None,
                    "role": "assistant",
                },
            }
        ],
        "created": created,
        "id": completion_id,
        "model": model_version(model),
        "object": "chat.completion",
        "prompt_filter_results": PROMPT_FILTER_RESULTS,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": usage(prompt_tokens, completion_tokens, reasoning_tokens),
        **tier,
    }


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event line."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChunkWriter:
    """Renders the SSE chunks of one streamed completion."""

    def __init__(
        self,
        *,
        completion_id: str,
        created: int,
        model: str,
        with_usage: bool,
        service_tier: str | None = None,
    ) -> None:
        self.base: dict[str, Any] = {
            "created": created,
            "id": completion_id,
            "model": model_version(model),
            "object": "chat.completion.chunk",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if service_tier is not None:
            self.base["service_tier"] = service_tier
        self.with_usage = with_usage

    @staticmethod
    def first() -> bytes:
        """Azure's empty first chunk: no choices, empty id, created 0, prompt filter results."""
        return sse(
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": PROMPT_FILTER_RESULTS,
            }
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None, filters: dict[str, Any]) -> bytes:
        choice = {
            "content_filter_results": filters,
            "delta": delta,
            "finish_reason": finish,
            "index": 0,
            "logprobs": None,
        }
        payload = {"choices": [choice], **self.base}
        if self.with_usage:
            payload["usage"] = None
        return sse(payload)

    def role(self) -> bytes:
        """The chunk announcing the assistant role."""
        return self._chunk({"content": "", "refusal": None, "role": "assistant"}, None, {})

    def content(self, text: str) -> bytes:
        """One content chunk."""
        return self._chunk({"content": text}, None, CONTENT_FILTER_RESULTS)

    def finish(self, reason: str) -> bytes:
        """The chunk carrying the finish reason."""
        return self._chunk({}, reason, {})

    def usage(self, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> bytes:
        """The final usage chunk (`stream_options.include_usage`): no choices."""
        counts = usage(prompt_tokens, completion_tokens, reasoning_tokens)
        return sse({"choices": [], **self.base, "usage": counts})


def error_body(
    code: str | None, message: str, *, type_: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An error envelope; `type`/`param` appear only on OpenAI-style validation errors."""
    error: dict[str, Any] = {"code": code, "message": message}
    if type_ is not None:
        error["type"] = type_
        error["param"] = param
    return {"error": error}


MSG_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
    "valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
MSG_404 = (
    "The API deployment for this resource does not exist. If you created the deployment within "
    "the last 5 minutes, please wait a moment and try again."
)
MSG_400_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)
MSG_408 = "The operation was timeout."
MSG_400_MAX_TOKENS = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)
MSG_400_STREAM_OPTIONS = "Unrecognized request argument supplied: stream_options"
"""An api-version before 2024-10-21 (`orchestrator.calls.versions`) refusing the field."""
MSG_500 = (
    "The server had an error while processing your request. Sorry about that! You can retry your "
    "request, or contact us through an Azure support request if the error persists."
)


def msg_429_provisioned(retry_ms: int) -> str:
    """Azure's message for a throttled provisioned call."""
    return (
        "Requests have exceeded the throughput limit on your Provisioned-Managed deployment. "
        f"Please retry after {retry_ms} milliseconds, or reduce your request rate."
    )


def msg_429_standard(api_version: str, retry_s: int) -> str:
    """Azure's message for a standard deployment over its rate limit."""
    return (
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        f"{api_version} have exceeded token rate limit of your current AIServices S0 pricing "
        f"tier. Please retry after {retry_s} seconds."
    )
