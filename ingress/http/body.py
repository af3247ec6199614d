"""Reading request bodies: a size limit and strict JSON parsing."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ingress.http.errors import ApiError, bad_request
from orchestrator.core.schemas import MAX_BODY_DEPTH, json_depth


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def too_large(limit: int) -> ApiError:
    """The 413 for a body over `limit` bytes."""
    return ApiError(413, "request_too_large", f"request body exceeds {limit} bytes")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body; 413 as soon as it exceeds `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise bad_request("content-length is not a number")
        if int(declared) > limit:
            raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def loads_strict(raw: bytes | str) -> Any:
    """json.loads without NaN/Infinity, lone surrogates or nesting deeper than
    `MAX_BODY_DEPTH`; ValueError on anything else."""
    try:
        value = json.loads(raw, parse_constant=_no_constants)
    except RecursionError as exc:
        raise ValueError(f"JSON nested deeper than {MAX_BODY_DEPTH} levels") from exc
    if json_depth(value) > MAX_BODY_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_BODY_DEPTH} levels")
    escapes = (b"\\ud", b"\\uD") if isinstance(raw, bytes) else ("\\ud", "\\uD")
    if escapes[0] in raw or escapes[1] in raw:  # type: ignore[operator]
        # a lone UTF-16 surrogate parses but can never be re-encoded as UTF-8 later
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate escape") from None
    return value


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, else a 400 that says why."""
    if not raw:
        raise bad_request("request body is empty; expected a JSON object")
    try:
        value = loads_strict(raw)
    except ValueError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(value, dict):
        raise bad_request("request body must be a JSON object")
    return value


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """Read, size-check and parse a JSON object body."""
    return parse_object(await read_body(request, limit))
