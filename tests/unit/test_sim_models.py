"""Which models reason and what capacity the simulator gives them, from tables."""

from __future__ import annotations

import pytest

from orchestrator.core.capacity import MODEL_CAPACITY
from simulator.config import parse_deployment
from simulator.openai.models import EXTRA_CAPACITY, REASONING_MODELS, capacity, is_reasoning


@pytest.mark.parametrize(
    ("model", "reasons"),
    [
        ("o1", True), ("o3", True), ("o3-mini", True), ("o4-mini", True),
        ("gpt-5", True), ("gpt-5-mini", True), ("gpt-5-nano", True),
        ("o4-mini-2025-04-16", True), ("gpt-5-2025-08-07", True),
        ("gpt-4o", False), ("gpt-4o-mini", False), ("gpt-4.1", False),
        ("gpt-5-chat", False), ("o4-minix", False),
    ],
)  # fmt: skip
def test_is_reasoning(model: str, reasons: bool) -> None:
    assert is_reasoning(model) is reasons


def test_every_reasoning_model_of_the_issue_can_be_deployed_as_a_ptu() -> None:
    for model in ("o1", "o3", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"):
        found = capacity(model)
        assert found is not None and found.input_tpm_per_ptu > 0 and found.output_weight >= 1
        spec = parse_deployment(f"d={model}:15")
        assert spec.capacity_tpm == 15 * found.input_tpm_per_ptu
    assert set(EXTRA_CAPACITY) <= REASONING_MODELS


@pytest.mark.parametrize("model", sorted(MODEL_CAPACITY))
def test_the_orchestrators_table_wins(model: str) -> None:
    assert capacity(model) is MODEL_CAPACITY[model]


def test_no_model_has_two_definitions() -> None:
    twice = set(EXTRA_CAPACITY) & set(MODEL_CAPACITY)
    assert not twice, f"now in orchestrator.core.capacity: drop {sorted(twice)} from EXTRA_CAPACITY"
