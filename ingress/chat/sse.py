"""Server-sent events pass-through: find the usage chunk, optionally hide it.

The ingress asks the deployment for `stream_options.include_usage` so the
`complete` token event carries the actual usage. When the client did not ask for
it, the extra chunk (`choices: []` with a `usage` object) is dropped from what
the client sees; everything else, including Azure's empty first chunk with
`prompt_filter_results`, is forwarded unchanged, event by event.

A Responses API stream needs no option: its final event (`response.completed`, or
`response.incomplete` / `response.failed`) carries the whole response with its
`usage`, which is read there and forwarded like every other event.
"""

from __future__ import annotations

import json
import re
from typing import Any

_EVENT_END = re.compile(rb"\r?\n\r?\n")


def _data_of(event: bytes) -> bytes:
    lines = [ln[5:].lstrip() for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


class SSEFilter:
    """Splits an SSE byte stream into whole events as they arrive."""

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: dict[str, Any] | None = None
        self.content_events = 0
        """Events with choices, a stand-in for completion tokens if no usage arrives."""
        self._buffer = b""

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to forward now: every complete event in the buffer, minus a hidden usage one."""
        buffer = self._buffer + chunk if self._buffer else chunk
        out: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(buffer):
            event = buffer[start : match.end()]
            start = match.end()
            if self._keep(event):
                out.append(event)
        self._buffer = buffer[start:]
        return b"".join(out) if len(out) != 1 else out[0]

    def flush(self) -> bytes:
        """Whatever is left at the end of the stream (an unterminated last event)."""
        tail, self._buffer = self._buffer, b""
        return tail if tail and self._keep(tail) else b""

    def _keep(self, event: bytes) -> bool:
        if b'"usage"' not in event:
            if b'"delta"' in event:
                self.content_events += 1
            return True
        try:
            obj = json.loads(_data_of(event))
        except ValueError:
            return True
        if not isinstance(obj, dict):
            return True
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            if obj.get("choices"):
                self.content_events += 1
            response = obj.get("response")  # a Responses API event
            if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
            return True
        self.usage = usage
        return not (self.strip_usage and not obj.get("choices"))

    def __repr__(self) -> str:
        return (
            f"<SSEFilter strip_usage={self.strip_usage} usage={self.usage is not None} "
            f"buffered={len(self._buffer)}>"
        )
