"""Tenants: which caller a request comes from, from its API key.

`PTU_API_KEYS` maps API key (or `sha256:<hex>` of it) -> tenant. The key arrives as
the `api-key` header (Azure style) or `Authorization: Bearer <key>` (OpenAI style).
Without configured keys the ingress has one tenant, `default`, and `ptu ingress`
binds loopback only.
The tenant scopes reply keys, queued requests, files and batches.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from ingress.http import access
from ingress.http.errors import ApiError
from orchestrator.core.operator_key import presented_key
from orchestrator.tenants.config import DEFAULT_TENANT, Tenancy

__all__ = ["DEFAULT_TENANT", "Authenticator", "is_loopback"]


class Authenticator:
    """Maps the caller's API key to its tenant."""

    def __init__(self, api_keys: Mapping[str, str] | Tenancy) -> None:
        self.tenancy = api_keys if isinstance(api_keys, Tenancy) else Tenancy((), api_keys)

    @property
    def open(self) -> bool:
        """True when no keys are configured (single tenant, loopback only)."""
        return self.tenancy.open

    def tenant(self, headers: Mapping[str, str]) -> str:
        """The caller's tenant; raises ApiError 401 for a missing or unknown key."""
        if self.tenancy.open:
            access.note(tenant=DEFAULT_TENANT)
            return DEFAULT_TENANT
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

    def __repr__(self) -> str:
        return f"<Authenticator {self.tenancy!r}>"


def is_loopback(host: str) -> bool:
    """True for a loopback bind address (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
