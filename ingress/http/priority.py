"""Priority routing: which path a chat completion takes, from `x-priority`."""

from __future__ import annotations

from typing import Literal, cast

from ingress.http.errors import ApiError

Priority = Literal["high", "low"]
PRIORITY_HEADER = "x-priority"
_VALID = frozenset({"high", "low"})


def parse_priority(value: str | None, default: Priority) -> Priority:
    """`x-priority` (case-insensitive, surrounding spaces ignored); default when absent.

    Anything other than high or low is a 400: a typo must not silently send batch
    work to the interactive path or the other way round.
    """
    if value is None:
        return default
    normalised = value.strip().lower()
    if normalised not in _VALID:
        raise ApiError(
            400,
            "invalid_priority",
            f"x-priority must be 'high' or 'low', got {value[:40]!r}",
            param="x-priority",
        )
    return cast(Priority, normalised)
