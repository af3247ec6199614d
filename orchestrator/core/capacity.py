"""Model capacity per PTU.

Source: Azure OpenAI provisioned-throughput onboarding documentation (see
AZURE_FACTS.md §3): input tokens per minute per PTU, the weight of one output
token in input-token equivalents, and the purchase minimum and step for global
and data-zone deployments. The o-series and the smaller gpt-5 models are not in that
table: their figures here are plausible ones in its shape (the simulator serves them
with the same numbers), to be replaced by published ones when a deployment has them
(`input_tpm_per_ptu` / `output_weight` in `PTU_DEPLOYMENTS` override them today).

`limit_field` is the field that bounds a model's output. Reasoning models (the o-series,
gpt-5 and later, AZURE_FACTS.md §10) refuse `max_tokens` with a 400 and take
`max_completion_tokens`, which also bounds their hidden reasoning tokens; the others
take `max_tokens`. A dated version (`o4-mini-2025-04-16`) is its base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

LimitField = Literal["max_tokens", "max_completion_tokens"]
"""The chat completions field that bounds a model's output."""
REASONING_LIMIT: LimitField = "max_completion_tokens"


@dataclass(frozen=True, slots=True)
class ModelCapacity:
    """Throughput of one PTU of a model."""

    input_tpm_per_ptu: int
    output_weight: float
    min_ptus: int = 15
    ptu_step: int = 5
    tokens_per_s: float = 33.0
    limit_field: LimitField = "max_tokens"


MODEL_CAPACITY: dict[str, ModelCapacity] = {
    "gpt-4o": ModelCapacity(2_500, 3.0, tokens_per_s=25.0),
    "gpt-4o-mini": ModelCapacity(37_000, 3.0, tokens_per_s=33.0),
    "gpt-4.1": ModelCapacity(3_000, 4.0, tokens_per_s=80.0),
    "gpt-4.1-mini": ModelCapacity(14_900, 4.0, tokens_per_s=90.0),
    "gpt-4.1-nano": ModelCapacity(59_400, 4.0, tokens_per_s=100.0),
    "gpt-5": ModelCapacity(4_750, 8.0, tokens_per_s=50.0, limit_field=REASONING_LIMIT),
    "gpt-5-mini": ModelCapacity(23_750, 8.0, tokens_per_s=80.0, limit_field=REASONING_LIMIT),
    "gpt-5-nano": ModelCapacity(95_000, 8.0, tokens_per_s=100.0, limit_field=REASONING_LIMIT),
    "o1": ModelCapacity(3_000, 4.0, tokens_per_s=25.0, limit_field=REASONING_LIMIT),
    "o3": ModelCapacity(3_000, 4.0, tokens_per_s=30.0, limit_field=REASONING_LIMIT),
    "o3-mini": ModelCapacity(2_500, 4.0, tokens_per_s=60.0, limit_field=REASONING_LIMIT),
    "o4-mini": ModelCapacity(5_400, 4.0, tokens_per_s=60.0, limit_field=REASONING_LIMIT),
}
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_REASONING_FAMILY = re.compile(r"^(?:o\d+|gpt-[5-9])(?:[-.].*)?$")
"""Models outside the table that reason: o1-mini, o3-pro, gpt-5-chat, gpt-5.1 and later."""


def base_model(model: str) -> str:
    """The model without a version date suffix (`gpt-5-2025-08-07` -> `gpt-5`)."""
    return _DATED.sub("", model)


def lookup(model: str) -> ModelCapacity | None:
    """The capacity of a known model (a dated version as its base), or None."""
    return MODEL_CAPACITY.get(model) or MODEL_CAPACITY.get(base_model(model))


def limit_field(model: str) -> LimitField:
    """The field that bounds `model`'s output: the table's, else by family."""
    known = lookup(model)
    if known is not None:
        return known.limit_field
    return REASONING_LIMIT if _REASONING_FAMILY.match(base_model(model)) else "max_tokens"
