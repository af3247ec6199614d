from __future__ import annotations

import json

import pytest

from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import load_settings

GOOD = '[{"name":"gpt-4o-mini-ptu","model":"gpt-4o-mini","ptus":25}]'


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.redis_url == "redis://localhost:6379/0"
    assert (s.queue_backend, s.utilization_source) == ("redis", "estimate")
    assert (s.lower_threshold, s.upper_threshold, s.max_concurrency) == (0.20, 0.90, 10)
    assert s.default_priority == "high"


def test_deployment_capacity_from_the_model_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", GOOD)
    d = load_settings().deployments[0]
    assert d.capacity_tpm == 25 * 37_000
    assert d.weight == 3.0


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PTU_LOWER_THRESHOLD": "0.9"}, "PTU_LOWER_THRESHOLD"),
        ({"PTU_LOWER_THRESHOLD": "0.5", "PTU_UPPER_THRESHOLD": "0.4"}, "PTU_LOWER_THRESHOLD"),
        ({"PTU_UPPER_THRESHOLD": "1.5"}, "PTU_UPPER_THRESHOLD"),
        ({"PTU_LOWER_THRESHOLD": "-0.1"}, "PTU_LOWER_THRESHOLD"),
        ({"PTU_DEPLOYMENTS": "[{"}, "PTU_DEPLOYMENTS"),
        ({"PTU_DEPLOYMENTS": '[{"name":"a","model":"llama","ptus":5}]'}, "PTU_DEPLOYMENTS"),
        ({"PTU_DEPLOYMENTS": '[{"name":"a","model":"gpt-4o"}]'}, "PTU_DEPLOYMENTS"),
        ({"PTU_MAX_CONCURRENCY": "many"}, "PTU_MAX_CONCURRENCY"),
        ({"PTU_QUEUE_BACKEND": "kafka"}, "PTU_QUEUE_BACKEND"),
    ],
)
def test_bad_config_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(names), message
    assert "\n" not in message


def test_unknown_model_with_explicit_capacity_is_fine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PTU_DEPLOYMENTS",
        '[{"name":"a","model":"llama","ptus":5,"input_tpm_per_ptu":1000,"output_weight":2}]',
    )
    d = load_settings().deployments[0]
    assert (d.capacity_tpm, d.weight) == (5000.0, 2.0)


def test_per_deployment_thresholds_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "PTU_DEPLOYMENTS",
        '[{"name":"a","model":"gpt-4o","ptus":15,"lower_threshold":0.1,"max_concurrency":4}]',
    )
    s = load_settings()
    assert s.thresholds(s.deployments[0]) == (0.1, 0.9, 4)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"PTU_LOWER_THRESHOLD": "0.95"}, "PTU_LOWER_THRESHOLD: 0.95 must be below"),
        ({"PTU_API_KEYS": "nope"}, "PTU_API_KEYS: not valid JSON"),
        (
            {"PTU_DEPLOYMENTS": '[{"name":"a","model":"llama","ptus":5}]'},
            "PTU_DEPLOYMENTS [0]: deployment 'a': unknown model 'llama'",
        ),
        (
            {"PTU_DEPLOYMENTS": '[{"name":"a","model":"gpt-4o","ptus":5,"spillover":"b"}]'},
            "PTU_DEPLOYMENTS: spillover 'b' is not a deployment",
        ),
    ],
)
def test_the_line_names_the_variable_and_the_problem(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], line: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(line), str(info.value)


PTU = {"name": "ptu", "model": "gpt-4o", "ptus": 15}
STD = {"name": "std", "model": "gpt-4o", "kind": "standard", "tpm": 1000}


def test_spillover_entries_are_names_or_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    chain = ["std", {"name": "far", "service_tier": "priority"}]
    far = {**STD, "name": "far", "endpoint": "https://far.example.com"}
    deployments = [{**PTU, "spillover": [{"name": "std", "native": True}, *chain[1:]]}, STD, far]
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps(deployments))
    d = load_settings().deployments[0]
    assert d.spillover_names == ["std", "far"] and d.native_spillover == "std"
    assert [(e.native, e.service_tier) for e in d.spillover] == [(True, None), (False, "priority")]
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps([{**PTU, "spillover": chain}, STD, far]))
    d = load_settings().deployments[0]
    assert d.spillover_names == ["std", "far"] and d.native_spillover is None
    assert d.low_priority_spill == "keep"


FAR_STD = {**STD, "name": "far", "endpoint": "https://far.example.com"}


@pytest.mark.parametrize(
    ("deployments", "line"),
    [
        (  # Azure spills only within the resource
            [{**PTU, "spillover": {"name": "far", "native": True}}, FAR_STD],
            "PTU_DEPLOYMENTS: spillover 'far' of 'ptu' is native: it must be a standard",
        ),
        (  # ... and only to a standard deployment
            [{**PTU, "spillover": {"name": "p2", "native": True}}, {**PTU, "name": "p2"}],
            "PTU_DEPLOYMENTS: spillover 'p2' of 'ptu' is native: it must be a standard",
        ),
        (
            [
                {
                    **PTU,
                    "spillover": [{"name": "std", "native": True}, {"name": "s2", "native": True}],
                }
            ],
            "PTU_DEPLOYMENTS [0]: deployment 'ptu': one native spillover entry at most",
        ),
        (
            [{**PTU, "spillover": {"name": "std", "native": True, "service_tier": "priority"}}],
            "PTU_DEPLOYMENTS [0]: deployment 'ptu': spillover 'std' is native",
        ),
        (
            [{**STD, "name": "s0", "spillover": {"name": "std", "native": True}}, STD],
            "PTU_DEPLOYMENTS [0]: deployment 's0': only a provisioned one spills natively",
        ),
        (
            [{**PTU, "low_priority_spill": "drop"}],
            "PTU_DEPLOYMENTS [0.low_priority_spill]: Input should be 'keep' or 'fail'",
        ),
    ],
)
def test_bad_spillover_entries_are_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, deployments: list[dict[str, object]], line: str
) -> None:
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps(deployments))
    monkeypatch.setenv("PTU_AZURE_OPENAI_ENDPOINT", "https://ptu.example.com")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(line), str(info.value)
