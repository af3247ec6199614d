"""Deployment spec parsing and SimConfig validation."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import ConfigError
from simulator.config import DEFAULT_RESOURCE_ID, SimConfig, parse_deployment


def test_provisioned_spec_uses_the_capacity_table() -> None:
    spec = parse_deployment("gpt-4o-mini-ptu=gpt-4o-mini:15")
    assert (spec.name, spec.model, spec.kind, spec.ptus) == (
        "gpt-4o-mini-ptu",
        "gpt-4o-mini",
        "provisioned",
        15.0,
    )
    assert spec.capacity_tpm == 15 * 37_000
    assert spec.output_weight == 3.0


def test_standard_spec() -> None:
    spec = parse_deployment("paygo=gpt-4o:450000:standard")
    assert spec.kind == "standard"
    assert spec.capacity_tpm == 450_000
    assert spec.rpm == 2_700
    assert parse_deployment("x=some-new-model:1000:standard").output_weight == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "nomodel",
        "=gpt-4o:15",
        "a=gpt-4o",
        "a=gpt-4o:x",
        "a=gpt-4o:0",
        "a=gpt-4o:15:provisioned",
        "a=unknown-model:15",
        "a=:15",
    ],
)
def test_bad_specs_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match="--deployment"):
        parse_deployment(text)


def test_config_defaults_and_validation() -> None:
    config = SimConfig.from_specs([])
    assert [d.name for d in config.deployments] == ["gpt-4o-mini-ptu"]
    assert (config.window_s, config.tbt_ms, config.ttft_ms, config.seed) == (60.0, 10.0, 50.0, 0)
    assert config.resource_id == DEFAULT_RESOURCE_ID
    with pytest.raises(ConfigError, match="duplicate"):
        SimConfig.from_specs(["a=gpt-4o:15", "a=gpt-4o:20"])
    with pytest.raises(ConfigError, match="window"):
        SimConfig.from_specs([], window_s=0)
    with pytest.raises(ConfigError, match="tbt"):
        SimConfig.from_specs([], tbt_ms=-1)


def test_reality_knobs_default_to_the_orchestrator_model_and_are_validated() -> None:
    config = SimConfig.from_specs([])
    assert (config.utilisation_model, config.utilisation_header) == ("bucket", "exact")
    assert config.background_share == 0.0
    with pytest.raises(ConfigError, match="--utilisation-model"):
        SimConfig.from_specs([], utilisation_model="rate")
    with pytest.raises(ConfigError, match="--utilisation-header"):
        SimConfig.from_specs([], utilisation_header="sometimes")
    with pytest.raises(ConfigError, match="--background-share"):
        SimConfig.from_specs([], background_share=1.2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"header_lag_s": -1.0}, "--header-lag-s must be between 0 and 600"),
        ({"header_smoothing_s": float("inf")}, "--header-smoothing-s"),
        ({"background_profile": "square:0,0.5"}, "--background-profile: .* expected"),
        ({"background_profile": "square:0,0.5,5", "background_share": 0.2}, "not both"),
    ],
)
def test_new_reality_flags_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimConfig.from_specs([], **kwargs)


def test_the_background_is_the_profile_else_the_share() -> None:
    assert SimConfig.from_specs([], background_share=0.2).background == 0.2
    square = SimConfig.from_specs([], background_profile="square:0,0.5,15")
    assert square.background == "square:0,0.5,15"
    assert (square.header_lag_s, square.header_smoothing_s) == (3.0, 5.0)


def test_a_provisioned_spec_may_name_its_spillover_deployment() -> None:
    spec = parse_deployment("ptu=gpt-4o:15:spill=paygo")
    assert (spec.kind, spec.ptus, spec.spillover) == ("provisioned", 15.0, "paygo")
    assert parse_deployment("ptu=gpt-4o:15").spillover is None
    config = SimConfig.from_specs(["ptu=gpt-4o:15:spill=paygo", "paygo=gpt-4o:1000:standard"])
    assert config.deployments[0].spillover == "paygo"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["ptu=gpt-4o:15:spill="], "spill= names another, standard deployment"),
        (["ptu=gpt-4o:15:spill=ptu"], "spill= names another"),
        (["ptu=gpt-4o:15:spillover=x"], "'globalbatch' or 'spill=STD'"),
        (["ptu=gpt-4o:15:spill=paygo"], "spill=paygo is not a standard deployment"),
        (["ptu=gpt-4o:15:spill=other", "other=gpt-4o:15"], "spill=other is not a standard"),
    ],
)
def test_bad_spillover_specs(specs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimConfig.from_specs(specs)
