"""The operator key: what `/metrics` and `/openapi.json` ask for when `PTU_METRICS_API_KEY` is set.

Off by default, as Prometheus and the Kubernetes scrape annotations expect: a scrape carries
no credential unless configured to. A multi-tenant ingress's metrics name its tenants and
their token counts, so with more than one tenant configured and no key the process says so
at start-up (`warn_if_open`). The key arrives as the clients' keys do (`api-key` header or
`Authorization: Bearer <key>`, `presented_key`); Prometheus sends it with
`authorization: {credentials: <key>}` in its scrape config. The ingress's routes and the
worker's metrics port share this one check.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog
from pydantic import SecretStr

log = structlog.get_logger(__name__)

WWW_AUTHENTICATE = 'Bearer realm="ptu-orchestrator metrics"'


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request presents: its `api-key` header, else its bearer token ("" if none)."""
    key = headers.get("api-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class OperatorKey:
    """`PTU_METRICS_API_KEY`: whether an operator endpoint's request may be answered."""

    __slots__ = ("_key",)

    def __init__(self, key: SecretStr | None) -> None:
        self._key = key.get_secret_value().encode() if key is not None else None

    @property
    def required(self) -> bool:
        """Whether a key is configured."""
        return self._key is not None

    def allows(self, headers: Mapping[str, str]) -> bool:
        """True without a configured key, or when the request presents it (constant time)."""
        if self._key is None:
            return True
        return hmac.compare_digest(presented_key(headers).encode(), self._key)

    def warn_if_open(self, process: str, tenants: Iterable[str]) -> None:
        """Say at start-up that the metrics are open while they name several tenants."""
        named = sorted(set(tenants))
        if self._key is None and len(named) > 1:
            log.warning(
                "metrics_unauthenticated",
                process=process,
                tenants=len(named),
                hint="set PTU_METRICS_API_KEY to require a key for /metrics and /openapi.json",
            )

    def wsgi(self, app: Callable[..., Any]) -> Callable[..., Any]:
        """`app` (the worker's metrics WSGI app) behind this key: 401 without it."""

        def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            headers = {
                "api-key": environ.get("HTTP_API_KEY", ""),
                "authorization": environ.get("HTTP_AUTHORIZATION", ""),
            }
            if self.allows(headers):
                return app(environ, start_response)
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", WWW_AUTHENTICATE)],
            )
            return [b"missing or wrong metrics key (PTU_METRICS_API_KEY)\n"]

        return guarded

    def __repr__(self) -> str:
        return f"<OperatorKey required={self.required}>"
