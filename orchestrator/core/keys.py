"""Redis key names, in one place so every process agrees on them."""

from __future__ import annotations

PREFIX = "ptu"
TOKEN_EVENTS = f"{PREFIX}:token-events"
"""Stream of TokenEvent JSON (field `event`) consumed by `ptu estimator`."""
WORKERS = f"{PREFIX}:workers"
"""Hash worker_id -> JSON heartbeat (deployments, limits, in-flight) for `ptu status`."""


def queue(deployment: str) -> str:
    """Redis Stream holding a deployment's low-priority requests."""
    return f"{PREFIX}:queue:{deployment}"


def dead_letter(deployment: str) -> str:
    """Redis Stream of requests that failed for good."""
    return f"{PREFIX}:dlq:{deployment}"


def request(request_id: str) -> str:
    """Hash with a request's tenant, status (queued|in_progress) and reply key."""
    return f"{PREFIX}:req:{request_id}"


def result(request_id: str) -> str:
    """The completed result document; its existence makes completion idempotent."""
    return f"{PREFIX}:result:{request_id}"


def estimate(deployment: str) -> str:
    """Hash holding the utilisation estimate's bucket level and last update time."""
    return f"{PREFIX}:est:{deployment}"


def slots(deployment: str) -> str:
    """Sorted set of leased low-priority slots (member = slot id, score = lease expiry)."""
    return f"{PREFIX}:slots:{deployment}"


def pause(deployment: str) -> str:
    """Set with an expiry while low priority is paused after a 429."""
    return f"{PREFIX}:pause:{deployment}"


def batch(batch_id: str) -> str:
    """Hash with a batch's state and counters."""
    return f"{PREFIX}:batch:{batch_id}"


def file(file_id: str) -> str:
    """Hash with an uploaded or produced file's metadata and content."""
    return f"{PREFIX}:file:{file_id}"


def batch_results(batch_id: str) -> str:
    """List of a batch's result documents (JSON), in completion order."""
    return f"{PREFIX}:batch-results:{batch_id}"


def result_channel(request_id: str) -> str:
    """Pub/sub channel notified once when a request's result is written."""
    return f"{PREFIX}:done:{request_id}"


def estimate_request(deployment: str, request_id: str) -> str:
    """Hash of the estimate's per-request charges; makes token events idempotent."""
    return f"{PREFIX}:est-req:{deployment}:{request_id}"


def eventhub_ownership(namespace: str, eventhub: str, consumer_group: str) -> str:
    """Hash partition_id -> ownership JSON for the Event Hubs checkpoint store."""
    return f"{PREFIX}:eh:own:{namespace}:{eventhub}:{consumer_group}"


def eventhub_checkpoints(namespace: str, eventhub: str, consumer_group: str) -> str:
    """Hash partition_id -> checkpoint JSON (offset, sequence_number) for Event Hubs."""
    return f"{PREFIX}:eh:ckpt:{namespace}:{eventhub}:{consumer_group}"


def eventhub_deliveries(eventhub: str, partition_id: str, offset: str) -> str:
    """Counter of how often one Event Hubs event was delivered (Event Hubs keeps none)."""
    return f"{PREFIX}:eh:dlv:{eventhub}:{partition_id}:{offset}"


def batch_requests(batch_id: str) -> str:
    """List of a batch's request ids in input-line order."""
    return f"{PREFIX}:batch-requests:{batch_id}"


def tenant_files(tenant: str) -> str:
    """Sorted set of a tenant's file ids (score = created_at), for listing."""
    return f"{PREFIX}:tenant-files:{tenant}"


def tenant_batches(tenant: str) -> str:
    """Sorted set of a tenant's batch ids (score = created_at), for listing."""
    return f"{PREFIX}:tenant-batches:{tenant}"


def breaker(deployment: str) -> str:
    """Hash of a deployment's shared circuit breaker: state, open-until (server ms), epoch."""
    return f"{PREFIX}:breaker:{deployment}"


def breaker_probe(deployment: str) -> str:
    """Set (with an expiry) while one process runs the half-open probe of a deployment."""
    return f"{PREFIX}:breaker-probe:{deployment}"


def result_counts(deployment: str) -> str:
    """Hash status -> count of results written for a deployment (survives restarts)."""
    return f"{PREFIX}:counts:{deployment}"
