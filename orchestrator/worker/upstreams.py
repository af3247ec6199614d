"""One upstream client per Azure OpenAI resource, routed by deployment name.

A deployment entry may name its own `endpoint` and `api_key_env` (DESIGN.md §5), so
the worker may talk to several resources: deployments of one resource (same endpoint
and key) share one client and its connection pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.calls.outcome import UpstreamResponse
from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import DeploymentConfig, Settings
from orchestrator.core.startup import credential_error, quiet_credential_chain
from orchestrator.worker.upstream import AzureUpstream, Upstream


class RoutedUpstream:
    """An `Upstream` that sends each deployment's calls to its own resource's client."""

    def __init__(self, by_deployment: Mapping[str, AzureUpstream]) -> None:
        self._by_deployment = dict(by_deployment)
        self.clients = list({id(u): u for u in self._by_deployment.values()}.values())

    @classmethod
    def from_settings(
        cls, settings: Settings, deployments: Sequence[DeploymentConfig]
    ) -> RoutedUpstream:
        """Clients for the resources of `deployments`; ConfigError when one has no endpoint."""
        by_resource: dict[tuple[str, str], AzureUpstream] = {}
        out: dict[str, AzureUpstream] = {}
        for d in deployments:
            endpoint = settings.endpoint_of(d)
            if not endpoint:
                raise ConfigError(
                    f"PTU_AZURE_OPENAI_ENDPOINT: required by the worker (deployment {d.name!r} "
                    "names no endpoint)"
                )
            key = settings.api_key_of(d)
            ident = (endpoint, key.get_secret_value() if key is not None else "")
            if ident not in by_resource:
                by_resource[ident] = AzureUpstream.from_settings(
                    settings, endpoint=endpoint, api_key=key
                )
            out[d.name] = by_resource[ident]
        return cls(out)

    def endpoint(self, deployment: str) -> str:
        """The resource endpoint `deployment`'s calls go to."""
        up = self._by_deployment.get(deployment)
        return up.endpoint if up is not None else ""

    async def check_credentials(self) -> None:
        """Obtain every resource's credential once; ConfigError naming the endpoint that fails."""
        for up in self.clients:
            try:
                with quiet_credential_chain():
                    await up.check_credential()
            except Exception as exc:  # any credential failure is a start-up error
                raise credential_error(up.endpoint, exc) from exc

    async def chat(
        self,
        deployment: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Call `deployment` once on its resource (see `Upstream.chat`)."""
        return await self._client(deployment).chat(deployment, body, headers=headers)

    async def responses(
        self,
        deployment: str,
        body: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        """Create one response on `deployment`'s resource (see `Upstream.responses`)."""
        return await self._client(deployment).responses(deployment, body, headers=headers)

    def _client(self, deployment: str) -> AzureUpstream:
        up = self._by_deployment.get(deployment)
        if up is None:
            raise ConfigError(f"PTU_DEPLOYMENTS: no upstream client for {deployment!r}")
        return up

    async def close(self) -> None:
        """Close every resource's client."""
        for up in self.clients:
            await up.close()

    def __repr__(self) -> str:
        return f"<RoutedUpstream deployments={','.join(self._by_deployment)}>"


def _protocol_check(u: RoutedUpstream) -> Upstream:
    return u
