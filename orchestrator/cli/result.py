"""`ptu result ID`: a queued request's result document, from the ingress.

`GET /v1/requests/{id}?wait=S` long-polls (the ingress holds one poll at most 60 s, so a
longer `--wait` polls again until its deadline). Prints the result document as JSON on
stdout. Exit status: 0 `completed`, 1 `failed` / `expired` or an error (one line on
stderr), 3 still queued or in progress when the wait ran out (the status document is
printed instead).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai

from orchestrator.cli import ingress_client
from orchestrator.core.errors import PTUError
from orchestrator.core.settings import Settings

MAX_POLL_S = 60.0
"""The ingress caps one long poll at this (`ingress.http.models.MAX_WAIT_S`)."""
STILL_WAITING = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`ID`, `--wait`, `--url`, `--api-key`."""
    parser.add_argument("request_id", metavar="ID", help="the id the 202 answer carried")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds for the result (default 0: answer at once)",
    )
    ingress_client.add_arguments(parser)


def fetch(
    client: openai.OpenAI,
    request_id: str,
    wait_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, document) once the result is there or `wait_s` has passed."""
    deadline = clock() + max(wait_s, 0.0)
    while True:
        poll = min(max(deadline - clock(), 0.0), MAX_POLL_S)
        response = client.get(
            f"/requests/{request_id}",
            cast_to=httpx.Response,
            options={"params": {"wait": f"{poll:g}"}, "timeout": poll + 30.0},
        )
        doc = response.json()
        if response.status_code != 202 or clock() >= deadline:
            return response.status_code, doc


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Print the document; the exit status says how it ended."""
    assert settings is not None
    if args.wait < 0:
        raise PTUError("--wait must be 0 or more seconds")
    url = ingress_client.base_url(args, settings)
    client = ingress_client.connect(args, settings)
    try:
        with ingress_client.one_line_errors(url):
            try:
                status, doc = fetch(client, args.request_id, args.wait)
            except openai.NotFoundError:
                raise PTUError(
                    f"no request {args.request_id} at {url} (unknown, expired, or another tenant's)"
                ) from None
    finally:
        client.close()
    print(json.dumps(doc, indent=2))
    if status == 202:
        return STILL_WAITING
    return 0 if doc.get("status") == "completed" else 1
