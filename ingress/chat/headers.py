"""Which headers cross the ingress, each way, for a high-priority call.

Towards the deployment, an allow-list: only what describes the request's content and
its client (`FORWARDED`: `accept`, `user-agent`, the OpenAI SDKs' `x-stainless-*`,
`openai-beta`, the W3C trace context, `x-ms-client-request-id`, `x-ms-useragent`, and the
simulator's `x-sim-*` test knobs, which Azure ignores), never the names a hop-by-hop
`Connection:` header lists; everything else stays here: credentials of any kind
(`api-key`, `authorization`, `ocp-apim-subscription-key`, `x-api-key`, cookies),
identities a front added (`x-ms-client-principal-*`, `x-forwarded-*`), the ingress's own
(`x-priority`, `x-reply-key`, `x-ptu-*`) and `x-ms-spillover-deployment`: a client must
not send its call to pay-as-you-go; the deployment's `native` spillover entry adds it
(`spillover`). Then a JSON content type and the `x-ptu-priority: high` label.

Back to the client: the deployment's headers as sent (retry-after-ms, retry-after,
azure-openai-deployment-utilization, x-ratelimit-*, request ids) minus hop-by-hop ones
and those its `Connection:` names, cookies (`set-cookie`: the upstream's session is not
the client's), and what the ingress's own server writes (length, encoding, date,
server); plus `x-ptu-deployment` naming the deployment that served (and `x-ptu-spillover`
when that was not the one asked: our own chain moved on, or Azure spilled the call
natively to a standard deployment, `x-ms-deployment-name`).
"""

from __future__ import annotations

from collections.abc import Sequence

from orchestrator.core.schemas import PRIORITY_LABEL_HEADER

RawHeaders = Sequence[tuple[bytes, bytes]]
FORWARDED = frozenset(
    b"accept accept-language user-agent openai-beta traceparent tracestate "
    b"x-ms-client-request-id x-ms-useragent".split()
)
"""Client headers forwarded by name."""
FORWARDED_PREFIXES = (b"x-stainless-", b"x-sim-")
"""Client headers forwarded by prefix: the OpenAI SDKs' telemetry, the simulator's knobs."""
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-connection proxy-authenticate proxy-authorization te "
    b"trailer trailers transfer-encoding upgrade".split()
)
FIXED_HEADERS = (
    (b"content-type", b"application/json"),
    (PRIORITY_LABEL_HEADER.encode(), b"high"),
)
DEPLOYMENT_HEADER = b"x-ptu-deployment"
"""Response header naming the deployment that answered (the target or a spillover)."""
_DROP_RESPONSE = HOP_BY_HOP | frozenset(
    b"content-length content-encoding date server set-cookie set-cookie2".split()
)


def connection_named(raw: RawHeaders) -> frozenset[bytes]:
    """The (lowercased) names a `Connection:` header lists: hop-by-hop by declaration."""
    named: set[bytes] = set()
    for k, v in raw:
        if k.lower() == b"connection":
            named.update(t.strip().lower() for t in v.split(b",") if t.strip())
    return frozenset(named)


def forwarded_headers(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The client's headers on the allow-list (ASGI names are lowercase), minus any the
    `Connection:` header names."""
    named = connection_named(raw)
    return [
        (k, v)
        for k, v in raw
        if (k in FORWARDED or k.startswith(FORWARDED_PREFIXES)) and k not in named
    ]


def passed_headers(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """The deployment's response headers the client gets back (names lowercased, as ASGI wants)."""
    named = connection_named(raw)
    out = []
    for k, v in raw:
        name = k.lower()
        if name not in _DROP_RESPONSE and name not in named:
            out.append((name, v))
    return out


def answered_by(asked: str, served: str) -> list[tuple[bytes, bytes]]:
    """`x-ptu-deployment` naming the deployment that served (+ `x-ptu-spillover` if not ours)."""
    out = [(DEPLOYMENT_HEADER, served.encode())]
    if served != asked:
        out.append((b"x-ptu-spillover", served.encode()))
    return out
