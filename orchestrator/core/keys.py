"""Redis key names, in one place so every process agrees on them.

Redis Cluster (and so Azure Managed Redis, clustered Azure Cache for Redis) runs a
Lua script or a MULTI only when all its keys hash to one slot. Every key therefore
carries a `{hash tag}` naming the one entity it belongs to, and a script or a
transaction only ever touches keys of one entity:

| entity     | tag                 | keys                                             |
|------------|---------------------|--------------------------------------------------|
| deployment | `{d:<deployment>}`  | queue, per-tenant queues, fair-share state, dead |
|            |                     | letters, estimate, its per-request charges,      |
|            |                     | slots (+ started calls, owners' channels), pause,|
|            |                     | consumer liveness, breaker, counts,              |
|            |                     | learnt output lengths per tenant                 |
| request    | `{<request id>}`    | record, result, background response; the default |
|            |                     | reply key `ptu:reply:{<request id>}` shares it   |
| batch      | `{b:<batch id>}`    | batch hash, its lines' counted-once marks        |
| file       | `{f:<file id>}`     | file hash                                        |
| tenant     | `{t:<tenant>}`      | file and batch indexes, hourly usage, minute and |
|            |                     | quota counters, idempotency keys                 |
| event hub  | `{eh:...}`          | ownership, checkpoints, delivery counters        |

Work that spans entities (a result is written in the request's slot, pushed to a
reply key the caller chose, counted in its batch) is done as one atomic step per
entity, each idempotent, and re-driven until the last succeeded (see
`orchestrator.core.results`). Single keys with no entity (`TOKEN_EVENTS`,
`WORKERS`, `INCARNATION`, `USAGE_TENANTS`, `BATCHES_ACTIVE`) are never in a script with another key.

Tag contents must not contain `}` (that would end the tag early): deployment,
batch, file and tenant names are checked where they enter, request ids are ours.
"""

from __future__ import annotations

PREFIX = "ptu"
TOKEN_EVENTS = f"{PREFIX}:token-events"
"""Stream of TokenEvent JSON (field `event`) consumed by `ptu estimator`."""
WORKERS = f"{PREFIX}:workers"
"""Hash worker_id -> JSON heartbeat (deployments, limits, in-flight) for `ptu status`."""
READY_PROBE = f"{PREFIX}:ready-probe"
"""Written (with a short expiry) by `/readyz` to prove Redis takes writes."""
INCARNATION = f"{PREFIX}:incarnation"
"""The Redis data set's run id, written once; a process seeing it change knows data was lost."""


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes: the first non-empty `{...}`, else the key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def same_slot(*names: str) -> bool:
    """True when every key hashes on the same tag (so one script may touch them all)."""
    return len({hash_tag(n) for n in names}) <= 1


def _d(deployment: str) -> str:
    return f"{PREFIX}:{{d:{deployment}}}"


def _r(request_id: str) -> str:
    return f"{PREFIX}:{{{request_id}}}"


def _b(batch_id: str) -> str:
    return f"{PREFIX}:{{b:{batch_id}}}"


def _t(tenant: str) -> str:
    return f"{PREFIX}:{{t:{tenant}}}"


# -- per deployment ----------------------------------------------------------------------


def queue(deployment: str) -> str:
    """Redis Stream holding a deployment's low-priority requests."""
    return f"{_d(deployment)}:queue"


def dead_letter(deployment: str) -> str:
    """Redis Stream of requests that failed for good."""
    return f"{_d(deployment)}:dlq"


def consumer_alive(deployment: str, consumer: str) -> str:
    """Set with a short expiry while a queue consumer lives; its absence frees its entries."""
    return f"{_d(deployment)}:alive:{consumer}"


def estimate(deployment: str) -> str:
    """Hash holding the utilisation estimate: the filter state (`st`, JSON) and its version
    (`ver`), the feeders' heartbeat (`hb`) and the newest token-event id folded in."""
    return f"{_d(deployment)}:est"


def estimate_request(deployment: str, request_id: str) -> str:
    """Hash of the estimate's per-request charges; makes token events idempotent."""
    return f"{_d(deployment)}:est-req:{request_id}"


def slots(deployment: str) -> str:
    """Sorted set of leased low-priority slots (member = slot id, score = lease expiry)."""
    return f"{_d(deployment)}:slots"


def slot_calls(deployment: str) -> str:
    """Hash of the slots whose call started: member = slot id, value = the call's deadline
    in server milliseconds (`throttle.slots`)."""
    return f"{_d(deployment)}:slot-calls"


def slot_owner(deployment: str, owner: str) -> str:
    """Pub/Sub channel a worker stays subscribed to while it runs: the slot table's scripts
    read its subscriber count (`PUBSUB NUMSUB`) to tell a stalled worker from a dead one.
    Tagged with the deployment, so a cluster client subscribes on the slot table's node."""
    return f"{_d(deployment)}:owner:{owner}"


def pause(deployment: str) -> str:
    """Set with an expiry while low priority is paused after a 429."""
    return f"{_d(deployment)}:pause"


# -- per request ---------------------------------------------------------------------------


def request(request_id: str) -> str:
    """Hash with a request's tenant, status (queued|in_progress) and reply key."""
    return f"{_r(request_id)}:req"


REQUEST_RECORDS = f"{PREFIX}:{{*}}:req"
"""SCAN pattern of every `request` record (the reconciler's walk)."""


def result(request_id: str) -> str:
    """The completed result document; its existence makes completion idempotent."""
    return f"{_r(request_id)}:result"


def result_channel(request_id: str) -> str:
    """Pub/sub channel notified once when a request's result is written (not a key)."""
    return f"{PREFIX}:done:{request_id}"


RESULT_CHANNELS = f"{PREFIX}:done:*"
"""Pattern of every `result_channel`: one subscription hears every result written."""


def request_of_channel(channel: str) -> str:
    """The request id a `result_channel` name carries."""
    return channel.removeprefix(f"{PREFIX}:done:")


def background_response(request_id: str) -> str:
    """A background response's Response object as accepted (JSON): its echo of the request."""
    return f"{_r(request_id)}:response"


def reply_pushed(reply_key: str, request_id: str) -> str:
    """Marker that a request's result was pushed to `reply_key`: in that key's slot.

    Raises ValueError for a reply key whose slot cannot be named by a tag (a `}`
    outside a tag); the ingress refuses such keys.
    """
    tag = hash_tag(reply_key)
    if "}" in tag or "{" in tag:
        raise ValueError(f"reply key {reply_key[:100]!r}: braces only as one hash tag")
    return f"{PREFIX}:reply-pushed:{{{tag}}}:{request_id}"


def replication_barrier(key: str) -> str:
    """A short-lived key in `key`'s slot: a write there followed by WAIT on the same
    connection proves every earlier write to that node reached its replicas."""
    return f"{PREFIX}:wait:{{{hash_tag(key)}}}"


RECONCILER = f"{PREFIX}:reconciler"
"""The reconciler's lease: the one process that walks the request records now."""


# -- per batch and file ----------------------------------------------------------------------


def batch(batch_id: str) -> str:
    """Hash with a batch's state and counters."""
    return f"{_b(batch_id)}:batch"


def batch_results(batch_id: str) -> str:
    """Hash request id -> `c`|`f` of a batch's finished lines: counts each line once (the
    result document itself is stored once, at `result(id)`)."""
    return f"{_b(batch_id)}:results"


def deadline_history(deployment: str) -> str:
    """Sorted set (score = time) of `time:rate` samples: tokens per second the deployment's
    PTU completed of batches that have a deadline (the overflow forecast's history)."""
    return f"{_d(deployment)}:deadline-history"


BATCHES_ACTIVE = f"{PREFIX}:batches:active"
"""Sorted set of batches not yet terminal (score = created_at): the batch jobs' work list."""


def queue_put(stream: str, request_id: str) -> str:
    """Marker that a request was put on `stream` (a queue stream): in the stream's slot, so
    one script puts a batch line at most once."""
    return f"{stream}:put:{request_id}"


def file(file_id: str) -> str:
    """Hash with an uploaded or produced file's metadata (its bytes are in the file store)."""
    return f"{PREFIX}:{{f:{file_id}}}:file"


# -- per tenant ---------------------------------------------------------------------------------


def tenant_files(tenant: str) -> str:
    """Sorted set of a tenant's file ids (score = created_at), for listing."""
    return f"{_t(tenant)}:files"


def tenant_batches(tenant: str) -> str:
    """Sorted set of a tenant's batch ids (score = created_at), for listing."""
    return f"{_t(tenant)}:batches"


# -- event hubs ---------------------------------------------------------------------------------


def eventhub_ownership(namespace: str, eventhub: str, consumer_group: str) -> str:
    """Hash partition_id -> ownership JSON for the Event Hubs checkpoint store."""
    return f"{PREFIX}:{{eh:{namespace}:{eventhub}:{consumer_group}}}:own"


def eventhub_checkpoints(namespace: str, eventhub: str, consumer_group: str) -> str:
    """Hash partition_id -> checkpoint JSON (offset, sequence_number) for Event Hubs."""
    return f"{PREFIX}:{{eh:{namespace}:{eventhub}:{consumer_group}}}:ckpt"


def eventhub_deliveries(eventhub: str, partition_id: str, offset: str) -> str:
    """Counter of how often one Event Hubs event was delivered (Event Hubs keeps none)."""
    return f"{PREFIX}:{{eh:{eventhub}:{partition_id}}}:dlv:{offset}"


def reply(request_id: str) -> str:
    """Default reply list of a request whose requester named none (DESIGN.md §5); in the
    request's slot."""
    return f"{PREFIX}:reply:{{{request_id}}}"


def tenant_reply_prefix(tenant: str) -> str:
    """Start of every reply key a tenant may name itself (`x-reply-key`, batch replies)."""
    return f"{PREFIX}:reply:{tenant}:"


def tenant_reply(tenant: str, suffix: str) -> str:
    """A reply list in a tenant's namespace, e.g. the one of a batch."""
    return tenant_reply_prefix(tenant) + suffix


def breaker(deployment: str, surface: str = "chat") -> str:
    """Hash of the shared circuit breaker of a deployment's API surface (`chat`: chat
    completions, `responses`: the Responses API): state, open-until (server ms), epoch."""
    return f"{_d(deployment)}:breaker" + ("" if surface == "chat" else f":{surface}")


def breaker_probe(deployment: str, surface: str = "chat") -> str:
    """Set (with an expiry) while one process runs the half-open probe of a breaker."""
    return f"{_d(deployment)}:breaker-probe" + ("" if surface == "chat" else f":{surface}")


def result_counts(deployment: str) -> str:
    """Hash status -> count of results written for a deployment (survives restarts)."""
    return f"{_d(deployment)}:counts"


def output_lengths(deployment: str, tenant: str) -> str:
    """List of the recent output lengths (tokens per choice) of a tenant's queued calls to a
    deployment, newest first (see `orchestrator.worker.lengths`)."""
    return f"{_d(deployment)}:lengths:{tenant}"


def tenant_queue(deployment: str, tenant: str, work_class: str = "low") -> str:
    """Redis Stream of one tenant's low-priority requests of one class for a deployment.

    The `default` tenant's `low` class keeps the deployment's original stream (`queue`),
    so a single-tenant installation's keys are unchanged; its `batch` class (Batch API
    lines, `orchestrator.queues.classes`) is `...:c:batch`. In the deployment's slot,
    beside its dead letters, so the stream's scripts stay on one slot.
    """
    stream = queue(deployment) if tenant == "default" else f"{queue(deployment)}:t:{tenant}"
    return stream if work_class == "low" else f"{stream}:c:{work_class}"


def fair_share(deployment: str) -> str:
    """Hash of a deployment's fair-share state: `a:<tenant>` backlog flags, `v:<tenant>`
    virtual service (tokens / weight) and `floor` (see `orchestrator.tenants.fair`)."""
    return f"{_d(deployment)}:fair"


def idempotency(tenant: str, digest: str) -> str:
    """A tenant's `Idempotency-Key` (as `digest`, its SHA-256 hex) -> the request it
    accepted, or `pending:<id>` while that request is being accepted."""
    return f"{_t(tenant)}:idem:{digest}"


def tenant_usage(tenant: str, hour: int) -> str:
    """Hash of a tenant's token usage in one UTC hour (`hour` = epoch seconds // 3600);
    fields `<deployment>|<priority>|<prompt|cached|completion|requests>`."""
    return f"{_t(tenant)}:usage:{hour}"


def tenant_gateway_seen(tenant: str, request_id: str) -> str:
    """Marker of a gateway's token record (APIM's request id) already in the tenant's usage."""
    return f"{_t(tenant)}:gateway:{request_id}"


def tenant_minute(tenant: str, minute: int) -> str:
    """Counter of a tenant's tokens in one minute (epoch seconds // 60), for tokens_per_minute."""
    return f"{_t(tenant)}:tpm:{minute}"


def tenant_quota(tenant: str, period_start: int) -> str:
    """Counter of a tenant's tokens in the quota period starting at `period_start` (epoch s)."""
    return f"{_t(tenant)}:quota:{period_start}"


USAGE_TENANTS = f"{PREFIX}:usage-tenants"
"""Set of tenants that have usage recorded, for `ptu usage`."""
