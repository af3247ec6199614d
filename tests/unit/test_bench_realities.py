"""Reality specs of `ptu bench robustness` and the robustness metrics, from tables."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench.harness.sampler import Sample, parse_state
from bench.harness.workload import MixedWorkload, batch_calls
from bench.report.metrics import background_counts, estimate_error
from bench.scenarios.enact import overasking
from bench.scenarios.realities import (
    DEFAULT_REALITIES,
    OVERASK_MAX_TOKENS,
    QUICK_REALITIES,
    Reality,
    parse_realities,
    parse_reality,
    simulator_options,
    simulator_patch,
    split_specs,
    timed_patches,
)
from bench.scenarios.robustness import against_oracle
from devstack.stack import SimulatorOptions
from orchestrator.core.errors import ConfigError
from simulator import cli as simulator_cli
from simulator.openai.patch import parse_changes


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
        ("lagged", Reality("lagged", header="lagged", header_lag_s=3.0)),
        ("lagged=5", Reality("lagged=5", header="lagged", header_lag_s=5.0)),
        ("header=lagged", Reality("header=lagged", header="lagged", header_lag_s=3.0)),
        ("smoothed=10", Reality("smoothed=10", header="smoothed", header_smoothing_s=10.0)),
        ("header=smoothed", Reality("header=smoothed", header="smoothed", header_smoothing_s=5.0)),
        ("absent+bypass=0.3", Reality("absent+bypass=0.3", bypass=0.3, header="absent")),
        ("square", Reality("square", square=(0.0, 0.5, 15.0))),
        ("square=0.1,0.4,20", Reality("square=0.1,0.4,20", square=(0.1, 0.4, 20.0))),
        ("step", Reality("step", step=(0.6, 5.0, 20.0))),
        ("step=0.7", Reality("step=0.7", step=(0.7, 5.0, 20.0))),
        (
            "step=0.5,2,8+capacity=0.9",
            Reality("step=0.5,2,8+capacity=0.9", capacity=0.9, step=(0.5, 2.0, 8.0)),
        ),
        ("overask", Reality("overask", overask=True)),
        (
            "bypass=0.2+lagged=3",
            Reality("bypass=0.2+lagged=3", bypass=0.2, header="lagged", header_lag_s=3.0),
        ),
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
        ("lagged=0", "between 0.1 and 60"),
        ("smoothed=soon", "not a number"),
        ("lagged+noisy", "header given twice"),
        ("smoothed=5+header=exact", "header given twice"),
        ("square+bypass", "bypass given twice"),
        ("square=0,0.5", "one number or three"),
        ("square=0,0.95,15", "between 0 and 0.9"),
        ("square=0,0.5,0.5", "between 1 and 600"),
        ("step=0", "between 0.1 and 2"),
        ("step=0.6,-1,20", "between 0 and 600"),
        ("overask=2", "unknown knob"),
        ("header=lagged=3", "lagged=3"),
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
    assert "lagged=5" in DEFAULT_REALITIES and "step" in DEFAULT_REALITIES
    assert parse_reality(QUICK_REALITIES[0]).header == "lagged"  # the CI run: a late header


@pytest.mark.parametrize(
    ("text", "specs"),
    [
        ("bypass, capacity", ["bypass", "capacity"]),
        ("lagged=3,square=0,0.5,15,step=0.6", ["lagged=3", "square=0,0.5,15", "step=0.6"]),
        ("step=0.6,5,20", ["step=0.6,5,20"]),
        ("square=0,0.5,15+lagged=2, nominal", ["square=0,0.5,15+lagged=2", "nominal"]),
        (",,", []),
    ],
)
def test_a_bare_number_continues_the_spec_before_it(text: str, specs: list[str]) -> None:
    assert split_specs(text) == specs
    if specs:
        assert [r.name for r in parse_realities(text)] == specs


def test_describe_names_the_new_realities() -> None:
    assert parse_reality("lagged=3").describe() == "header 3 s late"
    assert parse_reality("smoothed=10").describe() == "header a 10 s average"
    assert parse_reality("square").describe() == "other apps use 0% <-> 50% of capacity, every 15 s"
    assert parse_reality("step").describe() == "capacity x0.6 from 5 s after the batch, for 20 s"
    assert "max_tokens 4000" in parse_reality("overask").describe()


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
    assert "--header-lag-s" not in argv and "--background-profile" not in argv


def test_new_knobs_reach_the_simulator_flags_and_patch() -> None:
    told = SimulatorOptions(ptus=15, window_s=10.0)
    lagged = parse_reality("lagged=4+square=0,0.5,15")
    argv = simulator_options(told, lagged).argv(8081, Path("/tmp"))
    flags = dict(zip(argv[::2], argv[1::2], strict=False))
    assert flags["--utilisation-header"] == "lagged"
    assert flags["--header-lag-s"] == "4"
    assert flags["--background-profile"] == "square:0,0.5,15"
    assert "--header-smoothing-s" not in flags and "--background-share" not in flags
    assert simulator_patch(told, lagged) == {
        "ptus": 15.0,
        "window_s": 10.0,
        "utilisation_model": "bucket",
        "utilisation_header": "lagged",
        "background_profile": "square:0,0.5,15",  # in place of a share: never both
        "header_lag_s": 4.0,
    }
    smoothed = simulator_patch(told, parse_reality("smoothed=8"))
    assert smoothed["header_smoothing_s"] == 8.0 and smoothed["utilisation_header"] == "smoothed"
    assert "header_lag_s" not in smoothed
    assert "background_profile" not in smoothed and smoothed["background_share"] == 0.0


@pytest.mark.parametrize(
    ("spec", "batch_at", "expected"),
    [
        ("nominal", 3.0, ()),
        ("step", 3.0, ((8.0, {"ptus": 9.0}), (28.0, {"ptus": 15.0}))),
        # a step is a share of what the reality serves, and back to that
        ("step=0.5,1,4+capacity=0.8", 2.0, ((3.0, {"ptus": 6.0}), (7.0, {"ptus": 12.0}))),
    ],
)
def test_a_step_is_two_timed_patches_from_the_batch_start(
    spec: str, batch_at: float, expected: tuple[tuple[float, dict[str, object]], ...]
) -> None:
    told = SimulatorOptions(ptus=15)
    got = timed_patches(told, parse_reality(spec), batch_at)
    assert len(got) == len(expected)
    for (at, body), (want_at, want_body) in zip(got, expected, strict=True):
        assert at == pytest.approx(want_at)
        assert body == pytest.approx(want_body)


def test_rows_are_compared_with_their_realitys_oracle() -> None:
    rows = [
        {"reality": "a", "calibration": "off", "util_mean": 0.6, "lp_makespan_s": 30.0},
        {"reality": "a", "calibration": "auto", "util_mean": 0.72, "lp_makespan_s": None},
        {"reality": "a", "calibration": "oracle", "util_mean": 0.8, "lp_makespan_s": 24.0},
        {"reality": "b", "calibration": "auto", "util_mean": 0.5, "lp_makespan_s": 10.0},
    ]
    for row in rows:
        row.update(util_x_oracle=None, makespan_x_oracle=None)
    against_oracle(rows)
    assert [(r["util_x_oracle"], r["makespan_x_oracle"]) for r in rows] == [
        (0.75, 1.25),
        (0.9, None),  # the batch did not finish: no makespan to compare
        (1.0, 1.0),
        (None, None),  # no oracle ran for b
    ]


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


@pytest.mark.parametrize("spec", [*DEFAULT_REALITIES, *QUICK_REALITIES, "square=0.1,0.4,20"])
def test_the_simulator_accepts_every_realitys_flags_and_patches(spec: str) -> None:
    told = SimulatorOptions(ptus=15, window_s=10.0)
    reality = parse_reality(spec)
    parser = argparse.ArgumentParser()
    simulator_cli.add_arguments(parser)
    args = parser.parse_args(simulator_options(told, reality).argv(8081, Path("/tmp")))
    assert args.utilisation_header == reality.header
    assert not (args.background_profile and args.background_share)
    parse_changes(simulator_patch(told, reality), provisioned=True)
    for _, body in timed_patches(told, reality, 3.0):
        parse_changes(body, provisioned=True)


def test_the_overasking_batch_differs_only_in_what_it_asks() -> None:
    workload = MixedWorkload(lp_requests=5)
    honest = batch_calls(workload, "d", 7)
    asking = batch_calls(overasking(workload), "d", 7)
    assert [c.body["max_tokens"] for c in honest] == [150] * 5
    assert [c.body["max_tokens"] for c in asking] == [OVERASK_MAX_TOKENS] * 5
    assert [c.body["messages"] for c in asking] == [c.body["messages"] for c in honest]
    assert [(c.at_s, c.custom_id) for c in asking] == [(c.at_s, c.custom_id) for c in honest]
