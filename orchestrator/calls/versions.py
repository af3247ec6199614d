"""What a data-plane `api-version` of Azure OpenAI accepts, read once for every caller.

`stream_options` (and with it `include_usage`, the usage chunk at the end of a stream)
is accepted by the dated api-versions from 2024-10-21 (GA) on and by the v1 API, which
takes no dated version (none, or `preview` / `latest` / `v1`); older dated versions answer
400 "Unrecognized request argument supplied: stream_options" (openai/openai-python#1469).
The ingress asks for the usage chunk only where it is accepted (else it counts a stream's
usage from what it relayed); the simulator refuses it where Azure does.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs

STREAM_OPTIONS_SINCE = "2024-10-21"
"""The first dated api-version that takes `stream_options`."""
_DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:-preview)?$")


def accepts_stream_options(api_version: str | None) -> bool:
    """Whether `api_version` takes `stream_options`; an undated one (the v1 API) does."""
    match = _DATED.match((api_version or "").strip())
    return match is None or match.group(1) >= STREAM_OPTIONS_SINCE


def api_version_of(query: str) -> str | None:
    """The `api-version` of a query string (`?api-version=2024-10-21&...`), if any."""
    values = parse_qs(query.lstrip("?")).get("api-version")
    return values[-1] if values else None
