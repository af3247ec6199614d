"""A batch's deadline, the forecast of the PTU's share and the overflow plan, from tables."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ingress.batch.deadline.cost import Tally
from ingress.batch.deadline.forecast import DAY_S, Sample, forecast
from ingress.batch.deadline.planner import BATCH_SAFETY, Option, plan, price_per_line
from ingress.batch.deadline.window import deadline_of, window_seconds
from ingress.http.errors import ApiError
from orchestrator.cli.batch_costs import row_of
from orchestrator.core.deployments import OverflowEntry
from orchestrator.core.errors import ConfigError
from orchestrator.core.schemas import ResultDocument
from orchestrator.core.settings import load_settings

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86_400), ("1h", 3_600), ("4h", 14_400), ("7d", 604_800), ("30m", 1_800),
     ("1m", 60), ("30d", 2_592_000), ("720h", 2_592_000)],
)  # fmt: skip
def test_windows(text: str, seconds: int) -> None:
    assert window_seconds(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "24", "h", "0h", "24H", "1.5h", "-1h", "31d", "24 h", "1w", "01h", "1000000m"]
)
def test_bad_windows_are_one_400_naming_the_field(text: str) -> None:
    with pytest.raises(ApiError) as err:
        window_seconds(text)
    assert err.value.status == 400
    assert err.value.param == "completion_window"


def test_the_deadline_is_the_window_from_now_unless_metadata_names_one() -> None:
    assert NOW == 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert deadline_of("4h", None, NOW) == NOW + 14_400
    assert deadline_of("4h", {"other": "x"}, NOW) == NOW + 14_400
    assert deadline_of("24h", {"deadline": "2027-01-15T12:00:00Z"}, NOW) == NOW + 14_400
    assert deadline_of("24h", {"deadline": "2027-01-15T10:30:00+01:00"}, NOW) == NOW + 5_400


@pytest.mark.parametrize(
    "given",
    ["tomorrow", "2027-01-15T12:00:00", "2027-01-15T07:00:00Z", "2027-01-15T08:00:30Z",
     "2027-03-15T08:00:00Z"],
)  # fmt: skip
def test_a_bad_metadata_deadline_is_one_400(given: str) -> None:
    with pytest.raises(ApiError) as err:
        deadline_of("24h", {"deadline": given}, NOW)
    assert err.value.status == 400
    assert err.value.param == "metadata.deadline"


def test_a_bad_window_is_refused_beside_a_good_deadline() -> None:
    with pytest.raises(ApiError):
        deadline_of("soon", {"deadline": "2027-01-15T12:00:00Z"}, NOW)


# -- forecast -----------------------------------------------------------------------------


def test_without_samples_the_prior_with_an_uncertainty_as_large() -> None:
    fc = forecast([], NOW, NOW + 100, prior_rate=50.0)
    assert (fc.basis, fc.tokens, fc.sigma, fc.rate) == ("prior", 5_000.0, 5_000.0, 50.0)
    assert fc.low(2.0) == 0.0


@pytest.mark.parametrize(
    ("rates", "tokens", "sigma"),
    [
        ([100.0, 100.0, 100.0, 100.0], 10_000.0, 0.0),
        ([80.0, 120.0, 80.0, 120.0], 10_000.0, 1_000.0),  # std 20, 4 samples: 10 per second
        ([0.0, 0.0], 0.0, 0.0),
    ],
)
def test_the_recent_level_and_its_standard_error(
    rates: list[float], tokens: float, sigma: float
) -> None:
    samples = [Sample(NOW - 10 * i, r) for i, r in enumerate(rates)]
    fc = forecast(samples, NOW, NOW + 100, prior_rate=1e6)
    assert fc.basis == "recent"
    assert fc.tokens == pytest.approx(tokens)
    assert fc.sigma == pytest.approx(sigma)


def test_old_samples_are_not_the_recent_level() -> None:
    samples = [Sample(NOW - 1_000, 500.0), Sample(NOW - 5, 100.0)]
    assert forecast(samples, NOW, NOW + 10, prior_rate=0.0).tokens == pytest.approx(1_000.0)


def test_queued_work_ahead_is_taken_off_and_the_total_never_goes_negative() -> None:
    samples = [Sample(NOW - 1, 100.0)]
    assert forecast(samples, NOW, NOW + 100, prior_rate=0, ahead_tokens=4_000).tokens == 6_000
    assert forecast(samples, NOW, NOW + 100, prior_rate=0, ahead_tokens=40_000).tokens == 0


def test_a_past_deadline_forecasts_nothing() -> None:
    assert forecast([Sample(NOW, 100.0)], NOW, NOW - 5, prior_rate=10.0).tokens == 0.0


def test_a_day_of_history_forecasts_each_slot_by_its_own_past() -> None:
    # a day of 240 s, slots of 10 s: busy (rate 10) in the first half, idle (rate 100) after
    day = 240.0
    start = 1_000 * day
    samples = [Sample(start + t, 10.0 if (t % day) < day / 2 else 100.0) for t in range(0, 480, 5)]
    now = start + 480.0  # a new day starts: busy for 120 s, then idle
    recent_only = forecast(samples, now, now + 240, prior_rate=0, day_s=1e9)
    profiled = forecast(samples, now, now + 240, prior_rate=0, day_s=day)
    assert profiled.basis == "profile"
    assert profiled.tokens == pytest.approx(120 * 10 + 120 * 100)
    assert profiled.sigma == pytest.approx(0.0)
    assert recent_only.basis == "recent"  # the last 300 s mixed both levels
    assert recent_only.tokens != pytest.approx(profiled.tokens)


def test_the_profile_needs_a_whole_day_of_history() -> None:
    samples = [Sample(NOW - 100, 50.0), Sample(NOW - 1, 50.0)]
    assert forecast(samples, NOW, NOW + 10, prior_rate=0).basis == "recent"
    assert DAY_S == 86_400.0


# -- planner ------------------------------------------------------------------------------

FLEX = Option("std", "flex", price_per_line=0.5)
STANDARD = Option("std", "standard", price_per_line=1.0)
BATCH = Option("gb", "batch", price_per_line=0.5, turnaround_s=100.0)


@pytest.mark.parametrize(
    ("remaining", "low", "time_left", "moved", "send", "reason"),
    [
        (100, 150.0, 60.0, 0, {}, "fits"),  # the PTU finishes it: nothing moves
        (100, 100.0, 60.0, 0, {}, "fits"),
        (100, 60.4, 60.0, 0, {"std": 40}, "short"),  # 60 stay, 40 leave
        (100, 60.0, 60.0, 30, {"std": 10}, "short"),  # 30 already left: 10 more
        (100, 80.0, 60.0, 30, {}, "fits"),  # idler than planned: none more
        (100, 0.0, 60.0, 0, {"std": 100}, "short"),
        (0, 0.0, 60.0, 0, {}, "fits"),
    ],
)
def test_only_what_will_not_fit_moves(
    remaining: int, low: float, time_left: float, moved: int, send: dict[str, int], reason: str
) -> None:
    p = plan(remaining, low, time_left, [STANDARD, FLEX], moved=moved)
    assert (p.send, p.reason) == (send, reason)
    assert p.total + p.ptu_lines + moved <= remaining or p.reason == "fits"


def test_the_cheapest_target_is_chosen_flex_before_standard() -> None:
    assert plan(10, 0, 60, [STANDARD, FLEX]).send == {"std": 10}
    chosen = plan(10, 0, 60, [STANDARD, Option("x", "flex", 0.7)])
    assert chosen.send == {"x": 10}


def test_a_batch_deployment_only_when_its_turnaround_fits() -> None:
    fits = 100.0 * BATCH_SAFETY
    assert plan(10, 0, fits, [STANDARD, BATCH]).send == {"gb": 10}
    assert plan(10, 0, fits - 1, [STANDARD, BATCH]).send == {"std": 10}
    assert plan(10, 0, fits - 1, [BATCH]).reason == "no_target_in_time"
    # at an equal price the batch deployment goes before flex (its quota is its own)
    assert plan(10, 0, fits, [FLEX, BATCH]).send == {"gb": 10}


@pytest.mark.parametrize("low", [0.0, 10.0, 50.0, 90.0, 120.0])
def test_more_forecast_never_moves_more(low: float) -> None:
    less = plan(100, low, 60, [STANDARD]).total
    more = plan(100, low + 10, 60, [STANDARD]).total
    assert more <= less


def test_price_per_line() -> None:
    assert price_per_line(0.15, 0.60, 1_000, 500) == pytest.approx((150 + 300) / 1e6)


@pytest.mark.parametrize(
    ("time_left", "moved", "send", "deferred"),
    [
        # waves of 10 lines, 5 s each, 6 s of slack: 40 excess lines
        (60.0, 0, {}, 40),  # 9 waves (90 lines) still possible later: the PTU keeps them
        (31.0, 0, {}, 40),  # 4 waves later take all 40
        (26.0, 0, {"std": 10}, 30),  # 3 waves later take 30: one wave leaves now
        (16.0, 0, {"std": 30}, 10),
        (5.0, 0, {"std": 40}, 0),  # late: all at once
        (31.0, 20, {"std": 20}, 20),  # 20 in flight hold two of the four waves to come
    ],
)
def test_a_synchronous_move_is_just_in_time(
    time_left: float, moved: int, send: dict[str, int], deferred: int
) -> None:
    p = plan(100 + moved, 60.0, time_left, [STANDARD], moved=moved, wave=(10, 5.0), slack_s=6.0)
    assert (p.send, p.deferred, p.ptu_lines) == (send, deferred, 60)
    assert p.reason == ("deferred" if not send else "short")


def test_a_batch_deployment_move_waits_until_its_turnaround_nearly_stops_fitting() -> None:
    latest = 100.0 * BATCH_SAFETY  # the batch deployment fits until then
    early = plan(10, 0, latest + 30, [STANDARD, BATCH], wave=(32, 1.0), slack_s=6.0)
    assert (early.reason, early.deferred) == ("deferred", 10)
    assert plan(10, 0, latest + 6, [STANDARD, BATCH], wave=(32, 1.0), slack_s=6.0).send == {
        "gb": 10
    }
    # past it, the synchronous target, just in time
    assert plan(10, 0, latest - 1, [STANDARD, BATCH], wave=(32, 1.0), slack_s=6.0).send == {}
    assert plan(10, 0, 7.0, [STANDARD, BATCH], wave=(32, 1.0), slack_s=6.0).send == {"std": 10}


# -- cost ---------------------------------------------------------------------------------


def _result(deployment: str, prompt: int, completion: int, tier: str | None = None) -> Any:
    response = {"choices": [], **({"service_tier": tier} if tier else {})}
    return ResultDocument(
        id="r", status="completed", status_code=200, response=response, deployment=deployment,
        usage={"prompt_tokens": prompt, "completion_tokens": completion},
        enqueued_at=0.0, completed_at=1.0,
    )  # fmt: skip


def test_the_cost_per_target_prices_flex_standard_and_batch_and_not_the_ptu() -> None:
    entries = [
        OverflowEntry(name="std", kind="flex", price_in=1.0, price_out=2.0),
        OverflowEntry(name="std", kind="standard", price_in=2.0, price_out=4.0),
        OverflowEntry(name="gb", kind="batch", price_in=1.0, price_out=2.0),
    ]
    tally = Tally(entries)
    for doc in (_result("ptu", 1_000_000, 1_000_000), _result("std", 1_000_000, 0, "flex"),
                _result("std", 0, 1_000_000), _result("gb", 1_000_000, 1_000_000)):  # fmt: skip
        tally.add(doc)
    out = tally.as_dict()
    costs = {k: v["cost"] for k, v in out["targets"].items()}
    assert costs == {"ptu": 0.0, "std:flex": 1.0, "std": 4.0, "gb": 3.0}
    assert out["total_cost"] == 8.0
    assert out["targets"]["ptu"]["lines"] == 1


def test_a_batch_row_of_usage_by_batch() -> None:
    usage = {"targets": {"ptu": {"lines": 3, "prompt_tokens": 30, "completion_tokens": 60},
                         "std:flex": {"lines": 1, "prompt_tokens": 10, "completion_tokens": 20}},
             "total_cost": 0.5}  # fmt: skip
    fields = {"status": "completed", "total": "4", "deployment": "ptu",
              "usage_by_target": json.dumps(usage)}  # fmt: skip
    assert row_of("acme", fields) == {
        "tenant": "acme", "status": "completed", "lines": 4, "ptu_tokens": 90,
        "overflow_tokens": 30, "cost": 0.5, "targets": "ptu:3 std:flex:1",
    }  # fmt: skip
    assert row_of("acme", {"status": "in_progress", "total": "4"})["cost"] == 0.0


# -- configuration ------------------------------------------------------------------------

STD = {"name": "std", "model": "gpt-4o-mini", "kind": "standard", "tpm": 1000}


@pytest.mark.parametrize(
    ("overflow", "std", "says"),
    [
        ([{"name": "std", "kind": "flex", "price_in": 1, "price_out": 2}], None,
         "overflow 'std' of 'ptu' (flex) must be a standard deployment"),
        ([{"name": "ptu2", "kind": "standard", "price_in": 1, "price_out": 2}], None,
         "overflow 'ptu2' of 'ptu' (standard) must be a standard deployment"),
        ([{"name": "std", "kind": "cheap", "price_in": 1, "price_out": 2}], STD, "kind"),
        ([{"name": "std", "kind": "flex", "price_in": -1, "price_out": 2}], STD, "price_in"),
        ([{"name": "std", "kind": "flex"}], STD, "price_in"),
    ],
)  # fmt: skip
def test_bad_overflow_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, overflow: list[dict[str, Any]], std: Any, says: str
) -> None:
    deployments: list[dict[str, Any]] = [
        {"name": "ptu", "model": "gpt-4o-mini", "ptus": 5, "overflow": overflow},
        {"name": "ptu2", "model": "gpt-4o-mini", "ptus": 5},
    ]
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps(deployments + ([std] if std else [])))
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("PTU_DEPLOYMENTS") and says in message and "\n" not in message


def test_overflow_on_a_standard_deployment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = {"name": "std", "kind": "standard", "price_in": 1, "price_out": 2}
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps([{**STD, "name": "s2", "overflow": [entry]},
                                                      STD]))  # fmt: skip
    with pytest.raises(ConfigError, match="only a provisioned one has overflow"):
        load_settings()


def test_a_good_overflow_list_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    overflow = [{"name": "gb", "kind": "batch", "price_in": 1, "price_out": 2},
                {"name": "std", "kind": "flex", "price_in": 1, "price_out": 2}]  # fmt: skip
    ptu = {"name": "ptu", "model": "gpt-4o-mini", "ptus": 5, "overflow": overflow}
    monkeypatch.setenv("PTU_DEPLOYMENTS", json.dumps([ptu, STD]))
    d = load_settings().deployments[0]
    assert [(e.name, e.kind, e.turnaround_s) for e in d.overflow] == [
        ("gb", "batch", 86_400.0),
        ("std", "flex", 86_400.0),
    ]
