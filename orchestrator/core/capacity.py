"""Model capacity per PTU.

Source: Azure OpenAI provisioned-throughput onboarding documentation (see
AZURE_FACTS.md §3): input tokens per minute per PTU, the weight of one output
token in input-token equivalents, and the purchase minimum and step for global
and data-zone deployments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelCapacity:
    """Throughput of one PTU of a model."""

    input_tpm_per_ptu: int
    output_weight: float
    min_ptus: int = 15
    ptu_step: int = 5
    tokens_per_s: float = 33.0


MODEL_CAPACITY: dict[str, ModelCapacity] = {
    "gpt-4o": ModelCapacity(2_500, 3.0, tokens_per_s=25.0),
    "gpt-4o-mini": ModelCapacity(37_000, 3.0, tokens_per_s=33.0),
    "gpt-4.1": ModelCapacity(3_000, 4.0, tokens_per_s=80.0),
    "gpt-4.1-mini": ModelCapacity(14_900, 4.0, tokens_per_s=90.0),
    "gpt-4.1-nano": ModelCapacity(59_400, 4.0, tokens_per_s=100.0),
    "gpt-5": ModelCapacity(4_750, 8.0, tokens_per_s=50.0),
}


def lookup(model: str) -> ModelCapacity | None:
    """The capacity of a known model, or None."""
    return MODEL_CAPACITY.get(model)
