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


def reply(request_id: str) -> str:
    """Default reply list of a request whose requester named none (DESIGN.md §5)."""
    return f"{PREFIX}:reply:{request_id}"


def tenant_reply_prefix(tenant: str) -> str:
    """Start of every reply key a tenant may name itself (`x-reply-key`, batch replies)."""
    return f"{PREFIX}:reply:{tenant}:"


def tenant_reply(tenant: str, suffix: str) -> str:
    """A reply list in a tenant's namespace, e.g. the one of a batch."""
    return tenant_reply_prefix(tenant) + suffix


def tenant_queue(deployment: str, tenant: str) -> str:
    """Redis Stream of one tenant's low-priority requests for a deployment.

    The `default` tenant keeps the deployment's original stream (`queue`), so a
    single-tenant installation's keys are unchanged.
    """
    return queue(deployment) if tenant == "default" else f"{PREFIX}:queue:{deployment}:t:{tenant}"


def fair_share(deployment: str) -> str:
    """Hash of a deployment's fair-share state: `a:<tenant>` backlog flags, `v:<tenant>`
    virtual service (tokens / weight) and `floor` (see `orchestrator.tenants.fair`)."""
    return f"{PREFIX}:fair:{deployment}"


def tenant_usage(tenant: str, hour: int) -> str:
    """Hash of a tenant's token usage in one UTC hour (`hour` = epoch seconds // 3600);
    fields `<deployment>|<priority>|<prompt|cached|completion|requests>`."""
    return f"{PREFIX}:usage:{tenant}:{hour}"


def tenant_minute(tenant: str, minute: int) -> str:
    """Counter of a tenant's tokens in one minute (epoch seconds // 60), for tokens_per_minute."""
    return f"{PREFIX}:tpm:{tenant}:{minute}"


def tenant_quota(tenant: str, period_start: int) -> str:
    """Counter of a tenant's tokens in the quota period starting at `period_start` (epoch s)."""
    return f"{PREFIX}:quota:{tenant}:{period_start}"


USAGE_TENANTS = f"{PREFIX}:usage-tenants"
"""Set of tenants that have usage recorded, for `ptu usage`."""
