"""Builders for Responses API bodies and their stream of events, in the SDK's shapes.

`POST /openai/v1/responses` (and the older `/openai/responses?api-version=…`) names
the deployment in the body's `model`. A non-streaming call answers one `response`
object; `stream: true` answers the event sequence the `openai` SDK parses
(`openai.types.responses`), each as `event: <type>` + `data: {…}` with a growing
`sequence_number` and no `[DONE]` line:

    response.created, response.in_progress, response.output_item.added,
    response.content_part.added, response.output_text.delta (one per token),
    response.output_text.done, response.content_part.done, response.output_item.done,
    response.completed (or response.incomplete when max_output_tokens cut it short)

The last event carries the whole response with its `usage` (`input_tokens`,
`output_tokens`, `input_tokens_details.cached_tokens`, `total_tokens`). A reasoning model's
output starts with a reasoning item (no summary; added and done before the message) and
its hidden tokens are counted in `output_tokens` and `output_tokens_details.reasoning_tokens`.
A response cut at `max_output_tokens` has status `incomplete` and
`incomplete_details.reason` `max_output_tokens`, as the service reports it.
"""

from __future__ import annotations

import json
from typing import Any

from simulator.openai.chat import model_version

MIN_OUTPUT_TOKENS = 16
"""The service refuses a `max_output_tokens` below this."""


def usage(input_tokens: int, output_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The `usage` object of a response; `output_tokens` includes the reasoning tokens."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


class ResponseWriter:
    """Renders one response: its body at any stage, and its stream of events."""

    def __init__(
        self,
        *,
        response_id: str,
        created: int,
        model: str,
        body: dict[str, Any],
        input_tokens: int,
        reasoning_tokens: int = 0,
        reasoning_effort: str | None = None,
    ) -> None:
        self.response_id = response_id
        self.reasoning_tokens = reasoning_tokens
        """Hidden tokens a reasoning model spent, counted in `output_tokens`."""
        self.reasoning_effort = reasoning_effort
        self.reasoning_id = "rs_" + response_id.removeprefix("resp_")
        self.message_index = 1 if reasoning_tokens else 0
        """The message follows a reasoning model's (summary-less) reasoning item."""
        self.item_id = "msg_" + response_id.removeprefix("resp_")
        self.created = created
        self.model = model_version(model)
        self.request = body
        self.input_tokens = input_tokens
        self._sequence = 0

    def body(
        self,
        status: str,
        *,
        text: str | None = None,
        output_tokens: int = 0,
        truncated: bool = False,
        completed_at: int | None = None,
    ) -> dict[str, Any]:
        """The `response` object: `in_progress` without output, else with its one message.

        `output_tokens` are the visible ones; the usage adds the writer's reasoning tokens.
        """
        req = self.request
        output = []
        if text is not None:
            item_status = "incomplete" if truncated else "completed"
            output = [_message(self.item_id, item_status, [_text_part(text)])]
            if self.reasoning_tokens:
                output.insert(0, self._reasoning_item())
        finished = status != "in_progress"
        return {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "completed_at": completed_at if finished else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
            "instructions": req.get("instructions"),
            "max_output_tokens": req.get("max_output_tokens"),
            "max_tool_calls": None,
            "metadata": req.get("metadata") or {},
            "model": self.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": req.get("previous_response_id"),
            "reasoning": {"effort": self.reasoning_effort, "summary": None},
            "service_tier": "default",
            "store": req.get("store", True),
            "temperature": req.get("temperature", 1.0),
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": req.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self._usage(output_tokens) if finished else None,
            "user": None,
        }

    def _reasoning_item(self) -> dict[str, Any]:
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}

    def _usage(self, visible_tokens: int) -> dict[str, Any]:
        total = visible_tokens + self.reasoning_tokens
        return usage(self.input_tokens, total, self.reasoning_tokens)

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        encoded = json.dumps(data, separators=(",", ":")).encode()
        return b"event: " + kind.encode() + b"\ndata: " + encoded + b"\n\n"

    def opening(self) -> list[bytes]:
        """`response.created` and `response.in_progress`."""
        started = self.body("in_progress")
        return [
            self._event("response.created", {"response": started}),
            self._event("response.in_progress", {"response": started}),
        ]

    def _place(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "output_index": self.message_index, "content_index": 0}

    def item_added(self) -> list[bytes]:
        """A reasoning model's reasoning item, done; the message item and its text part, empty."""
        events = []
        if self.reasoning_tokens:
            reasoning = {"output_index": 0, "item": self._reasoning_item()}
            events.append(self._event("response.output_item.added", reasoning))
            events.append(self._event("response.output_item.done", reasoning))
        added = {
            "output_index": self.message_index,
            "item": _message(self.item_id, "in_progress", []),
        }
        return [
            *events,
            self._event("response.output_item.added", added),
            self._event("response.content_part.added", {**self._place(), "part": _text_part("")}),
        ]

    def delta(self, text: str) -> bytes:
        """One `response.output_text.delta`."""
        payload = {**self._place(), "delta": text, "logprobs": []}
        return self._event("response.output_text.delta", payload)

    def closing(
        self, text: str, output_tokens: int, *, truncated: bool, completed_at: int
    ) -> list[bytes]:
        """The done events of the text, part and item, then the final response with usage."""
        place = self._place()
        status = "incomplete" if truncated else "completed"
        item = _message(self.item_id, status, [_text_part(text)])
        final = self.body(
            status,
            text=text,
            output_tokens=output_tokens,
            truncated=truncated,
            completed_at=completed_at,
        )
        return [
            self._event("response.output_text.done", {**place, "text": text, "logprobs": []}),
            self._event("response.content_part.done", {**place, "part": _text_part(text)}),
            self._event(
                "response.output_item.done", {"output_index": self.message_index, "item": item}
            ),
            self._event(f"response.{status}", {"response": final}),
        ]
