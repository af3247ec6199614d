"""Token governance per model: which limit field a model takes, and what `govern` sends."""

from __future__ import annotations

import json
from typing import Any, Final

import pytest

from ingress.chat.governance import Governance, Governed, Rule, govern, rules
from orchestrator.core.capacity import MODEL_CAPACITY, limit_field, lookup
from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import DeploymentConfig, load_settings
from orchestrator.core.tokens import requested_max_tokens
from simulator.openai.models import REASONING_MODELS, is_reasoning

MCT: Final = "max_completion_tokens"
PLAIN = Rule("max_tokens")
REASONING = Rule(MCT)
OFF = Rule(MCT, enabled=False)


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("gpt-4o", "max_tokens"),
        ("gpt-4o-mini-2024-07-18", "max_tokens"),
        ("gpt-4.1-nano", "max_tokens"),
        ("gpt-35-turbo", "max_tokens"),
        ("llama-3", "max_tokens"),
        ("omni-moderation", "max_tokens"),
        ("gpt-5", MCT),
        ("gpt-5-2025-08-07", MCT),
        ("gpt-5-mini", MCT),
        ("gpt-5-chat", MCT),
        ("gpt-5.1", MCT),
        ("o1", MCT),
        ("o1-mini", MCT),
        ("o3-pro", MCT),
        ("o4-mini-2025-04-16", MCT),
    ],
)
def test_limit_field_per_model(model: str, field: str) -> None:
    assert limit_field(model) == field


def test_the_table_and_the_simulator_agree_on_which_models_reason() -> None:
    for model in REASONING_MODELS | set(MODEL_CAPACITY):
        assert (limit_field(model) == MCT) is is_reasoning(model), model


def test_a_dated_model_has_its_base_models_capacity() -> None:
    assert lookup("o4-mini-2025-04-16") is MODEL_CAPACITY["o4-mini"]
    assert lookup("gpt-4o-2024-11-20") is MODEL_CAPACITY["gpt-4o"]
    assert lookup("o9") is None


@pytest.mark.parametrize(
    ("rule", "stream", "body", "expected", "capped"),
    [
        # a model that takes max_tokens: as before
        (PLAIN, False, {}, {"max_tokens": 1000}, None),
        (PLAIN, False, {"max_tokens": 50_000}, {"max_tokens": 2000}, 2000),
        (PLAIN, False, {MCT: 3000}, {MCT: 2000}, 2000),
        (PLAIN, False, {"max_tokens": 2000}, {"max_tokens": 2000}, None),
        (PLAIN, True, {"max_tokens": 50_000}, {"max_tokens": 50_000}, None),
        (PLAIN, True, {}, {}, None),
        # a reasoning model: never max_tokens
        (REASONING, False, {}, {MCT: 1000}, None),
        (REASONING, False, {"max_tokens": None}, {MCT: 1000}, None),
        (REASONING, False, {"max_tokens": 500}, {MCT: 500}, None),
        (REASONING, False, {"max_tokens": 50_000}, {MCT: 2000}, 2000),
        (REASONING, False, {MCT: 50_000}, {MCT: 2000}, 2000),
        (REASONING, False, {"max_tokens": 50, MCT: 300}, {MCT: 300}, None),
        (REASONING, False, {"max_tokens": 50, MCT: None}, {MCT: 50}, None),
        (REASONING, True, {"max_tokens": 50_000}, {MCT: 50_000}, None),
        (REASONING, True, {}, {}, None),
        # governance off: as sent, whatever it holds
        (OFF, False, {}, {}, None),
        (OFF, False, {"max_tokens": 50_000}, {"max_tokens": 50_000}, None),
        (OFF, True, {"max_tokens": 7}, {"max_tokens": 7}, None),
    ],
)
def test_governance_per_rule(
    rule: Rule, stream: bool, body: dict[str, Any], expected: dict[str, Any], capped: int | None
) -> None:
    before = dict(body)
    governed = govern(body, ceiling=2000, default=1000, rule=rule, stream=stream)
    assert body == expected
    assert governed == Governed(body != before, capped)
    if rule.field == MCT and rule.enabled:
        assert "max_tokens" not in body


@pytest.mark.parametrize("rule", [PLAIN, REASONING])
def test_a_response_is_governed_in_max_output_tokens(rule: Rule) -> None:
    body: dict[str, Any] = {"input": "hi"}
    assert govern(body, ceiling=2000, default=1000, endpoint="responses", rule=rule).changed
    assert body == {"input": "hi", "max_output_tokens": 1000}
    body = {"input": "hi", "max_output_tokens": 9000}
    governed = govern(body, ceiling=2000, default=1000, endpoint="responses", rule=rule)
    assert (body["max_output_tokens"], governed.capped) == (2000, 2000)


@pytest.mark.parametrize("client", [None, 300, 50_000])
def test_the_admission_charge_is_the_bound_the_model_works_to(client: int | None) -> None:
    """After governance, the charge (`requested_max_tokens`) is the reasoning model's own
    `max_completion_tokens`, whichever field the client used."""
    body: dict[str, Any] = {} if client is None else {"max_tokens": client}
    govern(body, ceiling=2000, default=1000, rule=REASONING)
    assert requested_max_tokens(body, 1) == body[MCT] == min(client or 1000, 2000)


def _deployments(*entries: dict[str, Any]) -> list[DeploymentConfig]:
    return [DeploymentConfig.model_validate(e) for e in entries]


def test_rules_per_deployment_and_its_spillover_chain() -> None:
    found = rules(
        _deployments(
            {"name": "mini", "model": "gpt-4o-mini", "ptus": 15},
            {"name": "o4", "model": "o4-mini", "ptus": 15},
            {"name": "o4-std", "model": "o4-mini", "kind": "standard", "tpm": 1000},
            {"name": "mini-spill", "model": "gpt-4o-mini", "ptus": 15, "spillover": "o4-std"},
            {"name": "forced", "model": "gpt-4o", "ptus": 15, "limit_field": MCT},
            {"name": "raw", "model": "o4-mini", "ptus": 15, "governance": False},
        )
    )
    assert found == {
        "mini": PLAIN,
        "o4": REASONING,
        "o4-std": REASONING,
        "mini-spill": REASONING,  # the one body may reach o4-mini
        "forced": REASONING,
        "raw": OFF,
    }


def test_governance_applies_the_named_deployments_rule() -> None:
    g = Governance.of(_deployments({"name": "o4", "model": "o4-mini", "ptus": 15}), 1000)
    body: dict[str, Any] = {"max_tokens": 9000}
    assert g.apply(body, "o4", ceiling=2000) == Governed(True, 2000)
    assert body == {MCT: 2000}
    body = {}
    g.apply(body, "unknown", ceiling=2000)
    assert body == {"max_tokens": 1000}


@pytest.mark.parametrize(
    ("field", "value"), [("limit_field", "max_output_tokens"), ("governance", "maybe")]
)
def test_a_bad_governance_field_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    entry = {"name": "a", "model": "o4-mini", "ptus": 15, field: value}
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps([entry]))
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("PTU_DEPLOYMENTS") and field in message, message
    assert "\n" not in message
