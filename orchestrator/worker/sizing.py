"""Completion limits the size of the work: the pure decisions of `PTU_SIZE_MAX_TOKENS=auto`.

Why: a provisioned deployment charges `prompt + max_tokens x output weight` when it admits
a call and refunds the unused part when the call ends. The charge is what its 429 decision
reads, so a queued line that asks for 2,000 tokens and writes 100 holds twenty times the
capacity it uses for as long as it runs. The refund comes too late to help, and the only
lever is the limit itself.

So for queued work the worker sends a limit learnt from the answers the same tenant got
from the same deployment: the `QUANTILE` of the last `WINDOW` output lengths times
`MARGIN`, at least `FLOOR`, never above the caller's own limit. Until `MIN_SAMPLES`
lengths are known the caller's limit goes unchanged. A call that comes back cut short at
the learnt limit (chat: a choice with `finish_reason: "length"`; Responses: `status:
"incomplete"` for `max_output_tokens`) is run again with the caller's limit, so the caller
still gets one result with all the output it allowed.

Why these numbers:
- `QUANTILE` 0.95 x `MARGIN` 1.25: one answer in twenty or fewer is longer than the
  quantile, and the margin leaves room for a distribution that moves. A re-run costs the
  cut call (its time, and the sized limit's worth of output generated for nothing) while
  every call saves the reservation `caller - sized` for its whole duration.
- `MIN_SAVING` 0.25: below a quarter of the caller's limit saved, the re-runs' added
  latency buys too little capacity; the caller's limit goes unchanged.
- `MIN_SAMPLES` 20: with fewer, the 95th percentile is the maximum of what was seen.
- `WINDOW` 200: recent enough to follow a tenant whose work changes, large enough that
  the 95th percentile rests on ten answers.
- `FLOOR` 64: a limit so low that an answer's preamble fills it buys little capacity and
  risks many re-runs (and the Responses API refuses `max_output_tokens` below 16).

What is learnt is the length the caller would have got: a call cut short at the learnt
limit says only "longer than that", so it teaches nothing, and its re-run teaches the
real length. Lengths are per choice (`completion_tokens / n`), since the limit is too.
`tenants.fair.Expectation` is a different quantity: a mean ratio of used to estimated
tokens, for fair-share charges inside one process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.core.schemas import Endpoint, QueuedRequest
from orchestrator.core.tokens import LIMIT_FIELDS, usage_counts

Mode = Literal["auto", "off"]

QUANTILE = 0.95
MARGIN = 1.25
FLOOR = 64
MIN_SAMPLES = 20
WINDOW = 200
MIN_SAVING = 0.25


@dataclass(frozen=True, slots=True)
class SizingParams:
    """The tunables of sizing; the module docstring gives the reason for each default."""

    quantile: float = QUANTILE
    margin: float = MARGIN
    floor: int = FLOOR
    min_samples: int = MIN_SAMPLES
    window: int = WINDOW
    min_saving: float = MIN_SAVING


def quantile(samples: Sequence[int], q: float) -> int:
    """The nearest-rank `q` quantile of `samples` (not empty): the smallest value with at
    least a share `q` of the samples at or below it."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered) - 1e-9))
    return ordered[rank - 1]


def sized_limit(samples: Sequence[int], caller: int, params: SizingParams) -> int:
    """The limit to send for a call whose caller allows `caller` output tokens."""
    if len(samples) < params.min_samples:
        return caller
    learnt = max(params.floor, math.ceil(quantile(samples, params.quantile) * params.margin))
    if learnt > caller * (1.0 - params.min_saving):
        return caller
    return learnt


def limit_fields(body: Mapping[str, Any], endpoint: Endpoint) -> tuple[str, ...]:
    """The fields that state the body's output limit (positive integers), the one the
    service reads first (`requested_max_tokens`'s order) first; empty when none does."""
    fields = ("max_output_tokens",) if endpoint == "responses" else LIMIT_FIELDS[:2]
    return tuple(
        f
        for f in fields
        if isinstance(body.get(f), int) and not isinstance(body.get(f), bool) and body[f] > 0
    )


def cut_short(body: Mapping[str, Any], endpoint: Endpoint) -> bool:
    """True when the answer stopped at its output limit."""
    if endpoint == "responses":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return body.get("status") == "incomplete" and reason == "max_output_tokens"
    choices = body.get("choices")
    if not isinstance(choices, list):
        return False
    return any(isinstance(c, Mapping) and c.get("finish_reason") == "length" for c in choices)


def output_length(body: Mapping[str, Any], request: Mapping[str, Any]) -> int | None:
    """Output tokens per choice of an answer (None without usage)."""
    usage = body.get("usage")
    if not isinstance(usage, Mapping):
        return None
    completion = usage_counts(usage).completion
    n = request.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return math.ceil(completion / choices)


class Plan:
    """The limits of one queued request's calls: sized until an answer is cut short by the
    sized limit, the caller's from then on. No I/O: `Sizer` reads and learns lengths."""

    __slots__ = ("caller", "fields", "full", "original", "sized")

    def __init__(self, message: QueuedRequest, sized: int | None = None) -> None:
        self.original = message
        self.fields = limit_fields(message.body, message.endpoint)
        self.caller: int | None = message.body[self.fields[0]] if self.fields else None
        """The caller's own limit (None: the body states none, and is never sized)."""
        self.sized = sized if self.caller is not None and sized != self.caller else None
        self.full = self.sized is None
        """True once calls go with the caller's own limit."""

    @property
    def message(self) -> QueuedRequest:
        """The message to call with now: the body with the sized limit, or the original."""
        if self.full or self.sized is None:
            return self.original
        body = dict(self.original.body)
        for field in self.fields:
            body[field] = min(body[field], self.sized)
        return self.original.model_copy(update={"body": body})

    def outcome(self, answer: Mapping[str, Any]) -> tuple[bool, int | None]:
        """(re-run with the caller's limit?, the output length to learn or None) for an answer
        to `message`; a re-run switches the plan to the caller's limit."""
        short = cut_short(answer, self.original.endpoint)
        if short and not self.full:
            self.full = True
            return True, None  # "longer than the sized limit": the re-run tells how long
        return False, output_length(answer, self.original.body)

    def __repr__(self) -> str:
        return (
            f"<Plan request={self.original.id} caller={self.caller} "
            f"sized={self.sized} full={self.full}>"
        )
