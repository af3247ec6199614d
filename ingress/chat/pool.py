"""Which member of a PTU pool a high-priority call goes to, and the chain behind it.

The choice is `core.pools.rank` on each member's calibrated estimate (the Redis-held
estimate every process feeds), its upper threshold and capacity, and its chat or
Responses breaker. Readings are cached for `refresh_s` (no Redis round trip per call on
the interactive path), read under the interactive path's `FailOpen` deadline; a member
whose reading is older than the estimate's max age, or cannot be read, ranks as unknown.
Between two refreshes every call routed to a member adds its own admission charge to
that member's cached level, so a burst spreads over the members instead of piling onto
the one that had the most room a moment ago.

The chain: the members in ranked order, then the first member's own `spillover` chain
(members and duplicates left out): the existing spillover walk (`chat.spillover`) then
moves on at a 429, 408, 5xx or open breaker, as it does for one deployment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from ingress.chat.targets import Target
from orchestrator.breaker.shared import SharedBreaker, Surface
from orchestrator.core.errors import PTUError
from orchestrator.core.fail_open import FailOpen
from orchestrator.core.pools import MemberView, rank
from orchestrator.core.settings import Settings
from orchestrator.utilisation.base import Reading, UtilisationSource

log = structlog.get_logger(__name__)

REFRESH_S = 0.25
"""How long a member's cached reading stands in for the estimate."""


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """What the choice needs of a member that never changes: capacity, threshold, weight."""

    capacity_tpm: float
    upper: float
    window_tokens: float
    """Input-token equivalents that make 100 % (one estimate window of capacity)."""
    output_weight: float


@dataclass(slots=True)
class _Cached:
    reading: Reading | None
    read_at: float
    added: float = 0.0
    """Charges of calls routed here since the reading (fraction of capacity)."""


class PoolRouter:
    """Ranks a pool's members for each high-priority call."""

    def __init__(
        self,
        settings: Settings,
        source: UtilisationSource | None,
        breakers: Mapping[tuple[str, Surface], SharedBreaker],
        *,
        guard: FailOpen | None = None,
        clock: Callable[[], float] = time.time,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._source = source
        self._breakers = breakers
        self._guard = guard or FailOpen()
        self._clock = clock
        self._refresh_s = refresh_s
        self._specs: dict[str, MemberSpec] = {}
        for pool in settings.pools.values():
            for d in pool.members:
                _, upper, _ = settings.thresholds(d)
                window = d.capacity_tpm / 60.0 * settings.estimate_window_s
                self._specs[d.name] = MemberSpec(d.capacity_tpm, upper, window, d.weight)
        self._cache: dict[str, _Cached] = {}
        self._reads: dict[str, asyncio.Task[Reading | None]] = {}

    async def chain(
        self, pool: Target, surface: Surface, prompt_tokens: int, max_tokens: int
    ) -> list[Target]:
        """The targets a call to `pool` tries, in order (see the module docstring)."""
        members = {m.name: m for m in pool.members}
        views = [await self._view(name, surface) for name in members]
        order = [members[name] for name in rank(views)]
        first = order[0]
        self._charge(first.name, prompt_tokens, max_tokens)
        taken = set(members)
        tail = []
        for t in first.spillover:
            if t.name not in taken:
                taken.add(t.name)
                tail.append(t)
        return [*order, *tail]

    async def _view(self, name: str, surface: Surface) -> MemberView:
        spec = self._specs[name]
        breaker = self._breakers.get((name, surface))
        is_open = breaker is not None and breaker.state == "open" and breaker.open_left() > 0
        cached = await self._cached(name)
        utilisation = None
        now = self._clock()
        max_age = self._source.max_age_s if self._source is not None else 0.0
        if cached.reading is not None and cached.reading.age(now) <= max_age:
            utilisation = cached.reading.value + cached.added
        return MemberView(name, spec.capacity_tpm, spec.upper, utilisation, is_open)

    async def _cached(self, name: str) -> _Cached:
        cached = self._cache.get(name)
        if cached is not None and self._clock() - cached.read_at < self._refresh_s:
            return cached
        task = self._reads.get(name)
        if task is None:  # one read per member at a time, however many calls wait for it
            task = asyncio.ensure_future(self._read(name))
            self._reads[name] = task
            task.add_done_callback(lambda _t: self._reads.pop(name, None))
        reading = await asyncio.shield(task)
        cached = self._cache.get(name)
        if cached is None or cached.reading is not reading:
            cached = self._cache[name] = _Cached(reading, self._clock())
        return cached

    async def _read(self, name: str) -> Reading | None:
        source = self._source
        if source is None:
            return None

        async def read() -> Reading | None:
            try:
                return await source.read(name)
            except PTUError as exc:  # no estimate yet, or Redis unreachable: unknown
                log.debug("pool_reading_unavailable", deployment=name, error=repr(exc))
                return None

        return await self._guard.call("pool reading", read, None)

    def _charge(self, name: str, prompt_tokens: int, max_tokens: int) -> None:
        cached, spec = self._cache.get(name), self._specs[name]
        if cached is not None and spec.window_tokens > 0:
            tokens = prompt_tokens + max_tokens * spec.output_weight
            cached.added += tokens / spec.window_tokens

    def __repr__(self) -> str:
        levels = " ".join(
            f"{n}={'?' if c.reading is None else round(c.reading.value + c.added, 3)}"
            for n, c in self._cache.items()
        )
        return f"<PoolRouter members={len(self._specs)} {levels}>"
