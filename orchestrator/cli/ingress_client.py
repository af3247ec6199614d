"""What the client verbs (`ptu submit`, `ptu result`, `ptu batches`) share: the ingress's SDK.

They talk to the ingress's OpenAI-compatible API with the official `openai` SDK, at
`--url` or `PTU_INGRESS_URL`, presenting `--api-key` or `PTU_INGRESS_API_KEY`. Every SDK
failure becomes one `PTUError` line naming the URL or the ingress's own error message, never
a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

import openai

from orchestrator.core.errors import PTUError
from orchestrator.core.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--url` and `--api-key`, defaulting to their variables."""
    parser.add_argument(
        "--url",
        default=None,
        help="ingress base URL (default: PTU_INGRESS_URL, else http://127.0.0.1:8080)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="ingress API key when it has PTU_API_KEYS (default: PTU_INGRESS_API_KEY)",
    )


def base_url(args: argparse.Namespace, settings: Settings) -> str:
    """`--url`, else `PTU_INGRESS_URL`, without a trailing slash."""
    return str(args.url or settings.ingress_url).rstrip("/")


def connect(args: argparse.Namespace, settings: Settings, *, max_retries: int = 1) -> openai.OpenAI:
    """An SDK client for the ingress's `/v1` API."""
    key = args.api_key or (
        settings.ingress_api_key.get_secret_value() if settings.ingress_api_key else None
    )
    return openai.OpenAI(
        base_url=base_url(args, settings) + "/v1", api_key=key or "unused", max_retries=max_retries
    )


def message(exc: openai.APIStatusError) -> str:
    """The ingress's error message from its OpenAI envelope (else the SDK's)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(exc.message)


@contextlib.contextmanager
def one_line_errors(url: str) -> Iterator[None]:
    """Turn the SDK's connection and status errors into one-line `PTUError`s."""
    try:
        yield
    except openai.APIConnectionError:
        raise PTUError(f"cannot reach the ingress at {url} (--url or PTU_INGRESS_URL)") from None
    except openai.APIStatusError as exc:
        raise PTUError(f"the ingress answered {exc.status_code}: {message(exc)}") from None
