"""One high-priority call on its way upstream, and the answer chosen for the client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx2

from ingress.chat.headers import RawHeaders
from ingress.chat.targets import Target
from orchestrator.calls.signals import Signals
from orchestrator.core.schemas import Endpoint
from orchestrator.telemetry.base import NOOP_CALL, LLMCall


@dataclass(slots=True)
class Call:
    """One high-priority chat completion (or response) on its way upstream."""

    target: Target
    payload: bytes
    query: str
    client_headers: RawHeaders
    request_id: str
    prompt_tokens: int
    max_tokens: int
    stream: bool = False
    strip_usage: bool = False
    tenant: str = "default"
    priority: str = "high"
    endpoint: Endpoint = "chat/completions"
    span: LLMCall = NOOP_CALL
    """The GenAI client span of the call (ended with its outcome by the `CallRecorder`)."""

    def payload_for(self, target: Target) -> bytes:
        """The body sent to `target`: a response names its deployment in `model`; a chain
        entry with a `service_tier` asks for it."""
        renamed = self.endpoint == "responses" and target is not self.target
        if not renamed and target.service_tier is None:
            return self.payload
        body = json.loads(self.payload)
        if renamed:
            body["model"] = target.name
        if target.service_tier is not None:
            body["service_tier"] = target.service_tier
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(slots=True)
class Answer:
    """The response chosen for the client, from which target, and its first stream bytes."""

    resp: httpx2.Response
    used: Target
    admitted: asyncio.Task[None] | None
    first: bytes = b""
    chunks: AsyncIterator[bytes] | None = None
    signals: Signals | None = None
    """What the response's headers said about the deployment (read once, by the spillover)."""

    @property
    def spilled(self) -> bool:
        """Azure served the call from the target's standard deployment (native spillover)."""
        return self.signals is not None and self.signals.spilled

    @property
    def served(self) -> str:
        """The deployment that served the call: it is charged, named and counted."""
        return self.used.name if self.signals is None else self.signals.served(self.used.name)
