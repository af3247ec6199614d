"""Tenant configuration, key digests and the token-limit decisions, from tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import load_settings
from orchestrator.tenants.config import Tenancy, TenantConfig, key_digest
from orchestrator.tenants.limits import decide, period_bounds, tpm_wait_s, window_tokens


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "start", "end"),
    [
        ("hourly", "2026-03-04T05:06:07", "2026-03-04T05:00:00", "2026-03-04T06:00:00"),
        ("daily", "2026-03-04T23:59:59", "2026-03-04T00:00:00", "2026-03-05T00:00:00"),
        # weeks start on Monday (2026-03-02)
        ("weekly", "2026-03-08T12:00:00", "2026-03-02T00:00:00", "2026-03-09T00:00:00"),
        ("monthly", "2026-02-14T00:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00"),
        ("monthly", "2026-12-31T23:00:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
    ],
)
def test_period_bounds(period: str, now: str, start: str, end: str) -> None:
    assert period_bounds(period, _ts(now)) == (int(_ts(start)), int(_ts(end)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("previous", "current", "second", "expected"),
    [(0, 500, 10, 500), (600, 0, 0, 600), (600, 0, 30, 300), (600, 100, 45, 250)],
)
def test_sliding_window(previous: int, current: int, second: float, expected: float) -> None:
    assert window_tokens(previous, current, 60_000 * 60 + second) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("limit", "previous", "current", "need", "second", "wait"),
    [
        (1000, 0, 0, 100, 0, 0.0),  # empty window: fits
        (1000, 0, 900, 100, 20, 0.0),  # exactly at the limit: fits
        # next minute, until enough of this minute's 950 faded for 100 more
        (1000, 0, 950, 100, 20, 40.0 + 60 * (1 - 900 / 950)),
        (1000, 800, 100, 200, 0, 60 * 0.125),  # wait for the previous minute to fade
        (1000, 0, 0, 5000, 30, 0.0),  # bigger than the limit: admitted into an empty window
        (1000, 0, 1000, 5000, 30, 30.0 + 60.0),  # ...once the window is empty again
    ],
)
def test_tokens_per_minute_wait(
    limit: int, previous: int, current: int, need: int, second: float, wait: float
) -> None:
    now = 60_000 * 60 + second
    got = tpm_wait_s(limit, previous, current, need, now)
    assert got == pytest.approx(wait, abs=0.01)
    if got > 0:  # after the wait it fits (counters roll over at the minute)
        later = now + got
        rolled = int(later // 60 - now // 60)
        prev, cur = {0: (previous, current), 1: (current, 0)}.get(rolled, (0, 0))
        assert window_tokens(prev, cur, later) + min(need, limit) <= limit + 0.5


def test_decide_quota_before_rate() -> None:
    t = TenantConfig(name="a", tokens_per_minute=100, token_quota=1000, token_quota_period="daily")
    now = _ts("2026-03-04T12:00:30")
    kw = {"previous_minute": 0, "need": 10, "now": now}
    assert decide(t, current_minute=0, period_used=0, **kw) is None  # type: ignore[arg-type]
    rate = decide(t, current_minute=95, period_used=95, **kw)  # type: ignore[arg-type]
    assert rate is not None and (rate.status, rate.code) == (429, "tokens_per_minute_exceeded")
    assert 0 < rate.retry_after_s <= 120
    quota = decide(t, current_minute=95, period_used=995, **kw)  # type: ignore[arg-type]
    assert quota is not None and (quota.status, quota.code) == (403, "token_quota_exceeded")
    assert quota.retry_after_s == pytest.approx(_ts("2026-03-05T00:00:00") - now)


def test_unlimited_tenant_is_never_refused() -> None:
    t = TenantConfig(name="a")
    assert not t.limited
    assert decide(t, previous_minute=10**9, current_minute=10**9, period_used=10**9,
                  need=10**6, now=0.0) is None  # fmt: skip


def test_keys_and_digests_resolve_to_tenants() -> None:
    tenancy = Tenancy(
        [TenantConfig(name="alpha", weight=3), TenantConfig(name="beta")],
        {"plain-key": "alpha", key_digest("secret-key"): "beta"},
    )
    assert tenancy.tenant_for_key("plain-key") == "alpha"
    assert tenancy.tenant_for_key("secret-key") == "beta"
    assert tenancy.tenant_for_key(key_digest("secret-key")) is None  # the digest is no key
    assert tenancy.tenant_for_key("nope") is None
    assert tenancy.weights() == {"alpha": 3.0, "beta": 1.0}
    assert tenancy.config("unlisted").weight == 1.0


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"PTU_TENANTS": '[{"name":"a","weight":0}]'}, "PTU_TENANTS [0.weight]"),
        ({"PTU_TENANTS": '[{"name":"a","weight":-2}]'}, "PTU_TENANTS [0.weight]"),
        ({"PTU_TENANTS": '[{"name":"a"},{"name":"a"}]'}, "PTU_TENANTS: 'a' is listed twice"),
        ({"PTU_TENANTS": '[{"name":"a b"}]'}, "PTU_TENANTS"),
        ({"PTU_TENANTS": '[{"name":"a","token_quota_period":"yearly"}]'}, "PTU_TENANTS"),
        ({"PTU_TENANTS": '[{"name":"a","colour":"red"}]'}, "PTU_TENANTS"),
        (
            {"PTU_TENANTS": '[{"name":"a"}]', "PTU_API_KEYS": '{"k":"b"}'},
            "PTU_API_KEYS: tenant 'b' is not in PTU_TENANTS",
        ),
        ({"PTU_API_KEYS": '{"sha256:xyz":"a"}'}, "PTU_API_KEYS: a 'sha256:' key"),
    ],
)
def test_bad_tenant_config_is_one_line(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)
