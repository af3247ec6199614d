"""The in-memory twin of the utilisation sources: readings set by hand (tests, demos)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from orchestrator.core.errors import UtilisationUnavailable
from orchestrator.utilisation.base import Reading

SOURCE = "static"


class StaticSource:
    """A `UtilisationSource` whose readings are whatever was last `set`."""

    def __init__(
        self,
        values: Mapping[str, float] | None = None,
        *,
        max_age_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._values: dict[str, tuple[float, float | None]] = {}
        self.reads = 0
        """How many times `read` was called (lets tests check polling)."""
        for name, value in (values or {}).items():
            self.set(name, value)

    def set(self, deployment: str, value: float, *, observed_at: float | None = None) -> None:
        """Report `value` for `deployment`; without `observed_at` it is always fresh."""
        self._values[deployment] = (value, observed_at)

    def clear(self, deployment: str) -> None:
        """Make `read(deployment)` raise UtilisationUnavailable."""
        self._values.pop(deployment, None)

    async def read(self, deployment: str) -> Reading:
        """The value last set; raises UtilisationUnavailable when none is set."""
        self.reads += 1
        try:
            value, observed_at = self._values[deployment]
        except KeyError:
            raise UtilisationUnavailable(f"static: no reading for {deployment!r}") from None
        return Reading(value, self._clock() if observed_at is None else observed_at, SOURCE)

    async def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        shown = " ".join(f"{n}={v:.2f}" for n, (v, _) in self._values.items())
        return f"<StaticSource {shown}>"
