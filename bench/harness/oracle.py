"""The oracle: a `UtilisationSource` that reads the simulator's true level (bench only).

No real deployment can be read like this: Azure reports a deployment's level late (the
Monitor minute), coarsely or not at all (the header). What a worker steering by the truth
achieves is the physical best of a reality, the yardstick of `ptu bench robustness`: a
controller above ~0.6 before an unannounced capacity cut overflows whatever it reads, and
the oracle run shows how much of a cost is that and how much is the estimate's.

The source polls `GET /sim/state` (never `reset_peaks`: the benchmark's sampler owns the
peaks) at most every `poll_s`, lazily on a read, one request at a time; a reading is dated
from before the request went out, so its age is never understated. A failed poll keeps
the previous reading, which then ages until the throttle calls it stale and closes
(fail closed, as with any source). Run by `bench/harness/oracle_worker.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx2
import structlog

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.utilisation.base import Reading

log = structlog.get_logger(__name__)

POLL_S = 0.15
"""How often the truth is re-read: as often as the benchmark's own sampler (10 Hz), about."""
MAX_AGE_S = 2.0
SOURCE = "oracle"
ORACLE_WORKER = "bench.harness.oracle_worker"
"""The module `python -m` runs as a worker steering by the oracle."""


class OracleSource:
    """The simulator's own `utilization` of each deployment, as a worker's utilisation source."""

    def __init__(
        self,
        client: httpx2.AsyncClient,
        sim_url: str,
        *,
        poll_s: float = POLL_S,
        max_age_s: float = MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_age_s = max_age_s
        self.poll_s = poll_s
        self.polls = 0
        self.failures = 0
        self._client = client
        self._url = sim_url.rstrip("/") + "/sim/state"
        self._clock = clock
        self._levels: dict[str, float] = {}
        self._polled_at: float | None = None
        """When the last poll went out (successful or not)."""
        self._observed_at: float | None = None
        """When the levels held were true (the last successful poll's send time)."""
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<OracleSource levels={self._levels} polls={self.polls} failures={self.failures}>"

    async def read(self, deployment: str) -> Reading:
        """The true level of `deployment`, at most `poll_s` older than the last poll allows."""
        async with self._lock:
            now = self._clock()
            if self._polled_at is None or now - self._polled_at >= self.poll_s:
                self._polled_at = now
                await self._poll(now)
        level = self._levels.get(deployment)
        if level is None or self._observed_at is None:
            raise UtilisationUnavailable(f"the simulator has not told the level of {deployment!r}")
        return Reading(level, self._observed_at, SOURCE)

    async def _poll(self, sent_at: float) -> None:
        self.polls += 1
        try:
            response = await self._client.get(self._url, timeout=2.0)
            response.raise_for_status()
            deployments = response.json()["deployments"]
            levels = {name: float(d["utilization"]) for name, d in deployments.items()}
        except (httpx2.HTTPError, KeyError, TypeError, ValueError) as exc:
            self.failures += 1
            log.warning("oracle_poll_failed", url=self._url, error=str(exc))
            return
        self._levels = levels
        self._observed_at = sent_at

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
