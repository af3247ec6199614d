"""`ptu usage`: period parsing, summaries by tenant and deployment, PTU cost shares, formats."""

from __future__ import annotations

import csv
import io
import json

import pytest

from orchestrator.cli.usage import parse_time, period_of, render, summarise
from orchestrator.core.errors import PTUError
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.tenants.ledger import UsageRow

NOW = 1_780_000_000.0  # 2026-05-28T20:26:40Z
H = 3600


def rows() -> list[UsageRow]:
    return [
        UsageRow("a", "ptu", "low", 0, 1000, 100, 500, 10),
        UsageRow("a", "ptu", "high", H, 1000, 0, 0, 5),
        UsageRow("b", "ptu", "low", 0, 500, 0, 500, 4),
        UsageRow("b", "payg", "high", 0, 700, 0, 300, 2),
    ]


def settings(price: float | None) -> Settings:
    return Settings(
        deployments=[
            DeploymentConfig(name="ptu", model="gpt-4o-mini", ptus=10),
            DeploymentConfig(name="payg", model="gpt-4o-mini", kind="standard", tpm=1000),
        ],
        ptu_hourly_price=price,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("24h", NOW - 86_400),
        ("90m", NOW - 5400),
        ("2w", NOW - 14 * 86_400),
        ("2026-05-28T00:00", 1_779_926_400.0),
        ("2026-05-28T02:00+02:00", 1_779_926_400.0),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text, NOW) == expected


def test_bad_times_are_one_clear_error() -> None:
    with pytest.raises(PTUError, match="not a time: 'yesterday'"):
        parse_time("yesterday", NOW)
    with pytest.raises(PTUError, match="--until must be after --since"):
        period_of(NOW, NOW - 1)


def test_period_is_widened_to_whole_hours() -> None:
    p = period_of(10 * H + 5, 12 * H + 1)
    assert (p.start, p.end, p.hours) == (10 * H, 13 * H, 3.0)


def test_by_tenant_sums_priorities_and_deployments() -> None:
    lines = summarise(rows(), "tenant", settings(None), period_of(0, 2 * H))
    assert [(x["tenant"], x["requests"], x["prompt_tokens"], x["completion_tokens"],
             x["total_tokens"], x["cached_tokens"]) for x in lines] == [
        ("a", 15, 2000, 500, 2500, 100),
        ("b", 6, 1200, 800, 2000, 0),
    ]  # fmt: skip
    assert "ptu_cost" not in lines[0]


def test_cost_shares_follow_capacity_weighted_tokens_on_ptu_deployments() -> None:
    # 10 PTU x 2 h x 1.5 = 30; on "ptu": a = 2000 + 500 x 3 = 3500, b = 500 + 500 x 3 = 2000
    lines = summarise(rows(), "tenant", settings(1.5), period_of(0, 2 * H))
    cost = {x["tenant"]: x["ptu_cost"] for x in lines}
    assert cost == {"a": round(30 * 3500 / 5500, 2), "b": round(30 * 2000 / 5500, 2)}
    assert sum(x["ptu_share"] for x in lines) == pytest.approx(1.0, abs=1e-3)
    by_dep = summarise(rows(), "deployment", settings(1.5), period_of(0, 2 * H))
    assert {x["deployment"]: x["ptu_cost"] for x in by_dep} == {"payg": 0.0, "ptu": 30.0}


def test_formats() -> None:
    period = period_of(0, 2 * H)
    lines = summarise(rows(), "tenant", settings(1.0), period)
    doc = json.loads(render(lines, "json", "tenant", period))
    assert doc["by"] == "tenant" and doc["since"] == "1970-01-01T00:00Z"
    assert [r["tenant"] for r in doc["rows"]] == ["a", "b"]
    table = list(csv.DictReader(io.StringIO(render(lines, "csv", "tenant", period))))
    assert table[0]["tenant"] == "a" and table[0]["prompt_tokens"] == "2000"
    assert "ptu_cost" in table[0]
    text = render(lines, "table", "tenant", period)
    assert "tenant" in text.splitlines()[1] and "2,000" in text
    assert "(no usage" in render([], "table", "tenant", period)


def test_a_standard_deployment_with_prices_costs_its_tokens_at_pay_as_you_go() -> None:
    priced = Settings(
        deployments=[
            DeploymentConfig(name="ptu", model="gpt-4o-mini", ptus=10),
            DeploymentConfig(
                name="payg", model="gpt-4o-mini", kind="standard", tpm=1000,
                input_price_per_mtok=0.15, output_price_per_mtok=0.6,
            ),
        ],
        ptu_hourly_price=1.0,
    )  # fmt: skip
    by_dep = {
        line["deployment"]: line
        for line in summarise(rows(), "deployment", priced, period_of(0, 2 * H))
    }
    # 700 prompt x 0.15 + 300 completion x 0.6, per million
    assert by_dep["payg"]["payg_cost"] == round((700 * 0.15 + 300 * 0.6) / 1e6, 6)
    assert by_dep["payg"]["ptu_cost"] == 0.0 and by_dep["ptu"]["payg_cost"] == 0.0
    by_tenant = summarise(rows(), "tenant", priced, period_of(0, 2 * H))
    assert [line["payg_cost"] for line in by_tenant] == [0.0, round(285 / 1e6, 6)]
    assert "payg_cost" in render(by_tenant, "csv", "tenant", period_of(0, 2 * H)).splitlines()[0]
    assert "payg_cost" not in summarise(rows(), "tenant", settings(1.0), period_of(0, H))[0]
