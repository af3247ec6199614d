"""Latency model: time to first token grows with the prompt, then a fixed time per token.

TTFT = ttft_ms x (1 + prompt_tokens / 1000): the base figure is paid once and once
more per 1,000 prompt tokens (prefill), plus a spike when fault injection draws one.
Each output token then takes tbt_ms. With both at 0 the simulator answers at once.
"""

from __future__ import annotations

PREFILL_TOKENS_PER_BASE = 1_000.0


def ttft_s(ttft_ms: float, prompt_tokens: int, spike_ms: float = 0.0) -> float:
    """Seconds until the first token."""
    return (ttft_ms * (1.0 + prompt_tokens / PREFILL_TOKENS_PER_BASE) + spike_ms) / 1000.0


def generation_s(tbt_ms: float, completion_tokens: int) -> float:
    """Seconds spent producing `completion_tokens` after the first token is due."""
    return tbt_ms * completion_tokens / 1000.0


def total_s(
    ttft_ms: float, tbt_ms: float, prompt_tokens: int, completion_tokens: int, spike_ms: float = 0.0
) -> float:
    """Seconds a non-streaming call takes: TTFT + n x TBT."""
    return ttft_s(ttft_ms, prompt_tokens, spike_ms) + generation_s(tbt_ms, completion_tokens)
