"""Per-minute Azure Monitor metrics for the simulated resource, with ingestion lag.

The data plane feeds raw observations (utilisation samples, token counts, request
status codes); `MetricsRecorder.query` answers with PT1M points aligned to UTC
minutes. A minute becomes visible only once `minute_end + lag_s <= now`, like the
real service, whose ingestion latency is documented as 30 s to 15 min.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

GRAIN_S = 60
NAMESPACE = "Microsoft.CognitiveServices/accounts"
DEPLOYMENT_DIM = "ModelDeploymentName"
STATUS_DIM = "StatusCode"
MAX_POINTS = 1440
"""Largest number of PT1M points one query may ask for (one day)."""


class MetricQueryError(ValueError):
    """A query the real service would refuse (unknown metric or dimension, bad range)."""


@dataclass(frozen=True, slots=True)
class MetricDefinition:
    """What Azure Monitor publishes about one metric."""

    name: str
    unit: str
    primary_aggregation: str
    dimensions: tuple[str, ...]
    zero_when_empty: bool
    """Count metrics report 0 for a visible minute with no data; percentages report nothing."""


METRICS: dict[str, MetricDefinition] = {
    d.name: d
    for d in (
        MetricDefinition(
            "AzureOpenAIProvisionedManagedUtilizationV2",
            "Percent",
            "Average",
            (DEPLOYMENT_DIM,),
            zero_when_empty=False,
        ),
        MetricDefinition(
            "ProcessedPromptTokens", "Count", "Total", (DEPLOYMENT_DIM,), zero_when_empty=True
        ),
        MetricDefinition(
            "GeneratedTokens", "Count", "Total", (DEPLOYMENT_DIM,), zero_when_empty=True
        ),
        MetricDefinition(
            "AzureOpenAIRequests",
            "Count",
            "Total",
            (DEPLOYMENT_DIM, STATUS_DIM),
            zero_when_empty=True,
        ),
    )
}


@dataclass(slots=True)
class _Agg:
    """Running aggregate of the values observed in one minute."""

    total: float = 0.0
    count: int = 0
    minimum: float = float("inf")
    maximum: float = float("-inf")

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)

    def merge(self, other: _Agg) -> None:
        self.total += other.total
        self.count += other.count
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)


@dataclass(frozen=True, slots=True)
class MinutePoint:
    """One PT1M data point; values are None while the minute is not visible or has no data."""

    time_stamp: float
    """Epoch seconds of the minute's start (UTC-aligned)."""
    average: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    total: float | None = None
    count: float | None = None


@dataclass(frozen=True, slots=True)
class Series:
    """One timeseries: the dimension values it is split by and its points."""

    dimensions: tuple[tuple[str, str], ...]
    points: tuple[MinutePoint, ...] = field(default=())


DimensionFilter = Mapping[str, Collection[str] | None]
"""Dimension name -> allowed values (None = every value, Azure's `eq '*'`)."""

_Key = tuple[str, ...]


def minute_floor(t: float) -> int:
    """Start (epoch s) of the UTC minute containing `t`."""
    return int(t // GRAIN_S) * GRAIN_S


class MetricsRecorder:
    """Holds the last few hours of per-minute metrics for every deployment.

    Minutes that ended more than `retention_s` before the newest observation are dropped,
    so memory stays bounded however long the simulator runs.
    """

    def __init__(self, lag_s: float, retention_s: float = 3 * 3600.0) -> None:
        self.lag_s = lag_s
        self.retention_s = retention_s
        # minute start -> metric name -> dimension values (in definition order) -> aggregate
        self._minutes: dict[int, dict[str, dict[_Key, _Agg]]] = {}

    def __repr__(self) -> str:
        return (
            f"<MetricsRecorder lag_s={self.lag_s:g} minutes={len(self._minutes)} "
            f"deployments={len(self.deployments())}>"
        )

    # -- feeding --------------------------------------------------------------------------

    def sample(self, now: float, deployment: str, utilization_pct: float) -> None:
        """Record one utilisation observation (percent) of a provisioned deployment."""
        self._add(
            now, "AzureOpenAIProvisionedManagedUtilizationV2", (deployment,), float(utilization_pct)
        )

    def add_tokens(
        self, now: float, deployment: str, prompt_tokens: int, generated_tokens: int
    ) -> None:
        """Record the tokens one response processed and generated."""
        self._add(now, "ProcessedPromptTokens", (deployment,), float(prompt_tokens))
        self._add(now, "GeneratedTokens", (deployment,), float(generated_tokens))

    def add_request(self, now: float, deployment: str, status_code: int) -> None:
        """Record one request and the status code it was answered with."""
        self._add(now, "AzureOpenAIRequests", (deployment, str(status_code)), 1.0)

    def _add(self, now: float, metric: str, key: _Key, value: float) -> None:
        minute = minute_floor(now)
        metrics = self._minutes.get(minute)
        if metrics is None:
            metrics = self._minutes[minute] = {}
            self._prune(now)
        metrics.setdefault(metric, {}).setdefault(key, _Agg()).add(value)

    def clear(self) -> None:
        """Forget every minute (a fresh resource; `POST /sim/reset?metrics=1`)."""
        self._minutes.clear()

    def _prune(self, now: float) -> None:
        cutoff = now - self.retention_s
        for minute in [m for m in self._minutes if m + GRAIN_S <= cutoff]:
            del self._minutes[minute]

    # -- querying -------------------------------------------------------------------------

    def deployments(self) -> list[str]:
        """Every deployment with retained data, sorted."""
        names = {
            key[0]
            for metrics in self._minutes.values()
            for keys in metrics.values()
            for key in keys
        }
        return sorted(names)

    def visible(self, now: float, minute_start: float) -> bool:
        """Whether the minute starting at `minute_start` has been ingested by `now`."""
        return minute_start + GRAIN_S + self.lag_s <= now

    def query(
        self,
        now: float,
        metric: str,
        start: float,
        end: float,
        dimension_filter: DimensionFilter | None = None,
        split: Collection[str] | None = None,
    ) -> list[Series]:
        """PT1M points of `metric` for minutes in [start, end) as the service shows them at `now`.

        `dimension_filter` restricts the data; the result has one series per combination of
        values of the `split` dimensions (default: the filtered ones, Azure's `$filter`
        semantics), or one aggregated series when nothing is split.
        """
        definition = METRICS.get(metric)
        if definition is None:
            raise MetricQueryError(f"Metric {metric} is not defined for namespace {NAMESPACE}")
        flt = dict(dimension_filter or {})
        names = tuple(flt if split is None else split)
        for dim in (*flt, *names):
            if dim not in definition.dimensions:
                raise MetricQueryError(f"Dimension {dim} is not defined for metric {metric}")
        minutes = _minute_range(start, end)
        per_minute: list[dict[_Key, _Agg] | None] = []
        groups: set[_Key] = set(_explicit_groups({d: flt.get(d) for d in names}))
        for minute in minutes:
            if not self.visible(now, minute):
                per_minute.append(None)
                continue
            stored = self._minutes.get(minute, {}).get(metric, {})
            merged = _merge(stored, definition, flt, names)
            groups.update(merged)
            per_minute.append(merged)
        if not names:
            groups = {()}
        return [
            Series(
                dimensions=tuple(zip(names, group, strict=True)),
                points=tuple(
                    _point(definition, minute, None if aggs is None else aggs.get(group), aggs)
                    for minute, aggs in zip(minutes, per_minute, strict=True)
                ),
            )
            for group in sorted(groups)
        ]


def _merge(
    stored: Mapping[_Key, _Agg],
    definition: MetricDefinition,
    flt: Mapping[str, Collection[str] | None],
    names: tuple[str, ...],
) -> dict[_Key, _Agg]:
    """Aggregates of one minute that pass the filter, merged per split group."""
    checks = [(definition.dimensions.index(d), v) for d, v in flt.items() if v is not None]
    positions = [definition.dimensions.index(d) for d in names]
    merged: dict[_Key, _Agg] = {}
    for key, agg in stored.items():
        if any(key[p] not in allowed for p, allowed in checks):
            continue
        merged.setdefault(tuple(key[p] for p in positions), _Agg()).merge(agg)
    return merged


def _minute_range(start: float, end: float) -> list[int]:
    if end <= start:
        raise MetricQueryError("The timespan end must be after its start")
    first = minute_floor(start)
    count = math.ceil((end - first) / GRAIN_S)
    if count > MAX_POINTS:
        raise MetricQueryError(
            f"The timespan asks for {count} points at PT1M; at most {MAX_POINTS} are allowed"
        )
    return [first + i * GRAIN_S for i in range(count)]


def _explicit_groups(flt: Mapping[str, Collection[str] | None]) -> Iterable[_Key]:
    """Series a filter names explicitly exist even before any data arrives."""
    if not flt or any(values is None for values in flt.values()):
        return []
    return [tuple(g) for g in itertools.product(*(sorted(v or ()) for v in flt.values()))]


def _point(
    definition: MetricDefinition,
    minute: int,
    agg: _Agg | None,
    visible_aggs: Mapping[_Key, _Agg] | None,
) -> MinutePoint:
    stamp = float(minute)
    if agg is not None and agg.count:
        return MinutePoint(
            time_stamp=stamp,
            average=agg.total / agg.count,
            minimum=agg.minimum,
            maximum=agg.maximum,
            total=agg.total,
            count=float(agg.count),
        )
    if visible_aggs is not None and definition.zero_when_empty:
        return MinutePoint(time_stamp=stamp, total=0.0, count=0.0)
    return MinutePoint(time_stamp=stamp)
