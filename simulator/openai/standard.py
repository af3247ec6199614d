"""Rate limits of a standard (pay-as-you-go) deployment, pure and clock-free.

Tokens per minute are counted in fixed minute windows: each admitted call adds its
estimated tokens (prompt + max_tokens) and the count resets when the minute turns.
Requests per minute are enforced over 10 s windows, one sixth of the RPM each
(Azure checks RPM over 1-10 s windows; AZURE_FACTS.md §2). No reconciliation:
the estimate stands, as Azure's quota documentation describes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TOKEN_WINDOW_S = 60.0
REQUEST_WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class StandardDecision:
    """Outcome of one admission check with the values of the rate-limit headers."""

    admitted: bool
    remaining_tokens: int
    remaining_requests: int
    retry_after_s: float = 0.0


class StandardLimiter:
    """TPM and RPM windows of one standard deployment."""

    __slots__ = ("_req_window", "_requests", "_tok_window", "_tokens", "tpm")

    def __init__(self, tpm: float) -> None:
        if tpm <= 0:
            raise ValueError("tpm must be positive")
        self.tpm = tpm
        self._tok_window = -1
        self._tokens = 0.0
        self._req_window = -1
        self._requests = 0

    @property
    def requests_per_window(self) -> int:
        """Requests allowed per 10 s window: RPM (6 per 1,000 TPM) / 6, at least 1."""
        return max(1, math.floor(self.tpm / 1000.0 * 6.0 * REQUEST_WINDOW_S / 60.0))

    def _roll(self, now: float) -> None:
        tok_window = math.floor(now / TOKEN_WINDOW_S)
        if tok_window != self._tok_window:
            self._tok_window, self._tokens = tok_window, 0.0
        req_window = math.floor(now / REQUEST_WINDOW_S)
        if req_window != self._req_window:
            self._req_window, self._requests = req_window, 0

    def remaining(self, now: float) -> tuple[int, int]:
        """Tokens left this minute and requests left this 10 s window."""
        self._roll(now)
        tokens = max(0, math.floor(self.tpm - self._tokens))
        return tokens, max(0, self.requests_per_window - self._requests)

    def utilization(self, now: float) -> float:
        """Share of this minute's token quota already used."""
        self._roll(now)
        return self._tokens / self.tpm

    def try_admit(self, now: float, tokens: float) -> StandardDecision:
        """Admit when both windows have room, else say how long until the blocking one resets."""
        self._roll(now)
        if self._requests + 1 > self.requests_per_window:
            wait = (self._req_window + 1) * REQUEST_WINDOW_S - now
            return StandardDecision(False, *self.remaining(now), retry_after_s=wait)
        if self._tokens + tokens > self.tpm:
            wait = (self._tok_window + 1) * TOKEN_WINDOW_S - now
            return StandardDecision(False, *self.remaining(now), retry_after_s=wait)
        self._tokens += tokens
        self._requests += 1
        return StandardDecision(True, *self.remaining(now))

    def reset(self) -> None:
        """Forget both windows."""
        self._tok_window, self._tokens, self._req_window, self._requests = -1, 0.0, -1, 0

    def __repr__(self) -> str:
        return (
            f"<StandardLimiter tpm={self.tpm:g} tokens={self._tokens:g} requests={self._requests}>"
        )
