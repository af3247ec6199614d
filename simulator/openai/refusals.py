"""What the simulator answers a call it does not serve: 429 (provisioned or standard), 408, 5xx.

The bodies and messages are Azure's (`chat`); a provisioned deployment's 429 carries
`retry-after-ms` as well as `retry-after`, a standard one's names its API version.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from simulator.openai import chat
from simulator.openai.bucket import retry_after_ms, retry_after_s
from simulator.openai.deployments import Decision, Deployment

DEFAULT_API_VERSION = "2024-10-21"


def json_response(status: int, payload: dict[str, Any], headers: dict[str, str]) -> Response:
    """A compact JSON answer."""
    content = json.dumps(payload, separators=(",", ":")).encode()
    return Response(content, status, headers, media_type="application/json")


def throttled(
    request: Request, deployment: Deployment, decision: Decision, headers: dict[str, str]
) -> Response:
    """The 429 of a refused admission, with the deployment kind's retry headers and message."""
    headers = {**headers, "retry-after": str(retry_after_s(decision.retry_after_s))}
    if deployment.limiter is None:
        ms = retry_after_ms(decision.retry_after_s)
        headers["retry-after-ms"] = str(ms)
        message = chat.msg_429_provisioned(ms)
    else:
        version = request.query_params.get("api-version", DEFAULT_API_VERSION)
        message = chat.msg_429_standard(version, retry_after_s(decision.retry_after_s))
    return json_response(429, chat.error_body("429", message), headers)


async def fault(decision: Decision, headers: dict[str, str]) -> Response:
    """An injected fault: a 408 after the time to first token, else the drawn 5xx."""
    if decision.status == 408:
        await asyncio.sleep(decision.ttft_s)
        return json_response(408, chat.error_body("Timeout", chat.MSG_408), headers)
    return json_response(
        decision.status, chat.error_body(str(decision.status), chat.MSG_500), headers
    )
