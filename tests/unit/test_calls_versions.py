"""Which api-versions take `stream_options` (the ingress asks for usage only there)."""

from __future__ import annotations

import pytest

from orchestrator.calls.versions import accepts_stream_options, api_version_of


@pytest.mark.parametrize(
    ("version", "accepted"),
    [
        ("2024-10-21", True),
        ("2025-04-01-preview", True),
        ("2024-12-01-preview", True),
        ("2024-10-01-preview", False),
        ("2024-06-01", False),
        ("2024-02-01", False),
        ("2023-05-15", False),
        (None, True),  # the v1 API takes no version
        ("preview", True),
        ("latest", True),
        ("v1", True),
    ],
)
def test_stream_options_from_2024_10_21_and_on_the_v1_api(
    version: str | None, accepted: bool
) -> None:
    assert accepts_stream_options(version) is accepted


@pytest.mark.parametrize(
    ("query", "version"),
    [
        ("?api-version=2024-06-01", "2024-06-01"),
        ("?x=1&api-version=2024-10-21&y=2", "2024-10-21"),
        ("api-version=preview", "preview"),
        ("", None),
        ("?other=1", None),
    ],
)
def test_the_api_version_of_a_query(query: str, version: str | None) -> None:
    assert api_version_of(query) == version
