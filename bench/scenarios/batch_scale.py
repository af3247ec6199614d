"""`ptu bench batch-scale`: a file at the Batch API's limits beside interactive traffic.

One ingress, one worker at full speed against an instant simulator (TTFT 0, TBT 0,
capacity it never fills), and interactive calls at a steady rate through the same
ingress all along. A file of `lines` lines of ~`line_bytes` each (100,000 x ~2 KB =
~200 MB; `--quick`: 10,000) is uploaded by another process, a batch is created
from it, and run to completion. Phases on one clock:

1. before: interactive traffic alone (the reference p50/p99);
2. upload: until the ingress answers the upload (`processed`);
3. create: from `batches.create` until every line is queued (the expansion job);
4. run: the worker starts once every line is queued, so the Redis memory of the
   queued lines is measured alone (used_memory after minus before, per line), then
   drains the batch; end-to-end lines/s runs from `batches.create` to `completed`.

The ingress's peak RSS is the kernel's high-water mark (VmHWM) of its process; the
validation and job processes it starts are sampled apart (their peak RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import redis

from bench.harness.stack import SimulatorOptions, Stack, sigterm_as_interrupt
from bench.harness.traffic import chat_url
from bench.report import tables as report
from bench.report.metrics import percentile
from orchestrator.core import keys, logs

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini-ptu",
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}


@dataclass(frozen=True, slots=True)
class BatchScaleConfig:
    """Sizes of one run."""

    lines: int = 100_000
    line_bytes: int = 2_000
    interactive_per_s: float = 20.0
    before_s: float = 15.0
    timeout_s: float = 900.0


QUICK = BatchScaleConfig(lines=10_000, before_s=8.0, timeout_s=300.0)


def write_file(path: Path, lines: int, line_bytes: int) -> int:
    """A batch input file of `lines` lines of about `line_bytes` each; returns its size."""
    with path.open("wb") as out:
        for i in range(lines):
            line = {"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": BODY["model"], "max_tokens": 16,
                             "messages": [{"role": "user", "content": ""}]}}  # fmt: skip
            pad = line_bytes - len(json.dumps(line)) - 1
            line["body"]["messages"][0]["content"] = f"q{i} " + "x" * max(0, pad - 8)  # type: ignore[index]
            out.write(json.dumps(line).encode() + b"\n")
    return path.stat().st_size


def _upload(url: str, path: str, queue: Any) -> None:
    """In another process: upload the file and create the batch, reporting times."""
    with httpx2.Client(base_url=url, timeout=600.0) as http:
        queue.put(("upload_started", time.time()))
        with open(path, "rb") as handle:
            up = http.post("/v1/files", files={"file": ("big.jsonl", handle)},
                           data={"purpose": "batch"})  # fmt: skip
        queue.put(("upload_done", time.time(), up.status_code, up.text[:300]))
        if up.status_code != 200:
            return
        body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}  # fmt: skip
        queue.put(("create_started", time.time()))
        created = http.post("/v1/batches", json=body)
        queue.put(("create_done", time.time(), created.status_code, created.text[:2000]))


def _rss_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


async def _interactive(
    url: str, rate: float, stop: asyncio.Event, log: list[tuple[float, float, int]]
) -> None:
    """Calls at a steady rate (open loop), each logged as (start, ms, status)."""
    async with httpx2.AsyncClient(timeout=30.0) as client:

        async def one() -> None:
            started = time.time()
            t0 = time.perf_counter()
            try:
                status = (
                    await client.post(url, json=BODY, headers={"x-priority": "high"})
                ).status_code
            except httpx2.HTTPError:
                status = 0
            log.append((started, (time.perf_counter() - t0) * 1000.0, status))

        tasks = set()
        next_at = time.perf_counter()
        while not stop.is_set():
            task = asyncio.ensure_future(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1.0 / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await asyncio.gather(*tasks)


def _window(log: list[tuple[float, float, int]], start: float, end: float) -> dict[str, Any]:
    ms = [m for t, m, s in log if start <= t < end and s == 200]
    errors = sum(1 for t, _, s in log if start <= t < end and s != 200)
    return {
        "calls": len(ms),
        "errors": errors,
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
    }


async def _drive(
    stack: Stack, cfg: BatchScaleConfig, path: Path, worker_env: dict[str, str]
) -> dict[str, Any]:
    ingress_pid = stack.children["ingress"].proc.pid
    # the ingress starts its validation and job processes at start-up: "before" is measured
    # once they are up and idle, not while they import
    deadline = time.time() + 60
    while len(_children(ingress_pid)) < 2 and time.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    await asyncio.sleep(3.0)
    file_bytes = path.stat().st_size  # noqa: ASYNC240 (before any traffic)
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    url = chat_url(stack.ingress_url, stack.sim.deployment)
    log: list[tuple[float, float, int]] = []
    stop = asyncio.Event()
    traffic = asyncio.create_task(_interactive(url, cfg.interactive_per_s, stop, log))
    child_peak_kb = 0
    events: dict[str, Any] = {}
    row: dict[str, Any] = {}
    try:
        t_before = time.time()
        await asyncio.sleep(cfg.before_s)
        t_before = max(t_before, time.time() - cfg.before_s + 1.0)
        mem_before = int(r.info("memory")["used_memory"])
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        uploader = context.Process(target=_upload, args=(stack.ingress_url, str(path), queue))
        uploader.start()
        batch_id = None
        deadline = time.time() + cfg.timeout_s
        queued_at = completed_at = worker_at = None
        while time.time() < deadline:
            while not queue.empty():
                event = queue.get()
                events[event[0]] = event[1:]
                if event[0] == "create_done" and event[2] == 200:
                    batch_id = json.loads(event[3])["id"]
                    events["create_status"] = json.loads(event[3])["status"]
                if event[0] in ("upload_done", "create_done") and event[2] != 200:
                    raise RuntimeError(f"{event[0]}: {event[2]} {event[3]}")
            for pid in _children(ingress_pid):
                child_peak_kb = max(child_peak_kb, _rss_kb(pid, "VmRSS") or 0)
            if batch_id is not None:
                fields: dict[str, str] = r.hgetall(keys.batch(batch_id))  # type: ignore[assignment]
                if queued_at is None and fields.get("expanded") == "1":
                    queued_at = time.time()
                    row["redis_bytes_per_line"] = round(
                        (int(r.info("memory")["used_memory"]) - mem_before) / cfg.lines
                    )
                    worker_at = time.time()
                    stack.start_worker(stack.base_env(**worker_env))
                row["completed_lines"] = int(fields.get("completed", 0))
                row["failed_lines"] = int(fields.get("failed", 0))
                if fields.get("status") in ("completed", "failed", "cancelled", "expired"):
                    completed_at = time.time()
                    row["final_status"] = fields["status"]
                    row["completed_lines"] = int(fields.get("completed", 0))
                    row["failed_lines"] = int(fields.get("failed", 0))
                    break
            await asyncio.sleep(0.1)
        else:
            row["final_status"] = f"timed out after {cfg.timeout_s:g} s"
        uploader.join(timeout=10)
    finally:
        stop.set()
        await traffic
        r.close()
    up0, up1 = events["upload_started"][0], events["upload_done"][0]
    cr0, cr1 = events["create_started"][0], events["create_done"][0]
    before = _window(log, t_before + 1.0, up0)
    upload = _window(log, up0, up1)
    create = _window(log, cr0, queued_at or cr1)
    both = _window(log, up0, queued_at or cr1)
    run = _window(log, worker_at or cr1, completed_at or time.time())
    row.update({
        "lines": cfg.lines,
        "file_mb": round(file_bytes / 1e6, 1),
        "ingress_peak_rss_mb": round((_rss_kb(ingress_pid, "VmHWM") or 0) / 1024, 1),
        "offload_peak_rss_mb": round(child_peak_kb / 1024, 1),
        "upload_accept_s": round(up1 - up0, 2),
        "create_answer_ms": round((cr1 - cr0) * 1000, 1),
        "create_status": events.get("create_status"),
        "all_queued_s": round(queued_at - cr0, 2) if queued_at else None,
        "lines_per_s_e2e": round(cfg.lines / (completed_at - cr0), 1) if completed_at else None,
        "worker_lines_per_s": round(
            row.get("completed_lines", 0) / ((completed_at or time.time()) - worker_at), 1
        ) if worker_at else None,
        "p50_before_ms": _r(before["p50"]), "p99_before_ms": _r(before["p99"]),
        "p50_upload_ms": _r(upload["p50"]), "p99_upload_ms": _r(upload["p99"]),
        "p50_create_ms": _r(create["p50"]), "p99_create_ms": _r(create["p99"]),
        "p99_upload_create_ms": _r(both["p99"]),
        "p99_ratio_upload_create": round(both["p99"] / before["p99"], 2)
        if both["p99"] and before["p99"] else None,
        "p99_run_ms": _r(run["p99"]),
        "interactive_calls": len(log),
        "interactive_errors": sum(1 for _, _, s in log if s != 200),
        "line_bytes_avg": round(file_bytes / cfg.lines),
    })  # fmt: skip
    row["redis_per_line_ratio"] = (
        round(row["redis_bytes_per_line"] / row["line_bytes_avg"], 2)
        if "redis_bytes_per_line" in row
        else None
    )
    return row


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def run_batch_scale(cfg: BatchScaleConfig, out: Path) -> dict[str, Any]:
    """One run; writes results.json and results.md."""
    out.mkdir(parents=True, exist_ok=True)
    sim = SimulatorOptions(ptus=5000, tbt_ms=0.0, ttft_ms=0.0, window_s=60.0)
    worker_env = {"PTU_MAX_CONCURRENCY": "64", "PTU_ESTIMATE_WINDOW_S": "60"}
    with sigterm_as_interrupt(), Stack(out / "run", sim) as stack:
        path = stack.workdir / "input.jsonl"
        write_file(path, cfg.lines, cfg.line_bytes)
        stack.start_redis()
        stack.start_simulator()
        env = stack.base_env(PTU_FILES_DIR=str(stack.workdir / "files"), **worker_env)
        stack.start_ingress(env)
        row = asyncio.run(
            _drive(stack, cfg, path, {**worker_env, "PTU_FILES_DIR": env["PTU_FILES_DIR"]})
        )
    row["scenario"] = "batch-scale"
    _write(row, out)
    return row


SHOWN = [
    "lines", "file_mb", "ingress_peak_rss_mb", "offload_peak_rss_mb", "upload_accept_s",
    "create_answer_ms", "all_queued_s", "redis_bytes_per_line", "redis_per_line_ratio",
    "p99_before_ms", "p99_upload_ms", "p99_create_ms", "p99_ratio_upload_create",
    "lines_per_s_e2e", "worker_lines_per_s", "final_status",
]  # fmt: skip


def _write(row: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps([row], indent=2) + "\n")
    lines = [
        "# bench batch-scale", "", report.markdown_table([row], SHOWN), "",
        f"- interactive: {row['interactive_calls']} calls at a steady rate through the same "
        f"ingress ({row['interactive_errors']} not 200); p50 before/upload/create "
        f"{row['p50_before_ms']}/{row['p50_upload_ms']}/{row['p50_create_ms']} ms",
        f"- batches.create answered `{row['create_status']}` in {row['create_answer_ms']} ms; "
        "the worker started once every line was queued",
        f"- {row.get('completed_lines')} lines completed, {row.get('failed_lines')} failed",
    ]  # fmt: skip
    (out / "results.md").write_text("\n".join(lines) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--lines` overrides the file size."""
    parser.add_argument("--lines", type=int, default=None, help="lines in the file")
    parser.add_argument("--line-bytes", type=int, default=None, help="size of each line")
    parser.add_argument(
        "--timeout-s", type=float, default=None, help="stop (and report) after this long"
    )


def run(args: argparse.Namespace) -> int:
    """Run the scenario from the command line."""
    logs.configure("warning", "console")
    cfg = QUICK if args.quick else BatchScaleConfig()
    if args.lines or args.timeout_s or args.line_bytes:
        cfg = BatchScaleConfig(
            lines=args.lines or cfg.lines,
            line_bytes=args.line_bytes or cfg.line_bytes,
            before_s=cfg.before_s,
            timeout_s=args.timeout_s or cfg.timeout_s,
        )
    row = run_batch_scale(cfg, Path(args.out))
    print(Path(args.out, "results.md").read_text())
    return 0 if row.get("final_status") == "completed" else 1
