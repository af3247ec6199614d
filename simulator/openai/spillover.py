"""Native spillover (AZURE_FACTS.md §10): a provisioned deployment's refusals served by a
standard deployment of the same resource.

A provisioned deployment may name a spillover target (`--deployment
NAME=MODEL:PTUS:spill=STD`, the ARM property `spilloverDeploymentName`; PATCH field
`spillover`), and a request may name one with `x-ms-spillover-deployment`; the deployment's
property wins, so a caller cannot opt out. When the provisioned deployment would answer
429, 500 or 503, the call is made on the target instead, under the target's own limits,
and billed and counted there:

- served: the target's answer, with `x-ms-spillover-from-deployment: NAME` and
  `x-ms-deployment-name: STD`; the provisioned deployment counts it as `spilled`;
- the target fails too: the provisioned deployment's own answer, with
  `x-ms-spillover-error` set to the target's status (`404` when it does not exist, `400`
  when it is not a standard deployment).

The header names are the ones the orchestrator reads (`orchestrator.calls.signals`).
"""

from __future__ import annotations

from collections.abc import Mapping

from orchestrator.calls.signals import (
    SERVED_BY_HEADER,
    SPILLED_FROM_HEADER,
    SPILLOVER_ERROR_HEADER,
    SPILLOVER_REQUEST_HEADER,
)

__all__ = [
    "SERVED_BY_HEADER",
    "SPILLED_FROM_HEADER",
    "SPILLOVER_ERROR_HEADER",
    "SPILLOVER_REQUEST_HEADER",
    "TRIGGERS",
    "choose_target",
    "target_problem",
]

TRIGGERS = frozenset({429, 500, 503})
"""The provisioned deployment's answers that spill."""


def choose_target(configured: str | None, requested: str | None) -> str | None:
    """The deployment to spill to: the deployment's property, else the request's header."""
    if configured:
        return configured
    requested = (requested or "").strip()
    return requested or None


def target_problem(name: str, kinds: Mapping[str, str]) -> str | None:
    """Why `name` cannot take spilled calls, as the status Azure would give; None if it can."""
    kind = kinds.get(name)
    if kind is None:
        return "404"
    if kind != "standard":
        return "400"
    return None
