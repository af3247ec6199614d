"""One Azure OpenAI deployment the orchestrator manages (an entry of `PTU_DEPLOYMENTS`),
and the URL checks the settings share."""

from __future__ import annotations

from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator.core import capacity
from orchestrator.core.schemas import MAX_HELD_S


def check_endpoint(value: str | None) -> str | None:
    """An Azure OpenAI resource endpoint: `http(s)://host[:port]`, no path (raises ValueError)."""
    if value is None:
        return None
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{value!r} is not an endpoint URL: give https://<resource>.openai.azure.com"
        )
    if parts.path.rstrip("/").endswith("/openai") or parts.path in ("/openai",):
        raise ValueError(f"{value!r}: drop the '/openai' suffix (the client adds the path)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r}: an endpoint has no path or query (scheme://host[:port])")
    return value


REDACTED = "***"


def without_password(url: str) -> str:
    """`url` with the password of its user part (`user:password@`) replaced by `***`.

    Works on malformed URLs too (they are echoed in error lines): everything between the
    scheme's `//` and the last `@` is the user part; a user part without `:` is taken
    as a bare password (`redis://secret@host`, as Redis's AUTH with one argument).
    """
    head, at, host = url.rpartition("@")
    if not at:
        return url
    scheme, slashes, creds = head.rpartition("//")
    if not slashes:
        scheme, creds = "", head
    user, colon, _ = creds.partition(":")
    hidden = f"{user}:{REDACTED}" if colon and user else REDACTED
    return f"{scheme}{slashes}{hidden}@{host}"


def seed_urls(url: str) -> list[str]:
    """One URL per node of a URL naming several, comma-separated: `redis://:pw@h1:7000,
    h2:7001/0` → `redis://:pw@h1:7000/0`, `redis://:pw@h2:7001/0` (a Redis Cluster's seed
    nodes, `PTU_REDIS_CLUSTER=true`); `[url]` for a URL naming one."""
    scheme, slashes, rest = url.partition("://")
    if not slashes:
        return [url]
    netloc, sep, tail = rest.partition("/")
    if "?" in netloc:  # no path: the query follows the hosts
        netloc, _, query = netloc.partition("?")
        sep, tail = "", "?" + query
    user, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [f"{scheme}://{user}{at}{host.strip()}{sep}{tail}" for host in hosts.split(",")]


def check_redis_url(value: str) -> str:
    """`redis://`, `rediss://` or `unix://` with a numeric database index (raises ValueError);
    several comma-separated `HOST:PORT` (seed nodes) each checked so.

    The errors name the URL without its password.
    """
    seeds = seed_urls(value)
    if len(seeds) > 1:
        for seed in seeds:
            if not urlsplit(seed).hostname:
                raise ValueError(f"{without_password(value)!r}: a seed node without a host")
            check_redis_url(seed)
        return value
    parts = urlsplit(value)
    shown = repr(without_password(value))
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ValueError(f"{shown} is not a Redis URL: give redis://HOST:PORT/DB")
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"{shown}: the database index {db!r} is not a number")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError(f"{shown}: the port is not a number from 0 to 65535") from None
    return value


class SpilloverEntry(BaseModel):
    """One deployment of a `spillover` chain (a bare name in `PTU_DEPLOYMENTS` is one too)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    native: bool = Field(
        default=False,
        description="a standard deployment of the PTU's resource that Azure spills to itself "
        "(the ingress sends x-ms-spillover-deployment: one round trip, streams included)",
    )
    service_tier: str | None = Field(
        default=None, min_length=1, description="`service_tier` sent on calls to this entry"
    )


class OverflowEntry(BaseModel):
    """Where a batch's lines go when the PTU will not finish them by the batch's deadline.

    `batch`: a Global or Data Zone Batch deployment of the PTU's resource (Files + Batches
    API, `turnaround_s` its expected turnaround); `flex`: a standard deployment called with
    `service_tier: "flex"`; `standard`: a standard deployment at its full price. Prices are
    per 1M tokens.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: Literal["batch", "flex", "standard"]
    price_in: float = Field(ge=0, description="price of 1M input tokens")
    price_out: float = Field(ge=0, description="price of 1M output tokens")
    turnaround_s: float = Field(
        default=86_400.0, gt=0, description="batch: the expected turnaround (the 24 h target)"
    )


class DeploymentConfig(BaseModel):
    """One Azure OpenAI deployment the orchestrator manages."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    kind: Literal["provisioned", "standard"] = "provisioned"
    ptus: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0, description="standard deployments: tokens/min")
    input_tpm_per_ptu: int | None = Field(default=None, gt=0)
    output_weight: float | None = Field(default=None, gt=0)
    lower_threshold: float | None = Field(default=None, ge=0, le=1)
    upper_threshold: float | None = Field(default=None, ge=0, le=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    spillover: list[SpilloverEntry] = Field(
        default_factory=list, description="deployments to try, in order, when this one fails"
    )
    endpoint: str | None = Field(default=None, description="resource endpoint; default global")
    api_key_env: str | None = Field(
        default=None, description="name of the variable holding this resource's key"
    )
    limit_field: capacity.LimitField | None = Field(
        default=None, description="the output-limit field the model takes; default: by model"
    )
    governance: bool = Field(
        default=True, description="false: output limits pass as sent (no default, cap, rename)"
    )
    input_price_per_mtok: float | None = Field(
        default=None, ge=0, description="standard deployments: price of 1M input tokens"
    )
    output_price_per_mtok: float | None = Field(
        default=None, ge=0, description="standard deployments: price of 1M output tokens"
    )
    low_priority_spill: Literal["keep", "fail"] = Field(
        default="keep",
        description="a queued call Azure spilled to a standard deployment: keep its answer "
        "(charged there) or fail the request",
    )
    overflow: list[OverflowEntry] = Field(
        default_factory=list,
        description="provisioned: where batch lines go that would miss their deadline",
    )
    pool: str | None = Field(
        default=None, min_length=1,
        description="the pool this PTU deployment is a member of (clients may name the pool)",
    )  # fmt: skip
    ptu_hourly_price: float | None = Field(
        default=None, ge=0, description="price of one PTU-hour here (default PTU_PTU_HOURLY_PRICE)"
    )
    wait_s: float | None = Field(
        default=None, ge=0, le=MAX_HELD_S,
        description="default Prefer: wait of low-priority calls (seconds held for the result)",
    )  # fmt: skip

    @field_validator("spillover", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        if value is None:
            return []
        entries = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(entries, list):
            return entries
        return [{"name": e} if isinstance(e, str) else e for e in entries]

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.name in self.spillover_names:
            raise ValueError(f"deployment {self.name!r}: cannot spill over to itself")
        natives = [e.name for e in self.spillover if e.native]
        if natives and self.kind != "provisioned":
            raise ValueError(f"deployment {self.name!r}: only a provisioned one spills natively")
        if len(natives) > 1:
            raise ValueError(f"deployment {self.name!r}: one native spillover entry at most")
        for e in self.spillover:
            if e.native and e.service_tier is not None:
                raise ValueError(
                    f"deployment {self.name!r}: spillover {e.name!r} is native, Azure sends "
                    "the call on as it came: set its service tier on the deployment in Azure"
                )
        if self.overflow and self.kind != "provisioned":
            raise ValueError(f"deployment {self.name!r}: only a provisioned one has overflow")
        if self.kind == "provisioned":
            if self.ptus is None:
                raise ValueError(f"deployment {self.name!r}: provisioned needs 'ptus'")
            if capacity.lookup(self.model) is None and self.input_tpm_per_ptu is None:
                raise ValueError(
                    f"deployment {self.name!r}: unknown model {self.model!r}; "
                    "give 'input_tpm_per_ptu' (and 'output_weight')"
                )
        elif self.tpm is None:
            raise ValueError(f"deployment {self.name!r}: standard needs 'tpm'")
        lo, hi = self.lower_threshold, self.upper_threshold
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"deployment {self.name!r}: lower_threshold must be below upper")
        return self

    @property
    def spillover_names(self) -> list[str]:
        """The spillover chain's deployment names, in order."""
        return [e.name for e in self.spillover]

    @property
    def native_spillover(self) -> str | None:
        """The standard deployment Azure spills this one's high-priority calls to, if any."""
        return next((e.name for e in self.spillover if e.native), None)

    @property
    def capacity_tpm(self) -> float:
        """Input-token equivalents per minute this deployment drains."""
        if self.kind == "standard":
            assert self.tpm is not None
            return float(self.tpm)
        assert self.ptus is not None
        known = capacity.lookup(self.model)
        per_ptu = self.input_tpm_per_ptu or (known.input_tpm_per_ptu if known else 0)
        return float(self.ptus * per_ptu)

    def payg_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """What a standard deployment bills for these tokens; None without its prices."""
        if self.input_price_per_mtok is None and self.output_price_per_mtok is None:
            return None
        paid = prompt_tokens * (self.input_price_per_mtok or 0.0)
        paid += completion_tokens * (self.output_price_per_mtok or 0.0)
        return paid / 1e6

    @property
    def weight(self) -> float:
        """Input-token equivalents charged per output token."""
        if self.output_weight is not None:
            return self.output_weight
        known = capacity.lookup(self.model)
        return known.output_weight if known else 1.0
