"""`ptu batches list|show|cancel`: the ingress's batches, through its OpenAI Batch API.

`list` prints one line per batch, newest first (`--json`: the Batch objects, one a line);
`show ID` the whole Batch object; `cancel ID` asks the ingress to cancel (every line still
queued then gets a `batch_cancelled` result) and prints the batch's new status.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from orchestrator.cli import ingress_client
from orchestrator.core.errors import PTUError
from orchestrator.core.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ACTION [ID]`, `--limit`, `--json`, `--url`, `--api-key`."""
    parser.add_argument("action", choices=("list", "show", "cancel"))
    parser.add_argument("batch_id", nargs="?", metavar="ID", help="show / cancel: the batch id")
    parser.add_argument(
        "--limit", type=int, default=20, help="list: at most this many (default 20, max 100)"
    )
    parser.add_argument("--json", action="store_true", help="list: one Batch object a line")
    ingress_client.add_arguments(parser)


def line(batch: Any) -> str:
    """One batch as a line: id, status, lines done of total, failed, creation time (UTC)."""
    counts = batch.request_counts
    done = f"{counts.completed + counts.failed}/{counts.total}" if counts else "-"
    failed = counts.failed if counts else 0
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(batch.created_at))
    return f"{batch.id}  {batch.status:<11} {done:>9} done  {failed} failed  created {created}"


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Run one action against the ingress."""
    assert settings is not None
    if args.action != "list" and not args.batch_id:
        raise PTUError(f"batches {args.action}: give the batch id")
    if not 1 <= args.limit <= 100:
        raise PTUError("--limit must be between 1 and 100")
    url = ingress_client.base_url(args, settings)
    client = ingress_client.connect(args, settings)
    try:
        with ingress_client.one_line_errors(url):
            if args.action == "list":
                # one page: the ingress lists the newest `limit` and takes no cursor
                page = client.batches.list(limit=args.limit)
                for batch in page.data:
                    print(batch.model_dump_json() if args.json else line(batch))
                if not page.data and not args.json:
                    print("no batches")
            elif args.action == "show":
                print(json.dumps(client.batches.retrieve(args.batch_id).model_dump(), indent=2))
            else:
                batch = client.batches.cancel(args.batch_id)
                print(line(batch))
    finally:
        client.close()
    return 0
