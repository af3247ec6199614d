"""Which headers cross the ingress, each way, for a high-priority call.

Towards the deployment: the client's headers minus hop-by-hop ones, credentials, the
ingress's own (`x-priority`, `x-reply-key`, `x-ptu-*`) and `x-ms-spillover-deployment`,
plus a JSON content type and the `x-ptu-priority: high` label. Back to the client: the
deployment's headers as sent (retry-after-ms, retry-after,
azure-openai-deployment-utilization, x-ratelimit-*) minus hop-by-hop ones, plus
`x-ptu-deployment` naming the deployment that served (and `x-ptu-spillover` when that was
not the one asked: our own chain moved on, or Azure spilled the call natively to a
standard deployment, `x-ms-deployment-name`).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.core.schemas import PRIORITY_LABEL_HEADER

RawHeaders = Sequence[tuple[bytes, bytes]]
_DROP_REQUEST = frozenset(
    b"host content-length content-type api-key authorization connection keep-alive "
    b"transfer-encoding te trailer upgrade expect cookie proxy-authorization "
    b"proxy-connection accept-encoding x-priority x-reply-key x-ms-spillover-deployment".split()
)
"""Never forwarded as sent: `x-ms-spillover-deployment` is the deployment's to choose (a
`native` spillover entry), a client must not send its call to pay-as-you-go."""
FIXED_HEADERS = (
    (b"content-type", b"application/json"),
    (PRIORITY_LABEL_HEADER.encode(), b"high"),
)
DEPLOYMENT_HEADER = b"x-ptu-deployment"
"""Response header naming the deployment that answered (the target or a spillover)."""
_DROP_RESPONSE = frozenset(
    b"connection keep-alive transfer-encoding content-length content-encoding "
    b"date server upgrade trailer set-cookie".split()
)


def forwarded_headers(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop, credentials and the ingress's own."""
    return [(k, v) for k, v in raw if k not in _DROP_REQUEST and not k.startswith(b"x-ptu-")]


def passed_headers(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The deployment's response headers the client gets back (names lowercased, as ASGI wants)."""
    out = []
    for k, v in raw:
        name = k.lower()
        if name not in _DROP_RESPONSE:
            out.append((name, v))
    return out


def answered_by(asked: str, served: str) -> list[tuple[bytes, bytes]]:
    """`x-ptu-deployment` naming the deployment that served (+ `x-ptu-spillover` if not ours)."""
    out = [(DEPLOYMENT_HEADER, served.encode())]
    if served != asked:
        out.append((b"x-ptu-spillover", served.encode()))
    return out
