"""Process configuration: every `PTU_*` variable, validated once at start-up."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from orchestrator.core.config_errors import EnvSource, invalid_setting, one_line
from orchestrator.core.deployments import DeploymentConfig as DeploymentConfig
from orchestrator.core.deployments import check_endpoint, check_redis_url, seed_urls
from orchestrator.core.errors import ConfigError
from orchestrator.core.pools import Pool, check_pools, pools_of
from orchestrator.core.retry import RetryPolicy
from orchestrator.core.schemas import Priority
from orchestrator.core.views import (
    CheckpointView,
    EventHubsView,
    QueueView,
    RedisView,
    ThrottleView,
    overridden,
)
from orchestrator.tenants.config import TenantConfig, check_tenants


class Settings(BaseSettings):
    """All configuration, read from `PTU_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PTU_", extra="ignore")
    # secrets named by `api_key_env` are read once here, never elsewhere

    # state and queue
    redis_url: str = "redis://localhost:6379/0"
    redis_cluster: bool = Field(
        default=False, description="true: Redis Cluster (PTU_REDIS_URL names any node)"
    )
    redis_auth: Literal["key", "entra"] = Field(
        default="key",
        description="key: the password in PTU_REDIS_URL (if any); entra: Entra ID tokens "
        "(DefaultAzureCredential, renewed before expiry) as the password",
    )
    queue_backend: Literal["redis", "eventhubs"] = "redis"
    queue_claim_idle_s: float = Field(
        default=60.0, gt=0, description="redis queue: reclaim entries idle this long (safety net)"
    )
    queue_liveness_s: float = Field(
        default=5.0, gt=0, description="redis queue: a consumer silent this long is dead"
    )
    redis_wait_replicas: int = Field(
        default=1,
        ge=0,
        description="a low-priority request is answered 202 once its record and queue entry "
        "are on this many replicas (at most those the node has; 0: do not wait)",
    )
    redis_wait_timeout_ms: int = Field(
        default=500, gt=0, description="how long to wait for them before answering 503"
    )
    reconcile_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="how often one ingress looks for queued requests whose queue entry Redis "
        "lost (0: never)",
    )
    utilization_source: Literal["estimate", "azure_monitor"] = "estimate"
    calibration: Literal["auto", "off"] = Field(
        default="auto", description="estimate: learn from the deployment's own signals, or not"
    )
    # throttle
    lower_threshold: float = Field(default=0.20, ge=0, le=1)
    upper_threshold: float = Field(default=0.90, ge=0, le=1)
    max_concurrency: int = Field(default=10, ge=1)
    deployments: list[DeploymentConfig] = Field(default_factory=list)
    estimate_window_s: float = Field(default=60.0, gt=0)
    estimate_max_age_s: float = Field(default=5.0, gt=0)
    monitor_max_age_s: float = Field(default=300.0, gt=0)
    slot_lease_s: float = Field(
        default=2.0, gt=0, description="a crashed worker's slots are free after this"
    )
    # upstream
    azure_openai_endpoint: str | None = None
    azure_openai_api_key: SecretStr | None = None
    azure_openai_api_version: str = "2024-10-21"
    request_timeout_s: float = Field(default=120.0, gt=0)
    # delivery
    default_priority: Priority = "high"
    max_attempts: int = Field(default=5, ge=1)
    default_ttl_s: float = Field(default=86_400.0, gt=0)
    reply_ttl_s: int = Field(default=86_400, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    ingress_workers: int = Field(default=1, ge=1)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    # azure monitor source
    azure_monitor_endpoint: str | None = None
    azure_resource_id: str | None = None
    azure_monitor_poll_s: float = Field(default=30.0, gt=0)
    azure_monitor_ca_file: str | None = Field(
        default=None, description="CA bundle to trust for the metrics endpoint (local simulator)"
    )
    azure_management_endpoint: str | None = Field(
        default=None,
        description="Azure Resource Manager (https://management.azure.com): the worker reads "
        "its PTU deployments there at start-up and warns of native spillover",
    )
    # event hubs backend
    eventhub_namespace: str | None = None
    eventhub_connection_string: SecretStr | None = None
    eventhub_name: str = "ptu-requests"
    eventhub_consumer_group: str = "$Default"
    eventhub_token_events_name: str = "ptu-token-events"
    eventhub_checkpoint_store: Literal["redis", "blob"] = Field(
        default="redis", description="where the request hubs' checkpoints live"
    )
    eventhub_checkpoint_blob_url: str | None = Field(
        default=None, description="blob store: https://<account>.blob.core.windows.net"
    )
    eventhub_checkpoint_container: str = "ptu-checkpoints"
    eventhub_checkpoint_connection_string: SecretStr | None = Field(
        default=None, description="blob store with a key (or Azurite) instead of Entra ID"
    )
    # ingress
    api_keys: dict[str, str] = Field(
        default_factory=dict, description="api key (or sha256:<hex> of it) -> tenant"
    )
    tenants: list[TenantConfig] = Field(default_factory=list)
    ptu_hourly_price: float | None = Field(
        default=None, ge=0, description="price of one PTU-hour, for `ptu usage` cost shares"
    )
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_tokens_ceiling: int = Field(default=2_000, gt=0)
    default_max_tokens: int = Field(default=1_000, gt=0)
    size_max_tokens: Literal["auto", "off"] = Field(
        default="auto",
        description="queued calls: send an output limit learnt from past answers, or the caller's",
    )
    spillover_wait_ms: int = Field(default=0, ge=0)
    # batch files (bytes; Redis keeps their metadata)
    files_dir: str = Field(
        default_factory=lambda: str(Path(tempfile.gettempdir()) / "ptu-files"),
        description="local file store directory (when PTU_BLOB_ACCOUNT_URL is unset)",
    )
    blob_account_url: str | None = Field(
        default=None, description="Blob Storage account URL: files go there (Entra ID)"
    )
    blob_container: str = Field(default="ptu-files", min_length=3, max_length=63)
    blob_connection_string: SecretStr | None = Field(
        default=None,
        description="Blob Storage by connection string instead of PTU_BLOB_ACCOUNT_URL and "
        "Entra ID (the emulator; an account that allows shared keys)",
    )
    # circuit breaker (per upstream deployment, shared through Redis)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_min_calls: int = Field(default=5, ge=1)
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_open_s: float = Field(default=10.0, gt=0)
    breaker_max_open_s: float = Field(default=300.0, gt=0)
    # client verbs (`ptu submit`, `ptu result`, `ptu batches`) and `ptu up`
    ingress_url: str = Field(
        default="http://127.0.0.1:8080", description="where the client verbs reach the ingress"
    )
    ingress_api_key: SecretStr | None = Field(
        default=None, description="the key the client verbs present (when it has PTU_API_KEYS)"
    )
    trusted_front_secret: SecretStr | None = Field(
        default=None,
        description="ingress: a front (APIM) sending it as x-ptu-front-secret names the "
        "tenant in x-ptu-tenant",
    )
    # observability
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: console when stderr is a terminal, else json"
    )
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_api_key: SecretStr | None = Field(
        default=None,
        description="the key /metrics, /openapi.json and the worker's metrics port ask for",
    )
    # OpenTelemetry (see orchestrator.telemetry): the standard variables, read here to
    # decide whether to export at all; the SDK reads the others (headers, protocol, ...)
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str | None = Field(default=None, validation_alias="OTEL_TRACES_EXPORTER")
    otel_metrics_exporter: str | None = Field(
        default=None, validation_alias="OTEL_METRICS_EXPORTER"
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    otel_exporter_otlp_metrics_endpoint: str | None = Field(
        default=None, validation_alias="OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    )
    applicationinsights_connection_string: SecretStr | None = Field(
        default=None, validation_alias="APPLICATIONINSIGHTS_CONNECTION_STRING"
    )

    @field_validator(
        "azure_openai_api_key",
        "eventhub_connection_string",
        "eventhub_checkpoint_connection_string",
        "ingress_api_key",
        "trusted_front_secret",
        "blob_connection_string",
        "applicationinsights_connection_string",
        "metrics_api_key",
        mode="before",
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """An optional secret set to nothing is unset, its surrounding whitespace dropped.

        `PTU_AZURE_OPENAI_API_KEY=` (a manifest's empty secret, an .env line with no value)
        means what its absence means, Entra ID, as `api_key_env` naming an empty variable
        does not (it asks for a key): sending "" as the key would get a 401 on every call.
        When no Entra ID credential works either, the start-up check stops the process with
        one line naming the variable (`startup.credential_error`).
        """
        if isinstance(value, str):
            return value.strip() or None
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("azure_openai_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    @field_validator("ingress_url")
    @classmethod
    def _ingress_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"{value!r} is not a base URL: give http://HOST:PORT")
        return value.strip().rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment (JSON errors named by variable), then secrets."""
        return init_settings, EnvSource(settings_cls), dotenv_settings, file_secret_settings

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.lower_threshold >= self.upper_threshold:
            raise invalid_setting(
                "lower_threshold",
                f"{self.lower_threshold} must be below PTU_UPPER_THRESHOLD "
                f"({self.upper_threshold})",
            )
        self._check_deployments()
        if (
            self.eventhub_checkpoint_store == "blob"
            and self.eventhub_checkpoint_blob_url is None
            and self.eventhub_checkpoint_connection_string is None
        ):
            raise invalid_setting(
                "eventhub_checkpoint_blob_url",
                "required (or PTU_EVENTHUB_CHECKPOINT_CONNECTION_STRING) when "
                "PTU_EVENTHUB_CHECKPOINT_STORE=blob",
            )
        if len(seed_urls(self.redis_url)) > 1 and not self.redis_cluster:
            raise invalid_setting(
                "redis_url",
                "names several nodes: that is for a Redis Cluster's seed nodes "
                "(set PTU_REDIS_CLUSTER=true)",
            )
        if self.redis_auth == "entra" and urlsplit(self.redis_url).password:
            raise invalid_setting(
                "redis_auth",
                "entra authenticates with tokens: remove the password from PTU_REDIS_URL",
            )
        problem = check_tenants(self.tenants, self.api_keys)
        if problem is not None:
            field, _, message = problem.partition(": ")
            raise invalid_setting(field, message)
        return self

    def _check_deployments(self) -> None:
        """Names unique, spillover targets known (native ones standard, same resource), pools."""
        names = [d.name for d in self.deployments]
        if len(names) != len(set(names)):
            raise invalid_setting("deployments", "names must be unique")
        for d in self.deployments:
            for entry in d.overflow:
                used = self.deployment(entry.name) if entry.kind != "batch" else None
                if entry.kind != "batch" and (used is None or used.kind != "standard"):
                    raise invalid_setting(
                        "deployments",
                        f"overflow {entry.name!r} of {d.name!r} ({entry.kind}) must be a "
                        "standard deployment",
                    )
            for spill in d.spillover_names:
                if spill not in names:
                    raise invalid_setting("deployments", f"spillover {spill!r} is not a deployment")
            native = d.native_spillover
            target = None if native is None else self.deployment(native)
            if target is not None and (
                target.kind != "standard" or self.endpoint_of(target) != self.endpoint_of(d)
            ):
                raise invalid_setting(
                    "deployments",
                    f"spillover {native!r} of {d.name!r} is native: it must be a standard "
                    "deployment on the same resource",
                )
        pool_problem = check_pools(self.deployments)
        if pool_problem is not None:
            raise invalid_setting("deployments", pool_problem)
        if self.queue_backend == "eventhubs" and self.pools:
            # a hub's partitions are owned, not shared: a busy or broken member would keep its own
            raise invalid_setting(
                "deployments", "PTU pools need PTU_QUEUE_BACKEND=redis (not eventhubs)"
            )

    @property
    def redis(self) -> RedisView:
        """Where the state lives."""
        return RedisView(self.redis_url, self.redis_cluster, self.redis_auth)

    @property
    def queue(self) -> QueueView:
        """The queue backend and its Redis Streams timings."""
        return QueueView(self.queue_backend, self.queue_claim_idle_s, self.queue_liveness_s)

    @property
    def throttle(self) -> ThrottleView:
        """The throttle curve's defaults and the slot lease."""
        return ThrottleView(
            self.lower_threshold, self.upper_threshold, self.max_concurrency, self.slot_lease_s
        )

    @property
    def eventhubs(self) -> EventHubsView:
        """How to reach the Event Hubs namespace, and the consumer group."""
        return EventHubsView(
            self.eventhub_namespace, self.eventhub_connection_string, self.eventhub_consumer_group
        )

    @property
    def checkpoints(self) -> CheckpointView:
        """Where the request hubs' checkpoints live."""
        return CheckpointView(
            self.eventhub_checkpoint_store,
            self.eventhub_checkpoint_blob_url,
            self.eventhub_checkpoint_container,
            self.eventhub_checkpoint_connection_string,
        )

    def endpoint_of(self, d: DeploymentConfig) -> str | None:
        """The resource endpoint serving `d`: its own, else `PTU_AZURE_OPENAI_ENDPOINT`."""
        return d.endpoint or self.azure_openai_endpoint

    def api_key_of(
        self, d: DeploymentConfig, environ: Mapping[str, str] | None = None
    ) -> SecretStr | None:
        """The key for `d`'s resource: from `api_key_env` when named, else the global one.

        Raises ConfigError when `api_key_env` names a variable that is unset or empty.
        """
        if d.api_key_env is None:
            return self.azure_openai_api_key
        value = (os.environ if environ is None else environ).get(d.api_key_env, "")
        if not value.strip():
            raise ConfigError(
                f"PTU_DEPLOYMENTS: {d.name}: api_key_env names {d.api_key_env}, which is not set"
            )
        return SecretStr(value.strip())

    def deployment(self, name: str) -> DeploymentConfig | None:
        """The deployment called `name`, if configured."""
        return next((d for d in self.deployments if d.name == name), None)

    @property
    def pools(self) -> dict[str, Pool]:
        """The PTU pools (`pool` fields of `PTU_DEPLOYMENTS`) by name."""
        return pools_of(self.deployments)

    def retry_policy(self) -> RetryPolicy:
        """Upstream retries: `PTU_MAX_ATTEMPTS`, `PTU_BACKOFF_BASE_S`, `PTU_BACKOFF_MAX_S`."""
        return RetryPolicy(self.max_attempts, self.backoff_base_s, self.backoff_max_s)

    def thresholds(self, d: DeploymentConfig) -> tuple[float, float, int]:
        """(lower, upper, max_concurrency) for a deployment, its overrides applied."""
        lo, hi, m = overridden(d, self.lower_threshold, self.upper_threshold, self.max_concurrency)
        if lo >= hi:
            raise ConfigError(f"PTU_DEPLOYMENTS: {d.name}: lower threshold must be below upper")
        return lo, hi, m


def load_settings(**overrides: object) -> Settings:
    """Read and validate the environment; raise ConfigError with one clear line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from exc
