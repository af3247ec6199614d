from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.schemas import QueuedRequest, ResultDocument, error_object
from orchestrator.core.tokens import usage_counts


@pytest.mark.parametrize(
    ("body", "message", "expected"),
    [
        ({"error": {"code": "bad", "message": "m"}}, "x", {"code": "bad", "message": "m"}),
        ({"error": {"code": "bad"}}, "fallback", {"code": "bad", "message": "fallback"}),
        ({"error": "text"}, None, {"code": "400", "message": "text"}),
        ({"other": 1}, None, {"code": "400"}),
        (None, "no body", {"code": "400", "message": "no body"}),
    ],
)
def test_error_object_keeps_the_upstream_error(
    body: dict[str, Any] | None, message: str | None, expected: dict[str, Any]
) -> None:
    assert error_object(400, body, message) == expected


def test_result_for_request_carries_the_request_identity() -> None:
    req = QueuedRequest(
        id="r1", deployment="d", body={}, custom_id="c", reply_key="k",
        enqueued_at=10.0, deadline=20.0, batch_id="b",
    )  # fmt: skip
    doc = ResultDocument.for_request(req, "expired", completed_at=15.0, attempts=2)
    assert (doc.id, doc.custom_id, doc.deployment, doc.batch_id) == ("r1", "c", "d", "b")
    assert (doc.enqueued_at, doc.completed_at, doc.attempts, doc.status) == (
        10.0,
        15.0,
        2,
        "expired",
    )


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, (0, 0, 0)),
        ({"prompt_tokens": 5, "completion_tokens": 3}, (5, 3, 0)),
        ({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2}}, (5, 0, 2)),
        (
            {"prompt_tokens": True, "completion_tokens": -1, "prompt_tokens_details": None},
            (0, 0, 0),
        ),
        ({"prompt_tokens": 2.5, "completion_tokens": "7"}, (0, 0, 0)),
    ],
)
def test_usage_counts(usage: dict[str, Any] | None, expected: tuple[int, int, int]) -> None:
    assert usage_counts(usage) == expected
