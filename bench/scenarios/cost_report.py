"""`ptu bench cost`'s output: results.json, results.md (per request, commands by name,
targets) and cost.png (throughput by concurrency, commands per request by name)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bench.report.tables import markdown_table
from bench.scenarios.cost_measures import top_commands

SHOWN_COMMANDS = 20
PLOTTED_COMMANDS = 10


def label(row: Mapping[str, Any]) -> str:
    """A phase's short name: the measure and, for high priority, its concurrency."""
    if row["measure"].startswith("high"):
        return f"high, {row['concurrency']} concurrent"
    return str(row["measure"])


def per_request_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per phase: throughput beside the direct limit, cost per request."""
    shown = [
        {
            "per request": row["measure"],
            "concurrent": row["concurrency"],
            "requests": row["requests"],
            "per s": row["per_s"],
            "direct per s": row.get("direct_per_s"),
            "errors": row["errors"],
            "fail-opens": row.get("fail_opens"),
            "Redis commands": row["redis_commands"],
            "Redis CPU ms": row["redis_cpu_ms"],
            "process": row["process"],
            "process CPU ms": row["process_cpu_ms"],
        }
        for row in rows
    ]
    return markdown_table(shown, list(shown[0]))


def commands_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Redis commands per request by name, one column per phase."""
    names = top_commands(rows, SHOWN_COMMANDS)
    lines = []
    for name in names:
        line: dict[str, Any] = {"command": name}
        for row in rows:
            line[label(row)] = row["commands"].get(name)
        lines.append(line)
    rest: dict[str, Any] = {"command": "other"}
    for row in rows:
        others = [v for n, v in row["commands"].items() if n not in names and v is not None]
        rest[label(row)] = round(sum(others), 2) if others else None
    return markdown_table([*lines, rest], ["command", *(label(row) for row in rows)])


def scale_table(result: Mapping[str, Any]) -> str:
    """Requests/s of one ingress process and of `--workers 2`; calls/s of 1, 2, 4 workers."""
    shown: list[dict[str, Any]] = []
    ingress = result.get("ingress_scale") or {}
    for arm, processes in (("one", "ptu ingress"), ("two", "ptu ingress --workers 2")):
        row = ingress.get(arm)
        if row is not None:
            shown.append(
                {
                    "processes": processes,
                    "concurrent": ingress["concurrency"],
                    "per s": row["per_s"],
                    "errors": row["errors"],
                    "CPU ms per request": row["process_cpu_ms"],
                }
            )
    for row in result.get("worker_scale") or []:
        shown.append(
            {
                "processes": f"{row['workers']} x ptu worker",
                "concurrent": None,
                "per s": row["per_s"],
                "errors": None,
                "CPU ms per request": None,
            }
        )
    if not shown:
        return "(not measured)"
    return markdown_table(shown, list(shown[0]))


def targets_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The issue's targets: measured, target, met or missed."""
    shown = [
        {
            "target": row["target"],
            "measured": row["measured"],
            "target value": row["target_value"],
            "result": row["result"],
        }
        for row in rows
    ]
    return markdown_table(shown, ["target", "measured", "target value", "result"])


def write(result: Mapping[str, Any], out: Path) -> None:
    """results.json, results.md and cost.png of one run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    rows, cfg = result["rows"], result["config"]
    idle = "; ".join(
        f"{i['processes']} {i['commands_per_s']} commands/s, {i['process_cpu_ms_per_s']} ms CPU/s"
        f" (Redis {i['redis_cpu_ms_per_s']} ms CPU/s)"
        for i in result["idle"]
    )
    low = rows[-1]
    lines = [
        "# bench cost",
        "",
        "## Per request",
        "",
        per_request_table(rows),
        "",
        f"- high priority: closed-loop clients for {cfg['step_s']:g} s per concurrency, "
        "first straight to the simulator (`direct per s`: this client's limit on this "
        "machine), then through one ingress process; instant upstream (TTFT 0, TBT 0)",
        f"- enqueue: {cfg['enqueue_requests']} low-priority POSTs from "
        f"{cfg['enqueue_concurrency']} clients to the same ingress, each answered 202",
        f"- low priority: one worker (`PTU_MAX_CONCURRENCY={cfg['worker_concurrency']}`) "
        f"draining that queue, {low['requests']} calls counted by the simulator; "
        f"results written {low['results_written']} of {low['queued']}",
        "- Redis: `INFO commandstats` and `INFO cpu` (`used_cpu_sys` + `used_cpu_user`) "
        "before and after each phase; commands run inside scripts count too",
        "- process CPU: /proc/PID/stat utime + stime of the ingress or the worker; "
        "each phase ends once that process is idle again",
        "- fail-opens: Redis calls of the interactive path the ingress went on without "
        "(`core/fail_open`: an error, the deadline, or the cool-down after one); a write "
        "given up on runs no command, so a count above 0 flatters that row's commands",
        f"- idle, before the phases (spread over the requests, not subtracted): {idle}",
        "",
        "## Redis commands per request, by name",
        "",
        commands_table(rows),
        "",
        "## Scale-out",
        "",
        scale_table(result),
        "",
        f"- ingress: closed-loop clients for {cfg['step_s']:g} s through one process, then "
        "through a fresh `ptu ingress --workers 2` (CPU: the whole process tree); workers: "
        f"each count drains {cfg.get('scale_calls')} calls of one queue, started together "
        "(the deployment held paused until the last is up), calls/s counted by the simulator",
        "",
        "## Targets",
        "",
        targets_table(result["targets"]),
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "cost.png")


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Left: requests/s by concurrency, ingress and direct; right: commands per request."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    high = [row for row in rows if row["measure"].startswith("high")]
    levels = [row["concurrency"] for row in high]
    left.plot(levels, [row["direct_per_s"] or 0 for row in high], "o-", label="direct")
    left.plot(levels, [row["per_s"] or 0 for row in high], "o-", label="one ingress")
    worker = rows[-1]
    if worker.get("per_s"):
        left.axhline(worker["per_s"], color="grey", ls="--", label="one worker, calls/s")
    left.set_xscale("log", base=2)
    left.set_xticks(levels, [str(c) for c in levels])
    left.set_xlabel("concurrent clients")
    left.set_ylabel("requests/s")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    names = top_commands(rows, PLOTTED_COMMANDS)
    labels = [label(row) for row in rows]
    base = [0.0] * len(rows)
    for name in [*names, "other"]:
        widths = [
            (row["commands"].get(name) or 0.0)
            if name != "other"
            else sum(v or 0.0 for n, v in row["commands"].items() if n not in names)
            for row in rows
        ]
        right.barh(labels, widths, left=base, label=name)
        base = [b + w for b, w in zip(base, widths, strict=True)]
    right.set_xlabel("Redis commands per request")
    right.invert_yaxis()
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
