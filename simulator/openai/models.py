"""What the simulator knows of a model: its PTU capacity and whether it reasons.

Capacity comes from the orchestrator's table (`orchestrator.core.capacity`, one definition
of the published figures); `EXTRA_CAPACITY` only fills in models that table lacks, so a
reasoning-model deployment can be simulated. Those extra figures are plausible, in the
shape of the provisioned-throughput onboarding table (input TPM per PTU, output weight),
not published numbers; the orchestrator's table wins as soon as it carries the model.

Reasoning models (AZURE_FACTS.md §10: the o-series and the gpt-5 family) reject
`max_tokens` and take `max_completion_tokens`, which also bounds their hidden reasoning
tokens (`simulator.openai.tokens.reasoning_length`).
"""

from __future__ import annotations

import re

from orchestrator.core.capacity import ModelCapacity, lookup

EXTRA_CAPACITY: dict[str, ModelCapacity] = {}  # all in the orchestrator's table now
REASONING_MODELS = frozenset(
    {"o1", "o1-mini", "o3", "o3-mini", "o3-pro", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"}
)
_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def capacity(model: str) -> ModelCapacity | None:
    """The PTU capacity of a model: the orchestrator's table, else the simulator's extras."""
    return lookup(model) or EXTRA_CAPACITY.get(model)


def is_reasoning(model: str) -> bool:
    """Whether the model reasons (rejects `max_tokens`); a dated version counts as its base."""
    return _DATED.sub("", model) in REASONING_MODELS
