"""Where high-priority calls go: per-deployment targets and the shared HTTP client."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import httpx2

from ingress.chat.credentials import UpstreamAuth
from ingress.chat.shards import ShardedTransport
from ingress.http.errors import ApiError
from orchestrator.calls.no_cookies import NoCookieJar
from orchestrator.core.settings import Settings

CHAT_PATH = "/openai/deployments/{name}/chat/completions"
RESPONSES_PATH = "/openai/v1/responses"
"""The Responses API of a resource: the v1 surface, versionless, the deployment in `model`."""
LOCAL_ENDPOINT = "http://127.0.0.1:8081"


@dataclass(frozen=True, slots=True)
class Target:
    """A deployment's chat completions URL, how to treat its calls, and where to spill over.

    `spillover` is the ordered chain tried when this deployment fails; `auth` the
    credential of the deployment's resource (None: the proxy's default credential);
    `responses_url` its resource's Responses API; `native` the standard deployment Azure
    spills this one's calls to (sent as `x-ms-spillover-deployment`); `service_tier` what
    calls to this deployment, as an entry of a chain, ask for. A pool's Target
    (`core.pools`) has its `members`, each a deployment's Target; which one a call goes to
    is chosen per call (`chat.pool`).
    """

    name: str
    url: str
    provisioned: bool
    spillover: tuple[Target, ...] = ()
    auth: UpstreamAuth | None = None
    responses_url: str = LOCAL_ENDPOINT + RESPONSES_PATH
    native: str | None = None
    service_tier: str | None = None
    members: tuple[Target, ...] = ()

    def speaks_for(self, served: str) -> bool:
        """Whether an answer from `served` is this target's own (itself or a pool member)."""
        return served == self.name or any(m.name == served for m in self.members)


def targets(
    settings: Settings, auths: Mapping[str, UpstreamAuth] | None = None
) -> dict[str, Target]:
    """One Target per configured deployment, spillover chains resolved.

    `auths` maps deployment name to its resource's credential (see `credentials.auths`).
    """
    auths = auths or {}
    plain: dict[str, Target] = {}
    for d in settings.deployments:
        endpoint = (settings.endpoint_of(d) or LOCAL_ENDPOINT).rstrip("/")
        url = endpoint + CHAT_PATH.format(name=d.name)
        plain[d.name] = Target(
            d.name, url, d.kind == "provisioned", (), auths.get(d.name),
            responses_url=endpoint + RESPONSES_PATH,
        )  # fmt: skip
    known = {
        d.name: dataclasses.replace(
            plain[d.name],
            spillover=tuple(
                dataclasses.replace(plain[e.name], service_tier=e.service_tier) for e in d.spillover
            ),
            native=d.native_spillover,
        )
        for d in settings.deployments
    }
    for pool in settings.pools.values():
        members = tuple(known[m.name] for m in pool.members)
        first = members[0]
        known[pool.name] = Target(
            pool.name, first.url, True, (), first.auth,
            responses_url=first.responses_url, members=members,
        )  # fmt: skip
    return known


def make_client(settings: Settings) -> httpx2.AsyncClient:
    """The one pooled HTTP/1.1 keep-alive client for every upstream call.

    Cookies are never stored (`calls/no_cookies`): the client is shared by all tenants. Its
    connections are kept in several small pools (`chat/shards`): a call's cost does not grow
    with the connections open.
    """
    limits = httpx2.Limits(
        max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30.0
    )
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(settings.request_timeout_s, connect=10.0),
        limits=limits,
        transport=ShardedTransport(limits),
        cookies=NoCookieJar(),
        follow_redirects=False,
    )


def target_for(known: Mapping[str, Target], name: str) -> Target:
    """The deployment's Target; 404 `DeploymentNotFound` for one this ingress does not manage."""
    target = known.get(name)
    if target is None:
        raise ApiError(
            404,
            "DeploymentNotFound",
            f"the deployment {name[:100]!r} is not managed by this ingress",
            param="model",
        )
    return target
