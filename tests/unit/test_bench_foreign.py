"""Pure pieces of `ptu bench foreign`: sizing, the told deployment, arms, refusals, rows."""

from __future__ import annotations

import json

import pytest

from bench.harness.traffic import HpRecord, LpRecord
from bench.harness.workload import CallShape, Capacity, interactive_calls
from bench.report.metrics import PolicyRun, interactive_in_window
from bench.scenarios.foreign import (
    ARMS,
    ForeignConfig,
    Probe,
    arm_row,
    deployments_json,
    full_config,
    policies,
    refusal,
    workload,
)
from orchestrator.core.settings import DeploymentConfig

URL = "http://127.0.0.1:9"


def test_a_minute_window_charges_the_whole_max_tokens() -> None:
    shape = CallShape(prompt_tokens=20, max_tokens=200)
    assert shape.mean_cost(1.0, charged_share=1.0) == 220
    window = Capacity(60_000, 1.0, 60.0, charged_share=1.0)
    # 30 % of 1,000 tokens/s at 220 tokens a call
    assert window.rate_for_share(0.3, shape) == pytest.approx(300 / 220)
    refunded = Capacity(60_000, 1.0, 60.0)
    assert refunded.rate_for_share(0.3, shape) == pytest.approx(300 / (20 + 0.6 * 200))


def test_interactive_traffic_offers_the_share_of_the_tpm_steadily() -> None:
    cfg = full_config(URL)
    calls = interactive_calls(cfg.workload, cfg.capacity, cfg.deployment, cfg.seed)
    charged = sum(c.body["max_tokens"] + cfg.workload.hp.prompt_tokens for c in calls)
    per_minute = charged / cfg.workload.duration_s * 60
    assert per_minute == pytest.approx(0.3 * cfg.tpm, rel=0.01)
    first_half = sum(1 for c in calls if c.at_s < cfg.workload.duration_s / 2)
    assert abs(first_half - len(calls) / 2) <= 5  # no burst (it would double one phase)
    assert cfg.workload.lp_requests == 100


def test_the_orchestrator_is_told_a_provisioned_deployment_of_the_upstream_tpm() -> None:
    cfg = ForeignConfig(URL, workload(10.0, 5), deployment="dep-x", tpm=45_000)
    (entry,) = json.loads(deployments_json(cfg))
    told = DeploymentConfig.model_validate(entry)
    assert (told.name, told.kind) == ("dep-x", "provisioned")
    assert told.capacity_tpm == 45_000 and told.weight == 1.0


def test_the_arms_differ_only_in_how_the_batch_travels_and_calibration() -> None:
    cfg = ForeignConfig(URL, workload(10.0, 5), max_concurrency=7)
    arms = policies(cfg)
    assert tuple(arms) == ARMS
    assert arms["direct"].batch == "direct" and arms["direct"].direct_concurrency == 7
    off, auto = arms["off"].worker_env, arms["auto"].worker_env
    assert off["PTU_CALIBRATION"] == "off" and "PTU_CALIBRATION" not in auto
    assert {k: v for k, v in off.items() if k != "PTU_CALIBRATION"} == auto
    assert auto["PTU_MAX_CONCURRENCY"] == "7" and auto["PTU_ESTIMATE_WINDOW_S"] == "60"


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        (None, "no answer from"),
        (Probe(401, None, None), "--api-key"),
        (Probe(403, None, None), "--api-key"),
        (Probe(404, None, None), "--deployment"),
        (Probe(500, None, None), "HTTP 500"),
        (Probe(200, 59_999, 59), None),
        (Probe(429, None, None), None),  # busy is fine: the run waits for nothing else
    ],
)
def test_refusal_names_what_to_fix(probe: Probe | None, expected: str | None) -> None:
    message = refusal(probe, ForeignConfig(URL, workload(10.0, 5)))
    if expected is None:
        assert message is None
    else:
        assert message is not None and expected in message and "\n" not in message


def _run() -> PolicyRun:
    run = PolicyRun("auto", "d", batch_start=5.0, hp_end=40.0, run_end=45.0)
    run.hp = [
        HpRecord(1.0, 0.5, 429),  # before the batch: not in its window
        HpRecord(5.0, 0.5, 200),
        HpRecord(10.0, 0.5, 429),
        HpRecord(20.0, 0.5, 429),
        HpRecord(29.0, 0.5, 200),
        HpRecord(31.0, 0.5, 429),  # after the last result
    ]
    run.lp = [
        LpRecord("a", 5.0, "id-a", 12.0, "completed", 700),
        LpRecord("b", 5.0, "id-b", 30.0, "failed"),
    ]
    return run


def test_interactive_calls_count_in_the_window_the_batch_was_pending() -> None:
    assert interactive_in_window(_run()) == (4, 2)
    unfinished = _run()
    unfinished.lp[1].completed_at = None  # pending to the end: the window runs to hp_end
    assert interactive_in_window(unfinished) == (5, 3)


def test_an_arm_row_reports_the_window_the_batch_and_the_start_headroom() -> None:
    row = arm_row(_run(), Probe(200, 59_000, 58))
    assert row["window_429"] == "2 / 4" and row["window_429_rate"] == 0.5
    assert (row["window_calls"], row["window_429_count"]) == (4, 2)
    assert row["hp_429"] == "4 / 6" and row["hp_429_count"] == 4
    assert row["lp_makespan_s"] == 25.0
    assert (row["lp_completed"], row["lp_failed"]) == (1, 1)
    assert row["remaining_tokens_at_start"] == 59_000
    assert arm_row(_run(), None)["remaining_tokens_at_start"] is None
