"""What a deployment's response tells about the deployment, read once for every caller.

Every response of an Azure OpenAI deployment (or of a gateway in front of it) may carry
signals about how full the deployment is; the worker, the ingress and the high-priority
batch runner all read them here, so a header is parsed one way everywhere:

- `azure-openai-deployment-utilization` (`42.5%`): undocumented and called unreliable by
  Microsoft (AZURE_FACTS.md §10); its delay and smoothing are unknown. A hint.
- `retry-after-ms`, else `retry-after` in seconds (numeric form): how long the upstream
  wants the caller to wait. For a PTU leaky bucket it is the time until the level is
  below 100 %; for a minute-window limiter (APIM token limits, standard deployments,
  other simulators) it can be up to 60 s whatever the level.
- native spillover (AZURE_FACTS.md §10): `x-ms-spillover-from-deployment` names the PTU
  deployment a spilled call was meant for (present only when it spilled),
  `x-ms-deployment-name` the deployment that served it, `x-ms-spillover-error` that the
  standard call failed too and the PTU's own answer is returned. A spilled response is a
  200 that means "the PTU was saturated".
- `x-ratelimit-remaining-tokens` / `-requests` (standard deployments, APIM token limits,
  other gateways and simulators), with `x-ratelimit-limit-tokens` where it is sent: a
  direct reading of headroom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.core.errors import UpstreamError
from orchestrator.core.retry import parse_retry_after

UTILISATION_HEADER = "azure-openai-deployment-utilization"
SPILLED_FROM_HEADER = "x-ms-spillover-from-deployment"
SERVED_BY_HEADER = "x-ms-deployment-name"
SPILLOVER_ERROR_HEADER = "x-ms-spillover-error"
SPILLOVER_REQUEST_HEADER = "x-ms-spillover-deployment"
REMAINING_TOKENS_HEADER = "x-ratelimit-remaining-tokens"
REMAINING_REQUESTS_HEADER = "x-ratelimit-remaining-requests"
LIMIT_TOKENS_HEADER = "x-ratelimit-limit-tokens"


@dataclass(frozen=True, slots=True)
class Signals:
    """The load signals of one response; every field is None (or False) when not sent."""

    utilisation: float | None = None
    """The utilisation header as a fraction (0.425 for `42.5%`)."""
    retry_after_s: float | None = None
    """`retry-after-ms` / 1000, else `retry-after` (seconds)."""
    spilled_from: str | None = None
    """The PTU deployment this call spilled from (native spillover), if it spilled."""
    served_by: str | None = None
    """The deployment that served the call, when the upstream names it."""
    spillover_error: bool = False
    """The spill target failed too; the answer is the PTU's own."""
    remaining_tokens: int | None = None
    remaining_requests: int | None = None
    limit_tokens: int | None = None

    @property
    def spilled(self) -> bool:
        """Whether the call was served by a spillover deployment (the PTU was saturated)."""
        return self.spilled_from is not None and not self.spillover_error

    def served(self, requested: str) -> str:
        """The deployment to charge for this call: who served it, else the one called."""
        return self.served_by if self.spilled and self.served_by else requested


def parse_utilisation(raw: str | None) -> float | None:
    """`"42.5%"` → 0.425; None when absent or malformed (the header is only a hint)."""
    if raw is None:
        return None
    try:
        value = float(raw.strip().removesuffix("%")) / 100.0
    except ValueError:
        return None
    return value if value >= 0 and value == value else None


def _count(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(float(raw.strip()))
    except ValueError:
        return None
    return value if value >= 0 else None


def read_signals(headers: Mapping[str, str]) -> Signals:
    """The signals of a response's headers (a case-insensitive mapping such as httpx's)."""
    return Signals(
        utilisation=parse_utilisation(headers.get(UTILISATION_HEADER)),
        retry_after_s=parse_retry_after(headers),
        spilled_from=headers.get(SPILLED_FROM_HEADER) or None,
        served_by=headers.get(SERVED_BY_HEADER) or None,
        spillover_error=headers.get(SPILLOVER_ERROR_HEADER) is not None,
        remaining_tokens=_count(headers.get(REMAINING_TOKENS_HEADER)),
        remaining_requests=_count(headers.get(REMAINING_REQUESTS_HEADER)),
        limit_tokens=_count(headers.get(LIMIT_TOKENS_HEADER)),
    )


def error_signals(err: UpstreamError) -> Signals:
    """The signals of a failed call: its response's, else the retry-after the error carries."""
    if err.signals is not None:
        return err.signals
    return Signals(retry_after_s=err.retry_after_s)
