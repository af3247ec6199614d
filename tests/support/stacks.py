"""The in-process pieces most integration modules start: a simulator, an ingress on it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ingress.server import IngressThread
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode


def flush(redis_url: str) -> None:
    """Leave nothing an earlier module wrote (its breakers, usage, queues)."""
    with redis_mode.connect_sync(redis_url) as client:
        client.flushdb()


@contextmanager
def simulator(specs: Sequence[str], api_key: str) -> Iterator[SimulatorThread]:
    """A simulator of the `NAME=MODEL:PTUS` deployments, instant (no first-token delay)."""
    config = SimConfig.from_specs(list(specs), tbt_ms=0.0, ttft_ms=0.0, api_key=api_key)
    with SimulatorThread(config) as server:
        yield server


@contextmanager
def ingress_on(
    redis_url: str, sim: SimulatorThread, api_key: str, **settings: Any
) -> Iterator[IngressThread]:
    """An ingress in a thread, calling `sim` with `api_key`; `settings` are the rest."""
    loaded = load_settings(
        redis_url=redis_url,
        redis_cluster=redis_mode.CLUSTER,
        azure_openai_endpoint=sim.url,
        azure_openai_api_key=api_key,
        **settings,
    )
    with IngressThread(loaded) as server:
        yield server
