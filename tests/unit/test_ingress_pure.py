"""Pure pieces of the ingress: priority, governance, auth, reply keys, TTLs, envelopes."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from ingress.chat.governance import check_chat_body, govern
from ingress.chat.headers import forwarded_headers, passed_headers
from ingress.http.auth import DEFAULT_TENANT, Authenticator, is_loopback
from ingress.http.errors import ApiError, envelope, error_type
from ingress.http.models import MAX_WAIT_S, parse_priority
from ingress.http.models import parse_ttl as ttl_for
from ingress.http.models import parse_wait as wait_for
from ingress.queued.enqueue import reply_key_for
from orchestrator.core import keys
from orchestrator.core.retry import parse_retry_after
from orchestrator.tenants.config import Tenancy, TenantConfig


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, "high", "high"),
        (None, "low", "low"),
        ("high", "low", "high"),
        ("LOW", "high", "low"),
        (" High ", "low", "high"),
    ],
)
def test_priority_parsing(value: str | None, default: str, expected: str) -> None:
    assert parse_priority(value, default) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "urgent", "hi", "1", "low,high"])
def test_priority_rejects_anything_else(value: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_priority(value, "high")
    assert info.value.status == 400
    assert info.value.param == "x-priority"


@pytest.mark.parametrize(
    ("body", "changed", "expected"),
    [
        ({}, True, {"max_tokens": 1000}),
        ({"max_tokens": 50}, False, {"max_tokens": 50}),
        ({"max_tokens": 5000}, True, {"max_tokens": 2000}),
        ({"max_completion_tokens": 9000}, True, {"max_completion_tokens": 2000}),
        ({"max_completion_tokens": 10}, False, {"max_completion_tokens": 10}),
        ({"max_tokens": None}, True, {"max_tokens": 1000}),
        (
            {"max_tokens": None, "max_completion_tokens": 3000},
            True,
            {"max_completion_tokens": 2000},
        ),
        ({"max_tokens": 2000}, False, {"max_tokens": 2000}),
    ],
)
def test_governance_table(
    body: dict[str, object], changed: bool, expected: dict[str, object]
) -> None:
    assert govern(body, ceiling=2000, default=1000).changed is changed
    assert body == expected


def test_governance_default_never_exceeds_the_ceiling() -> None:
    body: dict[str, object] = {}
    govern(body, ceiling=100, default=1000)
    assert body == {"max_tokens": 100}


@pytest.mark.parametrize("value", [0, -1, "10", 1.5, True, [1]])
def test_token_limits_must_be_positive_integers(value: object) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(ApiError) as info:
            check_chat_body({"messages": [{"role": "user"}], name: value})
        assert info.value.status == 400
        assert info.value.param == name


def test_open_authenticator_has_one_tenant() -> None:
    auth = Authenticator({})
    assert auth.open
    assert auth.tenant({}) == DEFAULT_TENANT
    assert auth.tenant({"api-key": "anything"}) == DEFAULT_TENANT


@pytest.mark.parametrize(
    ("headers", "tenant"),
    [
        ({"api-key": "k1"}, "alpha"),
        ({"authorization": "Bearer k2"}, "beta"),
        ({"authorization": "bearer  k1 "}, "alpha"),
        ({"api-key": "k2", "authorization": "Bearer k1"}, "beta"),
    ],
)
def test_keys_map_to_tenants(headers: dict[str, str], tenant: str) -> None:
    assert Authenticator({"k1": "alpha", "k2": "beta"}).tenant(headers) == tenant


@pytest.mark.parametrize(
    "headers",
    [{}, {"api-key": "nope"}, {"authorization": "Basic k1"}, {"authorization": "Bearer"}],
)
def test_unknown_keys_are_401(headers: dict[str, str]) -> None:
    with pytest.raises(ApiError) as info:
        Authenticator({"k1": "alpha"}).tenant(headers)
    assert info.value.status == 401


FRONT = SecretStr("s3cret-front")


@pytest.mark.parametrize(
    ("keys", "headers", "answer"),
    [
        # the front's secret names the tenant; with it the key plays no part
        ({"k1": "alpha"}, {"x-ptu-front-secret": "s3cret-front", "x-ptu-tenant": "beta"}, "beta"),
        ({}, {"x-ptu-front-secret": "s3cret-front", "x-ptu-tenant": "default"}, "default"),
        # without the secret the tenant header means nothing
        ({"k1": "alpha"}, {"api-key": "k1", "x-ptu-tenant": "beta"}, "alpha"),
        ({"k1": "alpha"}, {"x-ptu-tenant": "beta"}, 401),
        # a wrong secret is refused, never a fall-back to the key
        ({"k1": "alpha"}, {"x-ptu-front-secret": "guess", "api-key": "k1"}, 401),
        ({"k1": "alpha"}, {"x-ptu-front-secret": "s3cret-front"}, 401),
        ({"k1": "alpha"}, {"x-ptu-front-secret": "s3cret-front", "x-ptu-tenant": "eve"}, 403),
        # a secret and no keys: only the front gets in
        ({}, {"api-key": "anything"}, 401),
    ],
)
def test_a_trusted_front_names_the_tenant_only_with_its_secret(
    keys: dict[str, str], headers: dict[str, str], answer: str | int
) -> None:
    tenancy = Tenancy([TenantConfig(name="alpha"), TenantConfig(name="beta")], keys)
    auth = Authenticator(tenancy if keys else {}, FRONT)
    assert not auth.open
    if isinstance(answer, str):
        assert auth.tenant(headers) == answer
        return
    with pytest.raises(ApiError) as info:
        auth.tenant(headers)
    assert info.value.status == answer
    assert "s3cret" not in info.value.message


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_reply_key_default_and_namespace() -> None:
    assert reply_key_for(None, "alpha", "req_1") == keys.reply("req_1")
    mine = keys.tenant_reply("alpha", "mine")
    assert reply_key_for(mine, "alpha", "req_1") == mine


@pytest.mark.parametrize(
    "key",
    [
        keys.tenant_reply("beta", "mine"),
        keys.tenant_reply_prefix("alpha"),
        keys.tenant_reply_prefix("alpha").rstrip(":"),
        "other",
        keys.tenant_reply("alpha", "with space"),
        keys.tenant_reply("alpha", "x" * 300),
        keys.tenant_reply("alphabet", "x"),
        keys.tenant_reply("alpha", "{other}"),
        keys.tenant_reply("alpha", "x}"),
    ],
)
def test_reply_key_outside_the_namespace_is_rejected(key: str) -> None:
    with pytest.raises(ApiError) as info:
        reply_key_for(key, "alpha", "req_1")
    assert info.value.status == 400


def test_ttl_parsing() -> None:
    assert ttl_for(None, 60.0) == 60.0
    assert ttl_for("1.5", 60.0) == 1.5
    for bad in ("0", "-3", "nan", "inf", "abc", "1e12"):
        with pytest.raises(ApiError):
            ttl_for(bad, 60.0)


def test_wait_parsing() -> None:
    assert wait_for(None) == 0.0
    assert wait_for("2.5") == 2.5
    assert wait_for("1000") == MAX_WAIT_S
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(ApiError):
            wait_for(bad)


def test_envelope_shape() -> None:
    doc = json.loads(envelope(404, "not_found", "gone"))
    assert doc == {
        "error": {"code": "not_found", "message": "gone", "type": "not_found_error", "param": None}
    }
    assert error_type(503) == "server_error"
    assert error_type(429) == "rate_limit_error"


def test_api_error_response_carries_headers() -> None:
    resp = ApiError(503, "queue_unavailable", "down", headers={"retry-after": "2"}).response()
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert json.loads(bytes(resp.body))["error"]["code"] == "queue_unavailable"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": [1]},
        {"messages": [{"content": "x"}]},
        {"messages": [{"role": "user"}], "stream": "yes"},
        {"messages": [{"role": "user"}], "stream_options": 1},
        {"messages": [{"role": "user"}], "model": 3},
        {"messages": [{"role": 7}]},
        {"messages": [{"role": "user"}], "max_tokens": "10"},
    ],
)
def test_chat_body_checks(body: dict[str, object]) -> None:
    with pytest.raises(ApiError) as info:
        check_chat_body(body, "line 3")
    assert info.value.status == 400
    assert info.value.message.startswith("line 3: ")


def test_chat_body_errors_name_the_field() -> None:
    with pytest.raises(ApiError) as info:
        check_chat_body({"messages": [{"role": "user"}, {"content": "x"}]})
    assert info.value.param == "messages[1].role"
    assert info.value.message.startswith("messages[1].role: ")


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "tool", "content": None, "tool_call_id": "c1"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "developer"}], "stream": None, "max_tokens": None},
        {"messages": [{"role": "user"}], "temperature": 0.2, "tools": [], "n": 1},
    ],
)
def test_chat_bodies_the_api_allows_pass(body: dict[str, object]) -> None:
    check_chat_body(body)


def test_retry_after_prefers_milliseconds() -> None:
    import httpx2

    # the proxy reads upstream headers as httpx2.Headers (case-insensitive)
    assert parse_retry_after(httpx2.Headers({"Retry-After-Ms": "250", "retry-after": "1"})) == 0.25
    assert parse_retry_after(httpx2.Headers({"retry-after": "2"})) == 2.0
    assert parse_retry_after(httpx2.Headers({"retry-after-ms": "x"})) is None
    assert parse_retry_after(httpx2.Headers({})) is None


def test_header_filters() -> None:
    raw = [
        (b"host", b"a"),
        (b"api-key", b"secret"),
        (b"authorization", b"Bearer t"),
        (b"x-priority", b"high"),
        (b"x-ptu-ttl-s", b"3"),
        (b"x-sim-completion-tokens", b"5"),
        (b"user-agent", b"sdk"),
        (b"content-length", b"10"),
    ]
    assert forwarded_headers(raw) == [(b"x-sim-completion-tokens", b"5"), (b"user-agent", b"sdk")]
    back = [
        (b"retry-after-ms", b"5"),
        (b"content-length", b"3"),
        (b"Set-Cookie", b"a=b"),
        (b"Azure-OpenAI-Deployment-Utilization", b"42.5%"),
    ]
    assert passed_headers(back) == [
        (b"retry-after-ms", b"5"),
        (b"azure-openai-deployment-utilization", b"42.5%"),
    ]


def test_lone_surrogates_are_rejected_at_parse_time() -> None:
    from ingress.http.body import loads_strict, parse_object

    assert loads_strict(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    for raw in (b'{"a": "\\ud800"}', b'{"a": "x\\uDFFF"}'):
        with pytest.raises(ApiError) as info:
            parse_object(raw)
        assert info.value.code == "invalid_json"
    with pytest.raises(ValueError):
        loads_strict('["\\udc00"]')
