"""Which deployment a refused call spills to, and how the deployments count it, from tables."""

from __future__ import annotations

import random

import pytest

from simulator.config import parse_deployment
from simulator.openai.deployments import Deployment
from simulator.openai.spillover import TRIGGERS, choose_target, target_problem


@pytest.mark.parametrize(
    ("configured", "requested", "target"),
    [
        (None, None, None),
        (None, "", None),
        (None, " paygo ", "paygo"),
        ("paygo", None, "paygo"),
        ("paygo", "other", "paygo"),  # the deployment's property wins: no opting out
    ],
)
def test_choose_target(configured: str | None, requested: str | None, target: str | None) -> None:
    assert choose_target(configured, requested) == target


KINDS = {"ptu": "provisioned", "paygo": "standard"}


@pytest.mark.parametrize(("name", "problem"), [("paygo", None), ("ptu", "400"), ("missing", "404")])
def test_target_problem(name: str, problem: str | None) -> None:
    assert target_problem(name, KINDS) == problem


def test_triggers_are_azures() -> None:
    assert TRIGGERS == {429, 500, 503}


def test_a_spilled_refusal_is_counted_as_spilled_not_as_a_refusal() -> None:
    spec = parse_deployment("d=gpt-4o:15:spill=paygo")  # 10 s window: 100 % = 6,250
    d = Deployment(spec, window_s=10.0, tbt_ms=0, ttft_ms=0, rng=random.Random(0))
    assert d.admit(0.0, prompt_tokens=6_250, output_tokens=0, priority="high").status == 200
    assert d.admit(0.0, prompt_tokens=1, output_tokens=0, priority="low").status == 429
    assert d.admit(0.0, prompt_tokens=1, output_tokens=0, priority="low").status == 429
    d.spilled("low", 429)
    d.spillover_failed()
    d.faults.error_rate = 1.0
    d.reset(0.0)
    assert d.admit(0.0, prompt_tokens=1, output_tokens=0, priority="low").status == 500
    d.spilled("low", 500)
    state = d.state(0.0)
    assert (state["spilled"], state["errors"], state["throttled"]) == (1, 0, 0)
    assert state["by_priority"]["low"] == {
        "requests": 1, "throttled": 0, "completion_tokens": 0, "spilled": 1,
    }  # fmt: skip
    assert state["spillover"] == "paygo" and state["spillover_errors"] == 0  # reset
    d.patch(0.0, {"spillover": None})
    assert d.state(0.0)["spillover"] is None
    with pytest.raises(ValueError, match="deployment name or null"):
        d.patch(0.0, {"spillover": ""})
