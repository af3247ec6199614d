"""Tenants: which caller a request comes from, from its API key.

`PTU_API_KEYS` maps API key (or `sha256:<hex>` of it) -> tenant. The key arrives as
the `api-key` header (Azure style) or `Authorization: Bearer <key>` (OpenAI style).
Without configured keys the ingress has one tenant, `default`, and `ptu ingress`
binds loopback only.
The tenant scopes reply keys, queued requests, files and batches.

A trusted front (APIM, `deploy/apim/ptu-priority-policy.xml`) authenticates its callers
itself and forwards them without their key: with `PTU_TRUSTED_FRONT_SECRET` set, a
request whose `x-ptu-front-secret` header equals it (compared in constant time) is the
tenant its `x-ptu-tenant` header names, which must be a tenant this configuration knows.
`x-ptu-tenant` means nothing without the secret, and a wrong secret is a 401 (never a
fall-back to the key). With the secret and no `PTU_API_KEYS`, only the front gets in.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Mapping

from pydantic import SecretStr

from ingress.http import access
from ingress.http.errors import ApiError
from orchestrator.core.operator_key import presented_key
from orchestrator.tenants.config import DEFAULT_TENANT, Tenancy

__all__ = [
    "DEFAULT_TENANT",
    "FRONT_SECRET_HEADER",
    "FRONT_TENANT_HEADER",
    "Authenticator",
    "is_loopback",
]

FRONT_SECRET_HEADER = "x-ptu-front-secret"
FRONT_TENANT_HEADER = "x-ptu-tenant"


class Authenticator:
    """Maps the caller's API key, or a trusted front's tenant header, to its tenant."""

    def __init__(
        self, api_keys: Mapping[str, str] | Tenancy, front_secret: SecretStr | None = None
    ) -> None:
        self.tenancy = api_keys if isinstance(api_keys, Tenancy) else Tenancy((), api_keys)
        self._front = None if front_secret is None else front_secret.get_secret_value().encode()
        self._known = frozenset(self.tenancy.names())

    @property
    def open(self) -> bool:
        """True when nothing authenticates (single tenant, loopback only)."""
        return self.tenancy.open and self._front is None

    def tenant(self, headers: Mapping[str, str]) -> str:
        """The caller's tenant; raises ApiError 401 for a missing or unknown key."""
        if self._front is not None and FRONT_SECRET_HEADER in headers:
            return self._front_tenant(headers)
        if self.open:
            access.note(tenant=DEFAULT_TENANT)
            return DEFAULT_TENANT
        if self.tenancy.open:  # only the trusted front may call
            raise ApiError(
                401,
                "invalid_api_key",
                f"this ingress takes calls from its front only ({FRONT_SECRET_HEADER})",
            )
        key = presented_key(headers)
        tenant = self.tenancy.tenant_for_key(key) if key else None
        if tenant is None:
            raise ApiError(
                401,
                "invalid_api_key",
                "missing or unknown API key: send it as the api-key header "
                "or Authorization: Bearer <key>",
            )
        access.note(tenant=tenant)
        return tenant

    def _front_tenant(self, headers: Mapping[str, str]) -> str:
        assert self._front is not None
        given = headers.get(FRONT_SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._front):
            raise ApiError(401, "invalid_api_key", f"wrong {FRONT_SECRET_HEADER}")
        tenant = headers.get(FRONT_TENANT_HEADER, "").strip()
        if not tenant:
            raise ApiError(401, "invalid_api_key", f"the front sent no {FRONT_TENANT_HEADER}")
        if tenant not in self._known:
            raise ApiError(
                403, "unknown_tenant", f"{FRONT_TENANT_HEADER}: {tenant[:64]!r} is not a tenant"
            )
        access.note(tenant=tenant)
        return tenant

    def __repr__(self) -> str:
        return f"<Authenticator {self.tenancy!r} front={self._front is not None}>"


def is_loopback(host: str) -> bool:
    """True for a loopback bind address (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
