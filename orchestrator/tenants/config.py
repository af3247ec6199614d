"""Tenant configuration (`PTU_TENANTS`) and API-key resolution (`PTU_API_KEYS`).

A tenant is a name with a weight (its share of idle PTU capacity relative to
the others), an optional tokens-per-minute limit, an optional token quota per
calendar period and an optional `max_tokens` ceiling. `PTU_API_KEYS` maps keys
to tenant names; a key may be given as `sha256:<hex>` of the key so the secret
itself need not be stored. Without `PTU_TENANTS` every tenant named by a key
exists implicitly with weight 1 and no limits.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.core.schemas import MAX_HELD_S

QuotaPeriod = Literal["hourly", "daily", "weekly", "monthly"]
DEFAULT_TENANT = "default"
"""The one tenant of an ingress without API keys."""
DIGEST_PREFIX = "sha256:"
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")


class TenantConfig(BaseModel):
    """One entry of `PTU_TENANTS`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    weight: float = Field(default=1.0, gt=0, le=1_000)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    token_quota: int | None = Field(default=None, gt=0)
    token_quota_period: QuotaPeriod = "monthly"
    max_tokens_ceiling: int | None = Field(default=None, gt=0)
    wait_s: float | None = Field(default=None, ge=0, le=MAX_HELD_S)
    """Default `Prefer: wait` of the tenant's low-priority calls (seconds held for the result)."""

    @property
    def limited(self) -> bool:
        """True when a tokens-per-minute limit or a quota applies."""
        return self.tokens_per_minute is not None or self.token_quota is not None


def key_digest(key: str) -> str:
    """`sha256:<hex>` of an API key, the form `PTU_API_KEYS` may store instead of the key."""
    return DIGEST_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def is_tenant_name(name: str) -> bool:
    """True for a well-formed tenant name: 1-64 of letters, digits, '_', '.', '-'."""
    return bool(_NAME.fullmatch(name))


def check_tenants(tenants: Iterable[TenantConfig], api_keys: Mapping[str, str]) -> str | None:
    """The first problem with the tenant configuration, as one line; None when it is sound."""
    names: set[str] = set()
    for t in tenants:
        if not _NAME.fullmatch(t.name):
            return f"tenants: name {t.name!r} must be 1-64 of letters, digits, '_', '.', '-'"
        if t.name in names:
            return f"tenants: {t.name!r} is listed twice"
        names.add(t.name)
    for key, tenant in api_keys.items():
        if key.startswith(DIGEST_PREFIX) and not _HEX.fullmatch(key[len(DIGEST_PREFIX) :]):
            return "api_keys: a 'sha256:' key must be followed by 64 lowercase hex digits"
        if names and tenant not in names:
            return f"api_keys: tenant {tenant!r} is not in PTU_TENANTS"
        if not names and not _NAME.fullmatch(tenant):
            return f"api_keys: tenant {tenant!r} must be 1-64 of letters, digits, '_', '.', '-'"
    return None


class Tenancy:
    """Resolved tenants: key -> tenant, and each tenant's configuration."""

    def __init__(self, tenants: Iterable[TenantConfig], api_keys: Mapping[str, str]) -> None:
        self._tenants = {t.name: t for t in tenants}
        self._plain = {k: v for k, v in api_keys.items() if not k.startswith(DIGEST_PREFIX)}
        self._digests = {
            k[len(DIGEST_PREFIX) :]: v for k, v in api_keys.items() if k.startswith(DIGEST_PREFIX)
        }
        self._open = not api_keys

    @property
    def open(self) -> bool:
        """True when no keys are configured: one tenant, `default`."""
        return self._open

    def tenant_for_key(self, key: str) -> str | None:
        """The tenant of an API key (given as itself or as its digest), or None when unknown."""
        tenant = self._plain.get(key)
        if tenant is not None or not self._digests:
            return tenant
        return self._digests.get(hashlib.sha256(key.encode()).hexdigest())

    def config(self, name: str) -> TenantConfig:
        """The tenant's configuration; an implicit weight-1 tenant when it is not listed."""
        found = self._tenants.get(name)
        return found if found is not None else TenantConfig(name=name)

    def names(self) -> list[str]:
        """Every tenant this configuration knows: listed ones and those named by keys."""
        known = dict.fromkeys(self._tenants)
        known.update(dict.fromkeys(self._plain.values()))
        known.update(dict.fromkeys(self._digests.values()))
        return list(known) or [DEFAULT_TENANT]

    def weights(self) -> dict[str, float]:
        """tenant -> weight for every known tenant."""
        return {n: self.config(n).weight for n in self.names()}

    def __repr__(self) -> str:
        return f"<Tenancy tenants={self.names()} open={self._open}>"
