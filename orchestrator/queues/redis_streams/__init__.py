"""The Redis Streams queue backend: `queue` (the `Queue`), `liveness` (a consumer's liveness
key and in-flight refresh), `reclaim` (taking over the entries of dead consumers)."""

from orchestrator.queues.redis_streams.queue import FIELD, RedisStreamsQueue
from orchestrator.queues.redis_streams.reclaim import RELEASED

__all__ = ["FIELD", "RELEASED", "RedisStreamsQueue"]
