"""The pure parts of failover safety: signed request ids, seed-node URLs, ROLE replies,
the lost result, the reconciler's grace."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core import keys
from orchestrator.core.deployments import check_redis_url, seed_urls
from orchestrator.core.errors import ConfigError
from orchestrator.core.incarnation import Incarnation
from orchestrator.core.losses import LOST, is_lost, lost_document
from orchestrator.core.replication import _replicas_in
from orchestrator.core.settings import load_settings
from orchestrator.core.startup import redis_address
from orchestrator.queues.redis_streams.reconcile import GRACE_S, reconcile_grace_s

NOW = 1_800_000_000.0


def incarnation(id_key: str = "k" * 32, current: str = "0123abcd") -> Incarnation:
    """An `Incarnation` as `check` leaves it (the marker read), without Redis."""
    inc = Incarnation(redis=None, clock=lambda: NOW)  # type: ignore[arg-type]
    inc.current = current
    inc._id_key = id_key.encode()
    return inc


def test_an_issued_id_is_vouched_for_its_tenant_only() -> None:
    inc = incarnation()
    rid = inc.new_request_id("acme")
    assert rid.startswith("req_0123abcd") and len(rid) == 36
    assert inc.issued(rid, "acme") == float(int(NOW))
    assert inc.issued(rid, "other") is None  # another tenant's id stays a 404
    assert incarnation(id_key="x" * 32).issued(rid, "acme") is None  # another data set's


@pytest.mark.parametrize(
    "made_up",
    [
        "req_" + "0" * 32,
        "req_0123abcd",
        "nope",
        "req_" + "g" * 32,
    ],
)
def test_made_up_ids_are_not_vouched_for(made_up: str) -> None:
    assert incarnation().issued(made_up, "acme") is None


def test_a_changed_character_breaks_the_signature() -> None:
    inc = incarnation()
    rid = inc.new_request_id("acme")
    flipped = rid[:20] + ("0" if rid[20] != "0" else "1") + rid[21:]
    assert inc.issued(flipped, "acme") is None


def test_before_the_marker_is_read_ids_are_random_and_vouched_for_by_nobody() -> None:
    inc = Incarnation(redis=None)  # type: ignore[arg-type]
    rid = inc.new_request_id("acme")
    assert rid.startswith("req_") and len(rid) == 36
    assert inc.issued(rid, "acme") is None
    assert not inc.issued_before(rid)


@pytest.mark.parametrize(
    ("url", "seeds"),
    [
        ("redis://h1:7000/0", ["redis://h1:7000/0"]),
        (
            "redis://:pw@h1:7000,h2:7001,[::1]:7002/0",
            ["redis://:pw@h1:7000/0", "redis://:pw@h2:7001/0", "redis://:pw@[::1]:7002/0"],
        ),
        (
            "rediss://u:p@h1:6380, h2:6380?ssl_cert_reqs=none",
            ["rediss://u:p@h1:6380?ssl_cert_reqs=none", "rediss://u:p@h2:6380?ssl_cert_reqs=none"],
        ),
        ("unix:///tmp/redis.sock", ["unix:///tmp/redis.sock"]),
    ],
)
def test_seed_nodes_become_one_url_each(url: str, seeds: list[str]) -> None:
    assert seed_urls(url) == seeds
    assert check_redis_url(url) == url


def test_the_address_of_several_seeds_names_each_without_credentials() -> None:
    assert redis_address("redis://:secret@h1:7000,h2:7001/0") == "h1:7000,h2:7001"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://:secret@h1:7000,h2:port/0", "the port is not a number"),
        ("redis://:secret@h1:7000,/0", "a seed node without a host"),
    ],
)
def test_a_bad_seed_node_is_one_line_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as info:
        check_redis_url(url)
    assert "secret" not in str(info.value)


def test_several_seeds_need_the_cluster_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTU_REDIS_URL", "redis://:secret@h1:7000,h2:7001/0")
    with pytest.raises(ConfigError) as info:
        load_settings()
    line = str(info.value)
    assert line.startswith("PTU_REDIS_URL: names several nodes"), line
    assert "PTU_REDIS_CLUSTER=true" in line and "\n" not in line and "secret" not in line
    monkeypatch.setenv("PTU_REDIS_CLUSTER", "true")
    assert load_settings().redis_cluster


@pytest.mark.parametrize(
    ("value", "field"),
    [("-1", "PTU_REDIS_WAIT_REPLICAS"), ("0", "PTU_REDIS_WAIT_TIMEOUT_MS")],
)
def test_wait_settings_are_checked(monkeypatch: pytest.MonkeyPatch, value: str, field: str) -> None:
    monkeypatch.setenv(field, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


def test_wait_defaults() -> None:
    s = load_settings()
    assert (s.redis_wait_replicas, s.redis_wait_timeout_ms, s.reconcile_interval_s) == (
        1,
        500,
        30.0,
    )


@pytest.mark.parametrize(
    ("role", "replicas"),
    [
        ([b"master", 3129659, [[b"127.0.0.1", b"9001", b"3129242"], [b"::1", b"9002", b"0"]]], 2),
        (["master", 0, []], 0),
        ([b"slave", b"127.0.0.1", 9000, b"connected", 3167038], 0),
        (None, 0),
    ],
)
def test_replicas_are_counted_from_a_role_reply(role: Any, replicas: int) -> None:
    assert _replicas_in(role) == replicas


def test_the_lost_result_is_a_410_named_request_lost() -> None:
    doc = lost_document(
        "req_1", "acme", found="reconciler", now=NOW, enqueued_at=NOW - 5, deployment="ptu"
    )
    assert is_lost(doc) and doc.status_code == 410 and doc.tenant == "acme"
    assert doc.error is not None and doc.error["code"] == LOST
    assert "queue entry was gone" in doc.error["message"]
    other = doc.model_copy(update={"error": {"code": "server_error"}})
    assert not is_lost(other)


@pytest.mark.parametrize(("interval", "grace"), [(30.0, GRACE_S), (1.0, 10.0), (60.0, GRACE_S)])
def test_the_grace_outlasts_a_put_and_its_retries(interval: float, grace: float) -> None:
    assert reconcile_grace_s(interval) == grace


def test_the_barrier_shares_the_slot_of_the_key_it_vouches_for() -> None:
    for key in (keys.queue("ptu"), keys.request("req_1"), keys.INCARNATION):
        assert keys.same_slot(key, keys.replication_barrier(key))
