"""The worker's view of utilisation, read by the harness beside the simulator's truth.

The same source classes the worker throttles on, built from the policy's
settings, so the plots show what the worker saw and when it saw it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx2
import redis.asyncio as aioredis

from bench.harness.oracle import ORACLE_WORKER, OracleSource
from devstack.stack import API_KEY, Stack
from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Reading, UtilisationSource
from orchestrator.utilisation.estimate.calibration import params_for
from orchestrator.utilisation.estimate.store import EstimateStore

View = Callable[[], Awaitable[Reading | None]]


class StaticToken:
    """An async token credential handing out one fixed bearer token (the simulator's key)."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        """A token valid for an hour."""
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, int(time.time()) + 3600)

    async def close(self) -> None:
        """Nothing to release."""


def _source(stack: Stack, env: Mapping[str, str], deployment: DeploymentConfig) -> Any:
    sim = stack.sim
    if env.get("PTU_UTILIZATION_SOURCE", "estimate") == "estimate":
        client = aioredis.Redis.from_url(stack.redis_url)
        store = EstimateStore(
            client,
            [deployment],
            window_s=float(env.get("PTU_ESTIMATE_WINDOW_S", sim.window_s)),
            max_age_s=5.0,
            calibration=params_for(env.get("PTU_CALIBRATION", "auto")),  # type: ignore[arg-type]
        )
        return store, client.aclose
    from orchestrator.utilisation.azure_monitor import AzureMonitorSource

    source = AzureMonitorSource(
        endpoint=env["PTU_AZURE_MONITOR_ENDPOINT"],
        resource_id=env["PTU_AZURE_RESOURCE_ID"],
        credential=StaticToken(API_KEY),
        deployments=[deployment],
        poll_s=float(env.get("PTU_AZURE_MONITOR_POLL_S", "30")),
        max_age_s=float(env.get("PTU_MONITOR_MAX_AGE_S", "300")),
        connection_verify=str(stack.ca_file) if sim.https else None,
    )
    return source, source.close


async def worker_view(
    stack: Stack,
    env: Mapping[str, str],
    exits: contextlib.AsyncExitStack,
    worker_module: str = "orchestrator",
) -> View:
    """A reader of the utilisation source `env` configures (None while it has no reading);
    of the oracle when the worker is the oracle's (`ORACLE_WORKER`)."""
    sim = stack.sim
    deployment = DeploymentConfig(name=sim.deployment, model=sim.model, ptus=sim.ptus)
    source: UtilisationSource
    if worker_module == ORACLE_WORKER:
        source = OracleSource(httpx2.AsyncClient(verify=stack.verify), stack.sim_url)
        close = source.close
    else:
        source, close = _source(stack, env, deployment)
    exits.push_async_callback(close)

    async def read() -> Reading | None:
        try:
            return await source.read(sim.deployment)
        except UtilisationUnavailable:
            return None

    return read
