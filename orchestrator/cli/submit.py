"""`ptu submit FILE.jsonl`: run an OpenAI Batch file through the ingress, with a progress bar.

Uses the ingress's OpenAI-compatible Files and Batches API through the official
`openai` SDK: upload, create (`x-priority` from `--priority`), poll with a live
bar (done / failed / rate / ETA), then write every line's result, in input order,
in the Batch output format to `--out` (default `FILE.results.jsonl`). Ctrl-C
cancels the batch. Exit status: 0 when every line succeeded, 1 when the batch
ended with failed lines or was not completed, 2 for a bad file or arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import openai
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from orchestrator.cli import ingress_client
from orchestrator.cli.ingress_client import message as _message
from orchestrator.core.settings import Settings

TERMINAL = ("completed", "failed", "cancelled", "expired")
BatchEndpoint = Literal["/v1/chat/completions", "/v1/responses"]
CHAT: BatchEndpoint = "/v1/chat/completions"
RESPONSES: BatchEndpoint = "/v1/responses"


class SubmitError(Exception):
    """A problem reported as one line (exit status 2 for the file, 1 otherwise)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """FILE, `--priority`, `--out`, `--url`, `--api-key`, `--poll-s`."""
    parser.add_argument("file", type=Path, help="OpenAI Batch JSONL input file")
    parser.add_argument(
        "--priority",
        choices=("low", "high"),
        default="low",
        help="low: queued for idle PTU capacity (default); high: run now",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results JSONL (default: FILE with .results.jsonl)"
    )
    ingress_client.add_arguments(parser)
    parser.add_argument("--poll-s", type=float, default=1.0, help="seconds between polls")


def custom_ids(path: Path) -> list[str]:
    """The custom_ids of a batch file in order; SubmitError naming the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmitError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SubmitError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    ids: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise SubmitError(f"{path} line {number}: not valid JSON ({exc})") from None
        cid = obj.get("custom_id") if isinstance(obj, dict) else None
        if not isinstance(cid, str) or not cid:
            raise SubmitError(f"{path} line {number}: 'custom_id' must be a non-empty string")
        ids.append(cid)
    if not ids:
        raise SubmitError(f"{path}: no requests in the file")
    return ids


def batch_endpoint(path: Path) -> BatchEndpoint:
    """The batch's `endpoint`: `/v1/responses` when the first line calls it, else chat."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            return RESPONSES if isinstance(obj, dict) and obj.get("url") == RESPONSES else CHAT
    return CHAT


def _lines(content: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in content.splitlines() if x.strip()]


def collect(client: openai.OpenAI, batch: Any, order: list[str]) -> list[dict[str, Any]]:
    """Output and error lines of a finished batch, merged back into input order."""
    found: dict[str, dict[str, Any]] = {}
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            for line in _lines(client.files.content(file_id).text):
                found[str(line.get("custom_id"))] = line
    missing = {"code": "no_result", "message": f"the batch ended {batch.status} first"}
    return [
        found.get(cid, {"id": None, "custom_id": cid, "response": None, "error": missing})
        for cid in order
    ]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def wait(
    client: openai.OpenAI,
    batch: Any,
    *,
    poll_s: float,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Poll the batch until it ends, showing done / failed / rate / ETA."""
    started = clock()
    total = batch.request_counts.total if batch.request_counts else 0
    with _progress(console) as progress:
        task = progress.add_task(batch.id, total=total, failed=0, rate=0.0)
        while True:
            counts = batch.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            elapsed = max(clock() - started, 1e-9)
            progress.update(
                task,
                completed=done,
                failed=counts.failed if counts else 0,
                rate=done / elapsed,
                description=f"{batch.id} {batch.status}",
            )
            if batch.status in TERMINAL:
                return batch
            sleep(poll_s)
            batch = client.batches.retrieve(batch.id)


def submit(
    client: openai.OpenAI,
    path: Path,
    out: Path,
    *,
    priority: str,
    poll_s: float,
    console: Console,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Upload, create, wait, write results; returns the exit status."""
    order = custom_ids(path)
    try:
        uploaded = client.files.create(file=(path.name, path.read_bytes()), purpose="batch")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint=batch_endpoint(path),
            completion_window="24h",
            extra_headers={"x-priority": priority},
        )
    except openai.BadRequestError as exc:
        raise SubmitError(f"{path}: {_message(exc)}") from None
    console.print(f"batch {batch.id}: {len(order)} requests, priority {priority}")
    try:
        batch = wait(client, batch, poll_s=poll_s, console=console, sleep=sleep)
    except KeyboardInterrupt:
        client.batches.cancel(batch.id)
        console.print(f"batch {batch.id}: cancel requested")
        return 130
    results = collect(client, batch, order)
    with out.open("w", encoding="utf-8") as fh:
        for line in results:
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
    failed = sum(1 for line in results if line.get("error"))
    console.print(
        f"batch {batch.id} {batch.status}: {len(results) - failed} succeeded, {failed} failed; "
        f"results in {out}"
    )
    return 0 if batch.status == "completed" and failed == 0 else 1


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """The verb: builds an SDK client for `--url` (or `PTU_INGRESS_URL`) and submits the file."""
    assert settings is not None
    out = args.out or args.file.with_suffix(".results.jsonl")
    url = ingress_client.base_url(args, settings)
    client = ingress_client.connect(args, settings, max_retries=2)
    console = Console(stderr=True)
    try:
        return submit(
            client, args.file, out, priority=args.priority, poll_s=args.poll_s, console=console
        )
    except SubmitError as exc:
        print(f"ptu submit: {exc}", file=sys.stderr)
        return exc.status
    except openai.APIConnectionError:
        print(f"ptu submit: cannot reach the ingress at {url}", file=sys.stderr)
        return 1
    except openai.APIStatusError as exc:
        print(
            f"ptu submit: the ingress answered {exc.status_code}: {_message(exc)}", file=sys.stderr
        )
        return 1
    finally:
        client.close()
