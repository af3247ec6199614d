"""Charge-aware admission: a low-priority call starts only if its own charge still fits.

The throttle curve limits how many calls run; it does not see how big each is. On a
small deployment (6,000 TPM) ten 1,000-token calls admitted at once would overfill
the bucket although the count is within the limit. So before a call starts, its
admission charge, `prompt + max_tokens x output_weight` normalised by the
deployment's window capacity (`capacity_tpm x window_s / 60`, the level that reads
100 %), is added to the current reading: if that would cross the upper threshold the
call waits for the bucket to drain. A call bigger than the whole headroom still runs
once the bucket is (nearly) empty, or it could never run at all.

Within one worker, the charges admitted since the last reading are added to it, so
concurrent calls cannot all pass on the same reading.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from orchestrator.core.settings import DeploymentConfig
from orchestrator.utilisation.base import Reading

log = structlog.get_logger(__name__)

EMPTY = 0.02
"""A reading at or below this counts as an empty bucket: any single call may start."""


def charge_of(prompt_tokens: int, max_tokens: int, weight: float, window_capacity: float) -> float:
    """A call's admission charge as a fraction of the deployment's window capacity."""
    if window_capacity <= 0:
        return 0.0
    return (prompt_tokens + max_tokens * weight) / window_capacity


def admits(utilisation: float, charge: float, upper: float) -> bool:
    """True when a call of `charge` may start at `utilisation` under threshold `upper`."""
    return utilisation + charge <= upper or utilisation <= EMPTY


class Admission:
    """Waits until a call's charge fits under the upper threshold of one deployment.

    `current` gives the throttle's reading (cached, re-read at most every poll); the
    charges this worker admitted since that reading was taken are added to it, so calls
    admitted together cannot all pass on one reading. A newer reading already contains
    them (admit events are recorded before each call) and resets the tally.
    """

    def __init__(
        self,
        deployment: DeploymentConfig,
        current: Callable[[], Awaitable[Reading | None]],
        *,
        upper: float,
        window_s: float,
        max_age_s: float,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.deployment = deployment.name
        self._current = current
        self._upper = upper
        self._weight = deployment.weight
        self._capacity = deployment.capacity_tpm * window_s / 60.0
        self._max_age_s = max_age_s
        self._poll_s = poll_s
        self._clock = clock
        self._sleep = sleep
        self._pending = 0.0
        self._pending_since: float | None = None
        self.waits = 0

    def charge(self, prompt_tokens: int, max_tokens: int) -> float:
        """The normalised admission charge of a call."""
        return charge_of(prompt_tokens, max_tokens, self._weight, self._capacity)

    async def wait(self, prompt_tokens: int, max_tokens: int) -> None:
        """Return once the call fits, and count its charge. A missing or stale reading never
        blocks here: the throttle already fails closed on it."""
        charge = self.charge(prompt_tokens, max_tokens)
        logged = False
        while True:
            reading = await self._current()
            if reading is None or reading.age(self._clock()) > self._max_age_s:
                return
            if reading.observed_at != self._pending_since:
                self._pending, self._pending_since = 0.0, reading.observed_at
            # no await between this check and the tally: concurrent calls see each other
            if admits(reading.steer + self._pending, charge, self._upper):
                self._pending += charge
                return
            if not logged:
                self.waits += 1
                logged = True
                log.debug(
                    "admission_waiting",
                    deployment=self.deployment,
                    utilisation=round(reading.steer, 4),
                    pending=round(self._pending, 4),
                    charge=round(charge, 4),
                )
            await self._sleep(self._poll_s)

    def __repr__(self) -> str:
        return f"<Admission deployment={self.deployment} upper={self._upper} waits={self.waits}>"
