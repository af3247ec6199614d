"""Token counts the simulator charges and reports, without a tokenizer.

Prompt tokens are `orchestrator.core.tokens.estimate_prompt_tokens`, the one
definition the orchestrator's `admit` events use too: OpenAI's chat accounting
(3 tokens per message, 1 per name, 3 to prime the reply) with about 4 characters
per text token and 85 per image part. The simulator charging exactly what the
orchestrator estimates is deliberate: where the simulated deployment disagrees
with the orchestrator's model is set by the reality knobs, not by accident here.

When a request gives no `max_tokens` / `max_completion_tokens` (a response: no
`max_output_tokens`), admission assumes `DEFAULT_MAX_TOKENS_ESTIMATE` (1,000)
output tokens: Azure documents that it
estimates a missing max_tokens and that this lowers concurrency; the figure is
ours (the orchestrator's `PTU_DEFAULT_MAX_TOKENS` default is the same).

Completion lengths are deterministic: a hash of the seed and the messages (a
response's instructions and input) picks a fraction in [0, 1); with a max_tokens
the length is between 20 % and 100 % of it, without one between 16 and 512 tokens.
`x-sim-completion-tokens` overrides the length, still capped at max_tokens.

A reasoning model (`simulator.openai.models.is_reasoning`) first spends hidden reasoning
tokens: between `REASONING_MIN` and `REASONING_MAX`, drawn from a second hash of the
seed and the messages and scaled by `reasoning_effort` (`REASONING_EFFORT`; medium when
not given). `max_completion_tokens` (a response's `max_output_tokens`) bounds reasoning
and visible output together, reasoning first: a small bound may leave no visible output
at all (finish reason `length`), as the service warns. Both count as completion tokens
and are charged with the output weight.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from orchestrator.core.tokens import LIMIT_FIELDS, estimate_prompt_tokens

__all__ = [
    "admission_output_tokens",
    "completion_length",
    "content_fraction",
    "estimate_prompt_tokens",
    "reasoning_fraction",
    "reasoning_length",
    "validated_max_tokens",
]

DEFAULT_MAX_TOKENS_ESTIMATE = 1_000
UNBOUNDED_MIN, UNBOUNDED_MAX = 16, 512
BOUNDED_MIN_FRACTION = 0.2
REASONING_MIN, REASONING_MAX = 64, 768
REASONING_EFFORT = {"minimal": 0.1, "low": 0.5, "medium": 1.0, "high": 2.0}
"""How much longer (or shorter) a model reasons at each `reasoning_effort`."""


def validated_max_tokens(body: dict[str, Any]) -> int | None:
    """`max_completion_tokens`, `max_tokens` or `max_output_tokens`; None when none is given."""
    for key in LIMIT_FIELDS:
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive integer")
            return value
    return None


def admission_output_tokens(max_tokens: int | None) -> int:
    """Output tokens admission charges for: max_tokens, or the documented estimate."""
    return DEFAULT_MAX_TOKENS_ESTIMATE if max_tokens is None else max_tokens


def content_fraction(seed: int, messages: list[Any]) -> float:
    """A deterministic number in [0, 1) from the seed and the request's messages."""
    material = f"{seed}:".encode() + json.dumps(messages, sort_keys=True).encode()
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def reasoning_fraction(seed: int, messages: list[Any]) -> float:
    """A second deterministic number in [0, 1), independent of `content_fraction`'s."""
    return content_fraction(seed, ["reasoning", *messages])


def reasoning_length(fraction: float, effort: str | None, bound: int | None) -> int:
    """Hidden reasoning tokens: drawn from `fraction`, scaled by the effort, within `bound`."""
    drawn = REASONING_MIN + math.floor(fraction * (REASONING_MAX - REASONING_MIN + 1))
    scaled = max(1, round(drawn * REASONING_EFFORT.get(effort or "medium", 1.0)))
    return scaled if bound is None else min(scaled, bound)


def completion_length(fraction: float, max_tokens: int | None, forced: int | None = None) -> int:
    """Completion tokens of a request: forced or drawn from `fraction`, never above max_tokens."""
    if forced is not None:
        return max(0, forced if max_tokens is None else min(forced, max_tokens))
    if max_tokens is None:
        return UNBOUNDED_MIN + math.floor(fraction * (UNBOUNDED_MAX - UNBOUNDED_MIN + 1))
    share = BOUNDED_MIN_FRACTION + (1.0 - BOUNDED_MIN_FRACTION) * fraction
    return max(1, min(max_tokens, math.ceil(max_tokens * share - 1e-9)))
