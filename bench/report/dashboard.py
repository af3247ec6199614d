"""Live view of a run: a rich dashboard on a terminal, a status line every few seconds elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from bench.harness.runner import LiveRun
from bench.report.metrics import percentile
from orchestrator.utilisation.base import Calibration

BAR_WIDTH = 40
RECENT_S = 10.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The numbers the dashboard shows at one moment."""

    t: float
    duration_s: float
    utilization: float
    low_in_flight: int
    queued: int
    completed: int
    batch: int
    hp_calls: int
    hp_429: int
    hp_p50_ms: float | None
    hp_p95_ms: float | None
    in_burst: bool
    estimate: float | None = None
    """What the worker's utilisation source reads now."""
    calibration: Calibration | None = None


def snapshot(live: LiveRun, burst: tuple[float, float]) -> Snapshot:
    """What the run looks like now."""
    run, t = live.run, live.clock.offset()
    latest = live.sampler.latest
    low = latest.low_in_flight if latest else 0
    completed = sum(1 for r in run.lp if r.completed_at is not None)
    accepted = sum(1 for r in run.lp if r.request_id is not None)
    recent = [r.latency_s * 1000 for r in run.hp if r.status == 200 and r.at >= t - RECENT_S]
    return Snapshot(
        t=t,
        duration_s=live.duration_s,
        utilization=latest.utilization if latest else 0.0,
        low_in_flight=low,
        queued=max(0, accepted - completed - low),
        completed=completed,
        batch=len(run.lp),
        hp_calls=len(run.hp),
        hp_429=sum(1 for r in run.hp if r.status == 429),
        hp_p50_ms=percentile(recent, 50),
        hp_p95_ms=percentile(recent, 95),
        in_burst=burst[0] <= t < burst[1],
        estimate=latest.view if latest else None,
        calibration=latest.calibration if latest else None,
    )


def utilisation_bar(value: float, lower: float, upper: float, width: int = BAR_WIDTH) -> Text:
    """A bar from 0 to 100 % with the thresholds marked `|`."""
    filled = max(0, min(width, round(value * width)))
    colour = "red" if value >= upper else "yellow" if value > lower else "green"
    marks = {round(lower * width): "|", round(upper * width): "|"}
    bar = Text()
    for i in range(width):
        if i in marks:
            bar.append(marks[i], style="bold white")
        else:
            bar.append("█" if i < filled else "░", style=colour if i < filled else "dim")
    return bar


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def render(s: Snapshot, title: str, lower: float, upper: float) -> Group:
    """The dashboard for one snapshot."""
    phase = "[bold orange3]interactive burst[/]" if s.in_burst else "steady interactive load"
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", justify="right")
    grid.add_column()
    util = utilisation_bar(s.utilization, lower, upper)
    util.append(f" {s.utilization:4.2f}")
    grid.add_row("true utilisation", util)
    if s.estimate is not None:
        est = utilisation_bar(s.estimate, lower, upper)
        est.append(f" {s.estimate:4.2f}")
        grid.add_row("estimate", est)
    if s.calibration is not None:
        grid.add_row("calibration", calibration_line(s.calibration))
    grid.add_row("low in flight", Text("▮" * s.low_in_flight + f"  {s.low_in_flight}"))
    grid.add_row("queue", f"{s.queued} waiting, {s.completed}/{s.batch} completed")
    grid.add_row(
        "high priority",
        f"{s.hp_calls} calls, last {RECENT_S:g} s p50 {_ms(s.hp_p50_ms)} "
        f"p95 {_ms(s.hp_p95_ms)}, 429s {s.hp_429}",
    )
    header = Text.from_markup(f"[bold]{title}[/]  t = {s.t:3.0f} s / {s.duration_s:g} s  {phase}")
    legend = Text(f"  | marks the lower ({lower:g}) and upper ({upper:g}) thresholds", style="dim")
    return Group(header, grid, legend)


def calibration_line(c: Calibration) -> str:
    """Model, observed (with the header meaning learnt), correction and unseen share."""
    observed = "-" if c.observed is None else f"{c.observed:.2f}"
    if c.model_kind != "bucket":  # the header meaning learnt
        observed += f" ({c.model_kind})"
    return (
        f"model {c.model:.2f}  observed {observed}  correction {c.correction:+.2f}  "
        f"unseen traffic {c.unseen:.0%}"
    )


def status_line(s: Snapshot) -> str:
    """The same numbers on one line, for logs and non-terminals."""
    return (
        f"t={s.t:4.0f}s util={s.utilization:4.2f} low_in_flight={s.low_in_flight} "
        f"queued={s.queued} completed={s.completed}/{s.batch} hp_calls={s.hp_calls} "
        f"hp_p95={_ms(s.hp_p95_ms)} hp_429={s.hp_429}{' burst' if s.in_burst else ''}"
        + ("" if s.calibration is None else f" {calibration_line(s.calibration)}")
    )


@dataclass
class Dashboard:
    """Shows a LiveRun as it goes; use as a context manager and pass `tick` to `drive`."""

    title: str
    lower: float
    upper: float
    burst: tuple[float, float]
    console: Console = field(default_factory=Console)
    line_every_s: float = 10.0
    _live: Live | None = None
    _last_line: float = -1e9

    def __enter__(self) -> Dashboard:
        if self.console.is_terminal and not self.console.is_dumb_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    async def tick(self, live: LiveRun) -> None:
        """Redraw (terminal) or print a status line every `line_every_s` (elsewhere)."""
        s = snapshot(live, self.burst)
        if self._live is not None:
            self._live.update(render(s, self.title, self.lower, self.upper), refresh=True)
        elif s.t - self._last_line >= self.line_every_s:
            self._last_line = s.t
            self.console.print(status_line(s), highlight=False, soft_wrap=True)


def summary_table(row: dict[str, Any], keys: Sequence[tuple[str, str]]) -> Table:
    """A two-column rich table (measure, value) of one result row; fits narrow terminals."""
    table = Table(show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, label in keys:
        value = row.get(key)
        table.add_row(label, "-" if value is None else str(value))
    return table
