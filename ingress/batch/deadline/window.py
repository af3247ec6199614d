"""A batch's deadline: its `completion_window` or `metadata.deadline`.

OpenAI takes `completion_window: "24h"` only; here a window is any whole number of
minutes, hours or days (`"30m"`, `"1h"`, `"4h"`, `"24h"`, `"7d"`), from one minute to
`MAX_WINDOW_S`. `metadata.deadline` (an ISO 8601 time with its zone, e.g.
`2026-12-08T17:00:00Z`) names the instant instead and wins over the window; it must lie
in the future and within the same bound. The deadline is when the batch expires (lines
without a result then get `batch_expired`), and what the overflow planner plans for.
Anything else is one 400 naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from ingress.http.errors import bad_request

MIN_WINDOW_S = 60
MAX_WINDOW_S = 30 * 86_400
"""A batch's hash lives its window plus a day: a month is the longest we keep one."""
UNITS = {"m": 60, "h": 3_600, "d": 86_400}
_WINDOW = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")
DEADLINE_KEY = "deadline"
"""The `metadata` key of an explicit deadline."""


def window_seconds(text: str) -> int:
    """The seconds of a `completion_window` like `24h`; a 400 for anything else."""
    match = _WINDOW.match(text)
    seconds = int(match.group(1)) * UNITS[match.group(2)] if match else 0
    if not MIN_WINDOW_S <= seconds <= MAX_WINDOW_S:
        raise bad_request(
            f"completion_window {text[:40]!r} is not a duration from 1m to 30d "
            "(a whole number of m, h or d, e.g. '24h', '4h', '7d')",
            param="completion_window",
        )
    return seconds


def deadline_of(window: str, metadata: Mapping[str, str] | None, now: float) -> float:
    """The batch's deadline (epoch seconds): `metadata.deadline` if given, else now + window.

    The window is checked either way, so a bad one is refused even beside a deadline.
    """
    seconds = window_seconds(window)
    given = (metadata or {}).get(DEADLINE_KEY)
    if given is None:
        return now + seconds
    try:
        at = datetime.fromisoformat(given.replace("Z", "+00:00"))
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise bad_request(
            f"metadata.deadline {given[:60]!r} is not an ISO 8601 time with a zone "
            "(e.g. 2026-12-08T17:00:00Z)",
            param="metadata.deadline",
        )
    deadline = at.timestamp()
    if not now + MIN_WINDOW_S <= deadline <= now + MAX_WINDOW_S:
        raise bad_request(
            f"metadata.deadline {given[:60]!r} must lie between a minute and 30 days from now",
            param="metadata.deadline",
        )
    return deadline
