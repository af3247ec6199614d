"""Which verb reads which `PTU_*` variable: the source of every verb's `--help` list.

One entry per `Settings` field, naming the `ptu` verbs whose code reads it.
`tests/unit/test_cli_variables.py` holds this table to the code (a static reading of
each verb's modules), so a verb that starts or stops reading a variable fails there
until this says so, and every field must be here.
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.core.settings import Settings

READ_BY: Mapping[str, tuple[str, ...]] = {
    "redis_url": ("ingress", "worker", "estimator", "up", "status", "usage", "dlq"),
    "redis_cluster": ("ingress", "worker", "estimator", "up", "status", "usage", "dlq"),
    "redis_auth": ("ingress", "worker", "estimator", "status", "usage", "dlq"),
    "queue_backend": ("ingress", "worker", "estimator", "up", "status", "dlq"),
    "queue_claim_idle_s": ("ingress", "worker", "status", "dlq"),
    "queue_liveness_s": ("ingress", "worker", "status", "dlq"),
    "redis_wait_replicas": ("ingress", "worker", "status", "dlq"),
    "redis_wait_timeout_ms": ("ingress", "worker", "status", "dlq"),
    "reconcile_interval_s": ("ingress",),
    "utilization_source": ("worker", "status"),
    "calibration": ("ingress", "worker", "estimator", "status"),
    "lower_threshold": ("ingress", "worker", "status"),
    "upper_threshold": ("ingress", "worker", "status"),
    "max_concurrency": ("ingress", "worker", "status"),
    "deployments": ("ingress", "worker", "estimator", "up", "status", "usage", "dlq"),
    "estimate_window_s": ("ingress", "worker", "estimator", "up", "status"),
    "estimate_max_age_s": ("ingress", "worker", "estimator", "status"),
    "monitor_max_age_s": ("worker", "status"),
    "slot_lease_s": ("worker",),
    "azure_openai_endpoint": ("ingress", "worker", "up"),
    "azure_openai_api_key": ("ingress", "worker", "up"),
    "azure_openai_api_version": ("ingress", "worker"),
    "request_timeout_s": ("ingress", "worker"),
    "default_priority": ("ingress",),
    "max_attempts": ("ingress", "worker"),
    "default_ttl_s": ("ingress", "dlq"),
    "reply_ttl_s": ("ingress", "worker", "dlq"),
    "drain_timeout_s": ("ingress", "worker"),
    "ingress_workers": ("ingress", "up"),
    "backoff_base_s": ("ingress", "worker"),
    "backoff_max_s": ("ingress", "worker"),
    "azure_monitor_endpoint": ("worker", "status"),
    "azure_resource_id": ("worker", "status"),
    "azure_monitor_poll_s": ("worker", "status"),
    "azure_monitor_ca_file": ("worker", "status"),
    "azure_management_endpoint": ("worker",),
    "eventhub_namespace": ("ingress", "worker", "estimator", "status", "dlq"),
    "eventhub_connection_string": ("ingress", "worker", "estimator", "status", "dlq"),
    "eventhub_name": ("ingress", "worker", "status", "dlq"),
    "eventhub_consumer_group": ("ingress", "worker", "estimator", "status", "dlq"),
    "eventhub_token_events_name": ("estimator",),
    "trusted_front_secret": ("ingress",),
    "api_keys": ("ingress", "worker", "estimator", "status", "usage", "dlq"),
    "tenants": ("ingress", "worker", "estimator", "status", "usage", "dlq"),
    "ptu_hourly_price": ("usage",),
    "max_body_bytes": ("ingress",),
    "max_tokens_ceiling": ("ingress",),
    "default_max_tokens": ("ingress", "worker"),
    "size_max_tokens": ("worker",),
    "spillover_wait_ms": ("ingress", "worker"),
    "files_dir": ("ingress",),
    "blob_account_url": ("ingress",),
    "blob_container": ("ingress",),
    "blob_connection_string": ("ingress",),
    "breaker_failure_rate": ("ingress", "worker"),
    "breaker_min_calls": ("ingress", "worker"),
    "breaker_window_s": ("ingress", "worker"),
    "breaker_open_s": ("ingress", "worker"),
    "breaker_max_open_s": ("ingress", "worker"),
    "ingress_url": ("up", "submit", "result", "batches"),
    "ingress_api_key": ("submit", "result", "batches"),
    "log_level": ("ingress", "worker", "estimator", "up"),
    "log_format": ("ingress", "worker", "estimator", "up"),
    "metrics_port": ("worker", "up"),
    "metrics_api_key": ("ingress", "worker"),
    "eventhub_checkpoint_store": ("ingress", "worker", "status", "dlq"),
    "eventhub_checkpoint_blob_url": ("ingress", "worker", "status", "dlq"),
    "eventhub_checkpoint_container": ("ingress", "worker", "status", "dlq"),
    "eventhub_checkpoint_connection_string": ("ingress", "worker", "status", "dlq"),
    "otel_sdk_disabled": ("ingress", "worker"),
    "otel_traces_exporter": ("ingress", "worker"),
    "otel_metrics_exporter": ("ingress", "worker"),
    "otel_exporter_otlp_endpoint": ("ingress", "worker"),
    "otel_exporter_otlp_traces_endpoint": ("ingress", "worker"),
    "otel_exporter_otlp_metrics_endpoint": ("ingress", "worker"),
    "applicationinsights_connection_string": ("ingress", "worker"),
}


def variable(name: str) -> str:
    """The environment variable of a settings field: `PTU_<NAME>`, or its alias (`OTEL_*`)."""
    alias = Settings.model_fields[name].validation_alias
    return alias if isinstance(alias, str) else f"PTU_{name.upper()}"


def variables_read_by(verb: str) -> list[str]:
    """The variables `ptu VERB` reads, in the order of the settings."""
    return [variable(name) for name in Settings.model_fields if verb in READ_BY.get(name, ())]
