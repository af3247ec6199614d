"""What the ingress checks and changes in a chat completions or responses body before it leaves.

`check_chat_body` validates the body against `ChatCompletionRequest` (the model
the OpenAPI document is generated from): a non-empty `messages` list of objects
with a string `role`, booleans and objects where the API has them, positive
integer token limits. `check_responses_body` does the same with `ResponsesRequest`.
Everything else passes through as sent.

`govern` applies max_tokens governance, per deployment (`Rule`, from `Governance`).

Why: the PTU charges `max_tokens` x output weight at admission, so an absent or
huge `max_tokens` reserves capacity that is never used, and a long non-streaming
generation (6-8k tokens at ~33 tok/s) outlives a 60 s client window and ends in
408. So for non-streaming calls (high priority, queued and batch lines):

- `max_tokens` and `max_completion_tokens` (a response's `max_output_tokens`), when
  given, are capped at `PTU_MAX_TOKENS_CEILING` (default 2,000);
- when neither is given, the deployment's limit field (a response's
  `max_output_tokens`) is set to `PTU_DEFAULT_MAX_TOKENS` (default 1,000, itself capped
  at the ceiling);
- an explicit `null` counts as absent (a value that is not a positive integer was
  already refused by `check_chat_body`).

Streaming calls keep their limits: the client sees tokens as they come, so a long
answer is neither wasted nor timed out.

The limit field is the model's (`capacity.limit_field`, or the deployment's
`limit_field`). Reasoning models refuse `max_tokens` with a 400 and take
`max_completion_tokens`, which also bounds their hidden reasoning tokens. For them,
streaming or not, a client's `max_tokens` becomes `max_completion_tokens` (dropped when
both are given: the service reads `max_completion_tokens` first) and the default is set
in `max_completion_tokens`, so the admission charge (`tokens.requested_max_tokens`, read
after governance) is the bound the model really works to. A deployment whose spillover
chain holds such a model is governed the same way, as the one body is sent down the
chain and every recent model accepts `max_completion_tokens`.

`Governed.capped` is the limit sent when governance lowered one the client gave; the
ingress answers it in `x-ptu-max-tokens-capped`. A deployment with `governance: false`
is not governed at all: its bodies pass as sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ingress.http.models import ChatCompletionRequest, ResponsesRequest, validated
from orchestrator.core import capacity
from orchestrator.core.capacity import LimitField
from orchestrator.core.pools import pools_of
from orchestrator.core.schemas import Endpoint
from orchestrator.core.settings import DeploymentConfig

CAPPED_HEADER = "x-ptu-max-tokens-capped"
"""Answered with the limit sent when governance lowered the client's own."""
LIMIT_FIELDS: dict[Endpoint, tuple[str, ...]] = {
    "chat/completions": ("max_tokens", "max_completion_tokens"),
    "responses": ("max_output_tokens",),
}
"""Each API's completion limits."""


@dataclass(frozen=True, slots=True)
class Rule:
    """How one deployment's output limits are governed."""

    field: LimitField = "max_tokens"
    """The chat completions field the deployment takes (and governance sets)."""
    enabled: bool = True


DEFAULT_RULE = Rule()
"""A deployment without a rule of its own: `max_tokens`, governed."""


class Governed(NamedTuple):
    """What `govern` did: whether the body changed, and the limit sent if it lowered one."""

    changed: bool
    capped: int | None = None


def check_chat_body(body: dict[str, Any], where: str = "") -> None:
    """400 (prefixed with `where`) unless `body` fits `ChatCompletionRequest`."""
    validated(ChatCompletionRequest, body, where)


def check_responses_body(body: dict[str, Any], where: str = "") -> None:
    """400 (prefixed with `where`) unless `body` fits `ResponsesRequest`."""
    validated(ResponsesRequest, body, where)


def govern(
    body: dict[str, Any],
    *,
    ceiling: int,
    default: int,
    endpoint: Endpoint = "chat/completions",
    rule: Rule = DEFAULT_RULE,
    stream: bool = False,
) -> Governed:
    """Apply `rule`, the ceiling and the default to `body` in place.

    `body` has passed its check: its limits are positive integers or null. A stream
    only has its field renamed for a model that refuses `max_tokens`.
    """
    if not rule.enabled:
        return Governed(False)
    changed = False
    if endpoint == "chat/completions" and rule.field != "max_tokens" and "max_tokens" in body:
        value = body.pop("max_tokens")
        changed = True
        if body.get(rule.field) is None and value is not None:
            body[rule.field] = value
    if stream:
        return Governed(changed)
    capped = None
    present = False
    for name in LIMIT_FIELDS[endpoint]:
        if name not in body:
            continue
        value = body[name]
        if value is None:
            del body[name]
            changed = True
            continue
        present = True
        if value > ceiling:
            body[name] = capped = ceiling
            changed = True
    if not present:
        body[rule.field if endpoint == "chat/completions" else "max_output_tokens"] = min(
            default, ceiling
        )
        changed = True
    return Governed(changed, capped)


def rules(deployments: Iterable[DeploymentConfig]) -> dict[str, Rule]:
    """Each deployment's rule: `max_completion_tokens` when it or any deployment it spills
    over to takes that field (the one body goes down the whole chain)."""
    configs = {d.name: d for d in deployments}

    def field_of(d: DeploymentConfig) -> LimitField:
        return d.limit_field or capacity.limit_field(d.model)

    out: dict[str, Rule] = {}
    for d in configs.values():
        chain = [d, *(configs[s] for s in d.spillover_names if s in configs)]
        fields = {field_of(c) for c in chain}
        field: LimitField = "max_tokens" if fields == {"max_tokens"} else "max_completion_tokens"
        out[d.name] = Rule(field, d.governance)
    for pool in pools_of(list(configs.values())).values():  # a call may reach any member
        ruled = [out[m.name] for m in pool.members]
        taken = {r.field for r in ruled}
        pooled: LimitField = "max_tokens" if taken == {"max_tokens"} else "max_completion_tokens"
        out[pool.name] = Rule(pooled, all(r.enabled for r in ruled))
    return out


@dataclass(frozen=True, slots=True)
class Governance:
    """Every deployment's rule and the default limit: `govern` for a named deployment."""

    rules: Mapping[str, Rule]
    default: int

    @classmethod
    def of(cls, deployments: Iterable[DeploymentConfig], default: int) -> Governance:
        """The governance of `deployments` (`PTU_DEPLOYMENTS`), `PTU_DEFAULT_MAX_TOKENS`."""
        return cls(rules(deployments), default)

    def apply(
        self,
        body: dict[str, Any],
        deployment: str,
        *,
        ceiling: int,
        endpoint: Endpoint = "chat/completions",
        stream: bool = False,
    ) -> Governed:
        """`govern` `body` by `deployment`'s rule (the default rule if it has none)."""
        return govern(
            body, ceiling=ceiling, default=self.default, endpoint=endpoint,
            rule=self.rules.get(deployment, DEFAULT_RULE), stream=stream,
        )  # fmt: skip
