"""At start-up: does Azure Resource Manager say a PTU deployment spills over natively?

A provisioned deployment whose ARM property `spilloverDeploymentName` is set (ARM
api-version 2024-10-01 and later) has every call it refuses served by that standard
deployment at pay-as-you-go price, whatever the caller asks: the worker's queued calls
included, the opposite of what they were queued for. With `PTU_AZURE_MANAGEMENT_ENDPOINT`
(Azure Resource Manager, `https://management.azure.com`) and `PTU_AZURE_RESOURCE_ID` set,
the worker reads each of its PTU deployments on that resource
(`azure-mgmt-cognitiveservices`, the `[azure]` extra;
`deployments.get(...).properties.spillover_deployment_name`) with `DefaultAzureCredential`
and logs `deployment_spills_over` at error level for each one that spills, saying what its
`low_priority_spill` will do.

The check only informs: whatever it finds or fails to read (no credential, no role, no
network: one warning), every queued call that comes back spilled is counted and handled
anyway (`worker.dispatch.call`). Deployments on another resource (their own `endpoint`)
are not on `PTU_AZURE_RESOURCE_ID` and are not read.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from orchestrator.core.errors import MissingDependencyError

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from orchestrator.core.settings import DeploymentConfig, Settings

log = structlog.get_logger(__name__)

CHECK_TIMEOUT_S = 30.0
"""The whole check's budget: a credential chain that finds nothing may probe for a while."""
_ACCOUNT = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)"
    r"/providers/Microsoft\.CognitiveServices/accounts/(?P<account>[^/]+)/?$",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class Account:
    """An Azure OpenAI (Cognitive Services) account, from its resource id."""

    subscription: str
    resource_group: str
    name: str

    @classmethod
    def parse(cls, resource_id: str) -> Account | None:
        """The account of `/subscriptions/…/accounts/NAME`; None for any other resource id."""
        match = _ACCOUNT.match(resource_id.strip())
        if match is None:
            return None
        return cls(match["sub"], match["rg"], match["account"])


async def spillover_targets(
    credential: AsyncTokenCredential,
    account: Account,
    deployments: Sequence[str],
    **client_options: Any,
) -> dict[str, str | None]:
    """Each deployment's `spilloverDeploymentName` (None: it does not spill), read from ARM.

    `client_options` go to the management client (`base_url`, azure-core transport options
    such as `connection_verify`). Raises what the SDK raises (`azure.core.exceptions`).
    """
    try:
        from azure.mgmt.cognitiveservices.aio import CognitiveServicesManagementClient
    except ImportError as exc:
        raise MissingDependencyError("azure-mgmt-cognitiveservices", "azure") from exc
    out: dict[str, str | None] = {}
    async with CognitiveServicesManagementClient(
        credential, account.subscription, **client_options
    ) as client:
        for name in deployments:
            found = await client.deployments.get(account.resource_group, account.name, name)
            props = found.properties
            out[name] = (props.spillover_deployment_name or None) if props is not None else None
    return out


def warn(deployments: Sequence[DeploymentConfig], targets: dict[str, str | None]) -> list[str]:
    """Log each deployment that spills natively; the names of those that do."""
    spilling = []
    for d in deployments:
        target = targets.get(d.name)
        if not target:
            continue
        spilling.append(d.name)
        log.error(
            "deployment_spills_over",
            deployment=d.name,
            spillover_deployment=target,
            low_priority_spill=d.low_priority_spill,
            effect=(
                "queued calls the PTU refuses are served by the standard deployment at "
                "pay-as-you-go price; "
                + (
                    "their answers are discarded and the requests fail"
                    if d.low_priority_spill == "fail"
                    else "their answers are kept and their cost counted there"
                )
            ),
            fix="remove spilloverDeploymentName from the deployment, or set "
            "low_priority_spill: fail",
        )
    return spilling


async def check(
    settings: Settings,
    deployments: Sequence[DeploymentConfig],
    *,
    credential: AsyncTokenCredential | None = None,
    **client_options: Any,
) -> list[str] | None:
    """Read and warn (see the module docstring); None when the check could not run."""
    account = Account.parse(settings.azure_resource_id or "")
    endpoint = settings.azure_management_endpoint
    if account is None or not endpoint:
        return None
    ours = [
        d
        for d in deployments
        if d.kind == "provisioned"
        and (d.endpoint is None or d.endpoint == settings.azure_openai_endpoint)
    ]
    if not ours:
        return []
    owned = credential is None
    try:
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            targets = await spillover_targets(
                credential, account, [d.name for d in ours], base_url=endpoint, **client_options
            )
    except Exception as exc:  # the check informs; the worker runs without it
        log.warning(
            "spillover_check_failed",
            resource_id=settings.azure_resource_id,
            error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300],
        )
        return None
    finally:
        if owned and credential is not None:
            await credential.close()
    spilling = warn(ours, targets)
    log.info("spillover_check_done", deployments=[d.name for d in ours], spilling=spilling)
    return spilling
