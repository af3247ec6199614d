"""The Azure Monitor minute as the estimate's slow signal, with or without the header.

With `PTU_AZURE_MONITOR_ENDPOINT` and `PTU_AZURE_RESOURCE_ID` set (and `PTU_CALIBRATION=auto`),
the estimate polls `AzureOpenAIProvisionedManagedUtilizationV2` (the minute's Maximum) in the
background and folds every new minute into the deployment's shared state (`filter.step` under
the store's compare-and-set): when the deployment was fuller than our bucket-with-inflow's
own peak of that minute, the unseen inflow was too low and grows by the difference, and the
level missed is given back to the bucket-with-inflow unless a saturation has told the level
since. It is minutes old by nature, so it only ever raises them; the inflow then fades slowly.
Every process polling folds the same minute at most once (the state keeps the newest minute).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.utilisation.base import UtilisationSource

log = structlog.get_logger(__name__)

MINUTE_S = 60.0

Fold = Callable[[str, float, float], Awaitable[float | None]]
"""(deployment, minute start in epoch s, the minute's value) -> the drift stored, or None."""


class MonitorDrift:
    """Polls the per-minute metric (at most every `poll_s`) and folds new minutes in."""

    def __init__(
        self,
        source: UtilisationSource,
        deployments: Sequence[str],
        *,
        poll_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self._source = source
        self._names = list(deployments)
        self._poll_s = poll_s
        self._clock = clock
        self._folded: dict[str, float] = {}
        self._polled_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    async def poll(self, fold: Fold) -> dict[str, float]:
        """Read the newest minute of every deployment and fold those not folded yet.

        Returns the drift stored per deployment folded now. A deployment without a minute,
        or a failed fold, is skipped (logged): the header and 429s still calibrate.
        """
        folded: dict[str, float] = {}
        for name in self._names:
            try:
                reading = await self._source.read(name)
            except UtilisationUnavailable as exc:
                log.debug("monitor_drift_no_minute", deployment=name, error=str(exc))
                continue
            if self._folded.get(name) == reading.observed_at:
                continue
            try:
                drift = await fold(name, reading.observed_at - MINUTE_S, reading.value)
            except UtilisationUnavailable as exc:
                log.warning("monitor_drift_fold_failed", deployment=name, error=str(exc))
                continue
            self._folded[name] = reading.observed_at
            if drift is not None:
                folded[name] = drift
                log.debug("monitor_drift_folded", deployment=name, drift=round(drift, 4))
        return folded

    def kick(self, fold: Fold) -> None:
        """Start a background poll when one is due and none is running (never blocks)."""
        now = self._clock()
        if self._polled_at is not None and now - self._polled_at < self._poll_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._polled_at = now
        self._task = asyncio.create_task(self._poll_logged(fold))

    async def _poll_logged(self, fold: Fold) -> None:
        try:
            await self.poll(fold)
        except Exception as exc:  # a background poll must never take its reader down
            log.warning("monitor_drift_poll_failed", error=repr(exc)[:500])

    async def close(self) -> None:
        """Stop a running poll and release the metric source."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._source.close()

    def __repr__(self) -> str:
        return f"<MonitorDrift deployments={','.join(self._names)} poll_s={self._poll_s:g}>"
