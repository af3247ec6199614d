"""Reality specs of `ptu bench robustness` and the robustness metrics, from tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.harness.sampler import Sample, parse_state
from bench.report.metrics import background_counts, estimate_error
from bench.scenarios.realities import (
    DEFAULT_REALITIES,
    Reality,
    parse_realities,
    parse_reality,
    simulator_options,
    simulator_patch,
)
from devstack.stack import SimulatorOptions
from orchestrator.core.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("nominal", Reality("nominal")),
        ("bypass", Reality("bypass", bypass=0.3)),
        ("capacity", Reality("capacity", capacity=0.8)),
        ("bucket", Reality("bucket", bucket=0.5)),
        ("sliding", Reality("sliding", model="sliding")),
        ("noisy", Reality("noisy", header="noisy")),
        ("absent", Reality("absent", header="absent")),
        ("bypass=0.2+capacity=0.85", Reality("bypass=0.2+capacity=0.85", 0.2, 0.85)),
        (
            "sliding+bucket=2+header=noisy",
            Reality("sliding+bucket=2+header=noisy", bucket=2.0, model="sliding", header="noisy"),
        ),
        (" model=bucket ", Reality("model=bucket")),
    ],
)
def test_parse_reality(spec: str, expected: Reality) -> None:
    assert parse_reality(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("weather", "unknown knob"),
        ("bypass=lots", "not a number"),
        ("bypass=0.95", "between 0 and 0.9"),
        ("capacity=0", "between 0.1 and 2"),
        ("model=rate", "bucket, sliding"),
        ("header=late", "exact, noisy, absent"),
        ("bypass+bypass=0.1", "given twice"),
        ("noisy+absent", "given twice"),  # both set the header
        ("sliding=1", "unknown knob"),
    ],
)
def test_bad_reality_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_reality(spec)


def test_default_list_and_duplicates() -> None:
    realities = parse_realities(",".join(DEFAULT_REALITIES))
    assert [r.name for r in realities] == list(DEFAULT_REALITIES)
    assert realities[0].describe() == "as the orchestrator assumes"
    assert realities[1].describe() == "other apps use 30% of capacity directly"
    with pytest.raises(ConfigError, match="duplicate"):
        parse_realities("bypass, bypass")
    with pytest.raises(ConfigError, match="at least one"):
        parse_realities(" , ")


def test_simulator_options_serve_the_reality_while_the_orchestrator_is_told_nominal() -> None:
    told = SimulatorOptions(ptus=15, window_s=10.0, https=True)
    sim = simulator_options(told, parse_reality("capacity+bucket+bypass=0.2+sliding+absent"))
    argv = sim.argv(8081, Path("/tmp"))
    flags = dict(zip(argv[::2], argv[1::2], strict=False))
    assert flags["--deployment"] == "gpt-4o-mini-ptu=gpt-4o-mini:12"
    assert flags["--window-s"] == "5"
    assert flags["--background-share"] == "0.2"
    assert flags["--utilisation-model"] == "sliding"
    assert flags["--utilisation-header"] == "absent"
    assert sim.deployments_json() == told.deployments_json()  # told 15 PTU
    assert simulator_patch(told, parse_reality("capacity=0.85+bypass=0.1")) == {
        "ptus": 12.75,
        "window_s": 10.0,
        "utilisation_model": "bucket",
        "utilisation_header": "exact",
        "background_share": 0.1,
    }
    assert '"ptus": 15' in told.deployments_json()


def _at(t: float, truth: float, view: float | None) -> Sample:
    return Sample(t, truth, 0, 0, 0, 0, 0, 0, 0, view=view)


@pytest.mark.parametrize(
    ("samples", "mae", "missing"),
    [
        ([], None, 0.0),
        ([_at(5.0, 0.5, 0.0)], None, 0.0),  # the first 10 s do not count
        ([_at(10.0, 0.5, 0.45), _at(11.0, 0.2, 0.3)], 7.5, 0.0),
        ([_at(12.0, 0.5, None), _at(13.0, 0.5, 0.5)], 0.0, 0.5),  # no reading: counted apart
        ([_at(12.0, 0.5, None)], None, 1.0),
    ],
)
def test_estimate_error(samples: list[Sample], mae: float | None, missing: float) -> None:
    got_mae, got_missing = estimate_error(samples, 10.0)
    assert got_mae == (None if mae is None else pytest.approx(mae))
    assert got_missing == missing


def test_background_counters_come_from_the_simulator_state() -> None:
    body = {
        "deployments": {
            "d": {
                "utilization": 0.4,
                "background": {"share": 0.3, "requests": 120, "throttled": 7},
                "by_priority": {"high": {"requests": 3, "throttled": 1}},
            }
        }
    }
    sample = parse_state(body, "d", 1.0)
    assert (sample.bg_requests, sample.bg_throttled, sample.high_throttled) == (120, 7, 1)
    start = parse_state(
        {
            "deployments": {
                "d": {"utilization": 0.0, "background": {"requests": 20, "throttled": 2}}
            }
        },
        "d",
        0.0,
    )
    assert background_counts([start, sample]) == (100, 5)  # only what the run met
    assert background_counts([]) == (0, 0)
    assert parse_state({"deployments": {"d": {"utilization": 0.1}}}, "d", 0.0).bg_requests == 0
