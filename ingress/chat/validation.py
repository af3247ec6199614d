"""Checks on a chat completions body before it is proxied, queued or batched."""

from __future__ import annotations

from typing import Any

from ingress.http.errors import ApiError, bad_request


def check_chat_body(body: dict[str, Any], where: str = "") -> None:
    """400 unless `messages` is a non-empty list of messages with a role, and types are sane."""
    prefix = f"{where}: " if where else ""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(f"{prefix}'messages' must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(
                f"{prefix}messages[{i}] must be an object with a string 'role'",
                param=f"messages[{i}]",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise bad_request(f"{prefix}'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request(f"{prefix}'stream_options' must be an object", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"{prefix}'model' must be a string", param="model")


def deployment_not_found(name: str) -> ApiError:
    """The 404 for a deployment the ingress does not manage."""
    return ApiError(
        404,
        "DeploymentNotFound",
        f"the deployment {name[:100]!r} is not managed by this ingress",
        param="model",
    )
