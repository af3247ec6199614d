"""The worker's start-up check of native spillover, through `azure-mgmt-cognitiveservices`
against the simulator's ARM route over loopback TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from structlog.testing import capture_logs

from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.worker import spillover_check
from orchestrator.worker.spillover_check import Account
from simulator.app import create_app
from simulator.config import DEFAULT_RESOURCE_ID, SimConfig
from simulator.tls import write_self_signed
from tests.integration.monitor_support import StaticCredential, serve_tls

DEPLOYMENTS = [
    DeploymentConfig(name="ptu", model="gpt-4o-mini", ptus=15),
    DeploymentConfig(name="strict", model="gpt-4o-mini", ptus=15, low_priority_spill="fail"),
    DeploymentConfig(name="bare", model="gpt-4o-mini", ptus=15),
    DeploymentConfig(name="elsewhere", model="gpt-4o-mini", ptus=15, endpoint="https://x.test"),
]


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tls = write_self_signed(tmp_path_factory.mktemp("tls"))
    config = SimConfig.from_specs(
        [
            "ptu=gpt-4o-mini:15:spill=paygo",
            "strict=gpt-4o-mini:15:spill=paygo",
            "bare=gpt-4o-mini:15",
            "elsewhere=gpt-4o-mini:15:spill=paygo",
            "paygo=gpt-4o-mini:1000000:standard",
        ]
    )
    with serve_tls(create_app(config), tls) as url:
        yield url, tls.ca_pem


def _settings(url: str | None, resource_id: str | None = DEFAULT_RESOURCE_ID) -> Settings:
    return Settings(
        deployments=DEPLOYMENTS,
        azure_resource_id=resource_id,
        azure_management_endpoint=url,
        azure_openai_endpoint="https://sim.test",
    )


async def test_the_deployments_that_spill_are_read_from_arm_and_logged_loudly(
    arm: tuple[str, Path],
) -> None:
    url, ca = arm
    credential = StaticCredential()
    with capture_logs() as logs:
        spilling = await spillover_check.check(
            _settings(url), DEPLOYMENTS, credential=credential, connection_verify=str(ca)
        )
    assert spilling == ["ptu", "strict"]
    # the management scope, never the data plane's
    assert credential.scopes and credential.scopes[0] == ("https://management.azure.com/.default",)
    warned = {e["deployment"]: e for e in logs if e["event"] == "deployment_spills_over"}
    assert set(warned) == {"ptu", "strict"}  # `elsewhere` is on another resource
    assert all(
        e["log_level"] == "error" and e["spillover_deployment"] == "paygo" for e in warned.values()
    )
    assert "kept" in warned["ptu"]["effect"] and "discarded" in warned["strict"]["effect"]


async def test_the_sdk_reads_the_property_the_simulator_serves(arm: tuple[str, Path]) -> None:
    url, ca = arm
    account = Account.parse(DEFAULT_RESOURCE_ID)
    assert account is not None
    targets = await spillover_check.spillover_targets(
        StaticCredential(), account, ["ptu", "bare"], base_url=url, connection_verify=str(ca)
    )
    assert targets == {"ptu": "paygo", "bare": None}


class NoCredential(StaticCredential):
    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise ClientAuthenticationError("no identity here")


async def test_a_check_that_cannot_read_warns_once_and_lets_the_worker_run(
    arm: tuple[str, Path],
) -> None:
    url, ca = arm
    with capture_logs() as logs:
        result = await spillover_check.check(
            _settings(url), DEPLOYMENTS, credential=NoCredential(), connection_verify=str(ca)
        )
    assert result is None
    (failed,) = [e for e in logs if e["event"] == "spillover_check_failed"]
    assert "ClientAuthenticationError: no identity here" in failed["error"]


async def test_without_an_endpoint_or_an_account_id_nothing_is_read() -> None:
    credential = StaticCredential()
    assert await spillover_check.check(_settings(None), DEPLOYMENTS, credential=credential) is None
    other = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/a"
    assert await spillover_check.check(_settings("https://x", other), DEPLOYMENTS) is None
    assert credential.scopes == []


@pytest.mark.parametrize(
    ("resource_id", "expected"),
    [
        (DEFAULT_RESOURCE_ID, Account("00000000-0000-0000-0000-000000000000", "sim", "sim")),
        (
            "/subscriptions/s1/resourcegroups/rg-1/providers/microsoft.cognitiveservices/accounts/a/",
            Account("s1", "rg-1", "a"),
        ),
        ("/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Web/sites/a", None),
        ("", None),
    ],
)
def test_account_from_a_resource_id(resource_id: str, expected: Account | None) -> None:
    assert Account.parse(resource_id) == expected
