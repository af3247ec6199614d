"""Polls the simulator's `/sim/state`: the true utilisation and in-flight calls over time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx2
import structlog

from orchestrator.core.runtime import pause
from orchestrator.utilisation.base import Calibration, Reading

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Sample:
    """One observation of the simulated deployment."""

    t: float
    """Seconds since the run started."""
    utilization: float
    low_in_flight: int
    high_in_flight: int
    low_peak: int
    """Most low-priority calls in flight at once since the previous sample."""
    low_requests: int
    low_throttled: int
    high_requests: int
    high_throttled: int
    view: float | None = None
    """The worker's view: what its utilisation source read at the same moment."""
    bg_requests: int = 0
    """Calls of the simulator's bypassing background traffic so far."""
    bg_throttled: int = 0
    calibration: Calibration | None = None
    """What the view was made of (model, observed, correction), for the calibrated estimate."""


def parse_state(body: dict[str, Any], deployment: str, t: float) -> Sample:
    """A Sample from a `/sim/state` body (sim_contract.md)."""
    d = body["deployments"][deployment]
    in_flight = d.get("in_flight_by_priority", {})
    peaks = d.get("peak_in_flight_by_priority", {})
    by = d.get("by_priority", {})
    low, high = by.get("low", {}), by.get("high", {})
    background = d.get("background", {})
    return Sample(
        t=t,
        utilization=float(d["utilization"]),
        low_in_flight=int(in_flight.get("low", 0)),
        high_in_flight=int(in_flight.get("high", 0)),
        low_peak=int(peaks.get("low", in_flight.get("low", 0))),
        low_requests=int(low.get("requests", 0)),
        low_throttled=int(low.get("throttled", 0)),
        high_requests=int(high.get("requests", 0)),
        high_throttled=int(high.get("throttled", 0)),
        bg_requests=int(background.get("requests", 0)),
        bg_throttled=int(background.get("throttled", 0)),
    )


@dataclass
class Sampler:
    """Background task sampling `/sim/state?reset_peaks=1` every `interval_s`."""

    client: httpx2.AsyncClient
    sim_url: str
    deployment: str
    t0: float
    interval_s: float = 0.1
    clock: Callable[[], float] = time.time
    view: Callable[[], Awaitable[Reading | None]] | None = None
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    _task: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __repr__(self) -> str:
        return f"<Sampler samples={len(self.samples)} errors={self.errors}>"

    @property
    def latest(self) -> Sample | None:
        """The newest sample, if any."""
        return self.samples[-1] if self.samples else None

    async def sample_once(self) -> Sample | None:
        """Take one sample now; None (and a counted error) when the simulator did not answer."""
        try:
            response = await self.client.get(
                f"{self.sim_url}/sim/state", params={"reset_peaks": "1"}, timeout=2.0
            )
            response.raise_for_status()
            sample = parse_state(response.json(), self.deployment, self.clock() - self.t0)
        except (httpx2.HTTPError, KeyError, ValueError) as exc:
            self.errors += 1
            log.debug("sample_failed", error=str(exc))
            return None
        if self.view is not None:
            reading = await self.view()
            if reading is not None:
                sample = replace(sample, view=reading.value, calibration=reading.calibration)
        self.samples.append(sample)
        return sample

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            started = self.clock()
            await self.sample_once()
            delay = max(0.0, self.interval_s - (self.clock() - started))
            await pause(delay, stopping)

    def start(self) -> None:
        """Start sampling in the background."""
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._loop(self._stopping), name="sampler")

    async def stop(self) -> None:
        """Stop sampling and take one final sample.

        Stops through an event rather than cancellation: a client library that turns a
        cancelled read into its own error would otherwise keep the loop running.
        """
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None
        await self.sample_once()
