"""The utilisation contract: how full a PTU deployment is, how fresh that is, and what feeds it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orchestrator.core.schemas import TokenEvent


@dataclass(frozen=True, slots=True)
class Calibration:
    """How a calibrated estimate was made: the model, what the deployment said, the correction."""

    model: float
    """The token-event model alone (fraction), under the meaning of utilisation learnt
    (`model_kind`: our bucket, a bucket half the size, the sliding window)."""
    correction: float
    """What the deployment's own signals add to the model now (fraction; may be negative)."""
    correction_age_s: float | None
    """Seconds since the newest signal behind the correction (None: never corrected)."""
    observed: float | None
    """The newest utilisation the deployment reported (header), if any."""
    observed_age_s: float | None
    throttled_s: float = 0.0
    """Seconds the deployment still refuses calls after a 429 (the reading is >= 100 %)."""
    model_kind: str = "bucket"
    """What the utilisation header means, as learnt: the hypothesis that predicts it best
    (`lag 3s`: the level 3 s before; `avg 5s`: an average over 5 s; `rate`: a rate over the
    window), or `bucket` while no header was seen."""
    unseen: float = 0.0
    """Share of capacity used by load the model cannot see, as learnt from saturations and
    Azure Monitor minutes (other applications, a capacity below the table)."""
    uncertainty: float | None = None
    """The filter's own uncertainty about the header's estimate (a standard deviation)."""
    trusted: bool = False
    """Whether the header has predicted well enough to lower the reading."""
    ahead: float | None = None
    """Under a window meaning, the highest level expected soon if no low-priority call starts
    (charges stay a window while the traffic we do not control goes on); None: as now."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A utilisation value (0..1, may exceed 1) and when it was true."""

    value: float
    observed_at: float
    """Epoch seconds at which `value` described the deployment."""
    source: str
    calibration: Calibration | None = None
    """How the estimate source built `value` (None for other sources or calibration off)."""

    @property
    def steer(self) -> float:
        """What the throttle steers by: the value, or where the deployment is going if higher."""
        ahead = None if self.calibration is None else self.calibration.ahead
        return self.value if ahead is None else max(self.value, ahead)

    def age(self, now: float) -> float:
        """Seconds since the value was true."""
        return max(0.0, now - self.observed_at)


class UtilisationSource(Protocol):
    """Reports a deployment's utilisation; stale readings are the caller's to judge."""

    max_age_s: float
    """Readings older than this must be treated as unknown (fail closed)."""

    async def read(self, deployment: str) -> Reading:
        """The newest reading for `deployment`.

        Raises UtilisationUnavailable when there is none at all.
        """

    async def close(self) -> None:
        """Release clients and connections."""


class TokenRecorder(Protocol):
    """Where token events go: the worker's and the ingress's calls feed the estimate through it.

    Implemented by `EstimateStore.record` (and by test doubles). Recording is
    idempotent per (request id, phase); a recorder that cannot reach its store
    raises a `PTUError` (`UtilisationUnavailable`), which callers log and pass:
    the estimate is a hint, and a lost event must never fail a call.
    """

    async def record(self, event: TokenEvent) -> None:
        """Fold one event into the utilisation estimate."""
