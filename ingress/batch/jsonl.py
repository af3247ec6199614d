"""Batch files: validating input JSONL as Azure does, writing output and error JSONL.

Input line (AZURE_FACTS §6): `{"custom_id", "method": "POST", "url":
"/v1/chat/completions" | "/chat/completions" | "/v1/responses", "body": {...}}`;
`body.model` names a deployment of this ingress; the body is checked as the url's
API takes it; `custom_id`s are unique; at most 100,000 lines. Blank lines are
ignored. Every problem is a 400 naming the line.

Output line: `{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error": null}`; a line that failed, expired or was cancelled goes to
the error file with `error: {"code", "message"}` (and `response` when the
deployment answered).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, get_args

from ingress.chat.governance import check_chat_body, check_responses_body
from ingress.http.body import loads_strict
from ingress.http.errors import ApiError, bad_request
from ingress.http.models import RESPONSES_URL, BatchEndpoint
from orchestrator.core.schemas import Endpoint, ResultDocument

MAX_LINES = 100_000
ENDPOINTS: tuple[str, ...] = get_args(BatchEndpoint)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One validated request of a batch input file."""

    number: int
    custom_id: str
    deployment: str
    body: dict[str, Any]
    endpoint: Endpoint = "chat/completions"


def _line_error(number: int, message: str) -> ApiError:
    return bad_request(f"line {number}: {message}", code="invalid_batch_file")


BODY_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    url: check_responses_body if url == RESPONSES_URL else check_chat_body for url in ENDPOINTS
}
"""The one place that knows which endpoints a batch line may name, and how its body is
checked for each (ApiError 400 from the endpoint's own check)."""


def line_endpoint(url: object) -> Endpoint:
    """The API a (validated) line's `url` names."""
    return "responses" if url == RESPONSES_URL else "chat/completions"


def _check_line(number: int, obj: object, deployments: Collection[str]) -> BatchLine:
    if not isinstance(obj, dict):
        raise _line_error(number, "not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise _line_error(number, "'custom_id' must be a non-empty string")
    if obj.get("method") != "POST":
        raise _line_error(number, "'method' must be \"POST\"")
    check_body = BODY_CHECKS.get(obj.get("url"))  # type: ignore[arg-type]
    if check_body is None:
        raise _line_error(number, f"'url' must be one of {', '.join(BODY_CHECKS)}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise _line_error(number, "'body' must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or model not in deployments:
        known = ", ".join(sorted(deployments)) or "none"
        raise _line_error(
            number, f"body.model {str(model)[:100]!r} is not a deployment here (known: {known})"
        )
    endpoint = line_endpoint(obj["url"])
    try:
        check_body(body)
    except ApiError as exc:
        raise _line_error(number, f"body: {exc.message}") from exc
    if body.get("stream") is True:
        raise _line_error(number, "body.stream must not be true in a batch")
    return BatchLine(number, custom_id, model, body, endpoint)


def scan(raw_lines: Iterable[bytes], deployments: Collection[str]) -> Iterator[BatchLine]:
    """Validate a file line by line (bytes lines, `\n` stripped or not), yielding each
    request; ApiError 400 naming the first bad line. Holds only the custom_ids seen."""
    seen: dict[str, int] = {}
    count = 0
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        if count >= MAX_LINES:
            raise _line_error(number, f"a batch file holds at most {MAX_LINES} requests")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request("the file is not UTF-8 text", code="invalid_batch_file") from exc
        try:
            obj = loads_strict(text)
        except ValueError as exc:
            raise _line_error(number, f"not valid JSON ({exc})") from exc
        line = _check_line(number, obj, deployments)
        first = seen.setdefault(line.custom_id, number)
        if first != number:
            raise _line_error(
                number, f"duplicate custom_id {line.custom_id[:100]!r} (first on line {first})"
            )
        count += 1
        yield line
    if not count:
        raise bad_request("the batch file has no requests", code="invalid_batch_file")


def parse_input(content: bytes, deployments: Collection[str]) -> list[BatchLine]:
    """The lines of a whole batch input file in memory (small files, tests)."""
    return list(scan(content.split(b"\n"), deployments))


def request_line(raw: bytes) -> dict[str, Any] | None:
    """The object of a line of an already validated file; None for a blank line."""
    return json.loads(raw) if raw.strip() else None


def succeeded(doc: ResultDocument) -> bool:
    """True when the line belongs in the output file."""
    return doc.status == "completed" and (doc.status_code or 200) < 300


def output_line(doc: ResultDocument) -> dict[str, Any]:
    """The Batch output (or error) line of one result."""
    response = None
    if doc.status_code is not None:
        body = doc.response if succeeded(doc) else {"error": doc.error or {}}
        response = {"status_code": doc.status_code, "request_id": doc.id, "body": body}
    error = None
    if not succeeded(doc):
        err = doc.error or {}
        error = {
            "code": str(err.get("code") or doc.status),
            "message": str(err.get("message") or f"request {doc.status}"),
        }
    return {
        "id": "batch_req_" + doc.id.removeprefix("req_"),
        "custom_id": doc.custom_id,
        "response": response,
        "error": error,
    }


def render(lines: Iterable[dict[str, Any]]) -> bytes:
    """JSONL bytes of output lines."""
    return b"".join(json.dumps(line, separators=(",", ":")).encode() + b"\n" for line in lines)
