"""Output-limit sizing's pure decisions, from tables: quantile, sized limit, cut short, re-run."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.core.schemas import QueuedRequest
from orchestrator.worker.sizing import (
    Plan,
    SizingParams,
    cut_short,
    limit_fields,
    output_length,
    quantile,
    sized_limit,
)

PARAMS = SizingParams()


@pytest.mark.parametrize(
    ("samples", "q", "expected"),
    [
        ([7], 0.95, 7),
        (list(range(1, 21)), 0.95, 19),  # nearest rank: ceil(0.95 x 20) = 19th
        (list(range(1, 101)), 0.95, 95),
        (list(range(100, 0, -1)), 0.95, 95),  # order does not matter
        (list(range(1, 101)), 0.5, 50),
        (list(range(1, 101)), 1.0, 100),
        ([5] * 19 + [1_000], 0.95, 5),  # one outlier in twenty stays above the quantile
        ([5] * 18 + [1_000] * 2, 0.95, 1_000),  # two do not
    ],
)
def test_quantile_is_the_nearest_rank(samples: list[int], q: float, expected: int) -> None:
    assert quantile(samples, q) == expected


@pytest.mark.parametrize(
    ("samples", "caller", "expected", "why"),
    [
        ([100] * 19, 2_000, 2_000, "fewer than 20 lengths: the caller's limit"),
        ([100] * 20, 2_000, 125, "p95 100 x 1.25"),
        (list(range(81, 121)), 2_000, 148, "p95 of 81..120 is 118: ceil(147.5)"),
        ([10] * 50, 2_000, 64, "never below the floor"),
        ([100] * 20, 100, 100, "never above the caller's limit"),
        ([100] * 20, 160, 160, "125 saves less than a quarter of 160: not worth a re-run"),
        ([100] * 20, 167, 125, "125 is within three quarters of 167"),
        ([1_900] * 200, 2_000, 2_000, "answers as long as the limit: the caller's"),
        ([100] * 190 + [3_000] * 10, 2_000, 125, "5 % long answers stay above the quantile"),
        ([100] * 189 + [3_000] * 11, 2_000, 2_000, "5.5 % long: the quantile is long"),
    ],
)
def test_sized_limit(samples: list[int], caller: int, expected: int, why: str) -> None:
    assert sized_limit(samples, caller, PARAMS) == expected, why


def test_sized_limit_never_rises_above_the_caller_nor_falls_below_the_floor() -> None:
    for p95 in range(1, 3_000, 37):
        for caller in (1, 16, 64, 100, 500, 2_000, 4_000):
            limit = sized_limit([p95] * 20, caller, PARAMS)
            assert limit <= caller
            assert limit == caller or limit >= PARAMS.floor


def test_tunables_change_the_decision() -> None:
    params = SizingParams(quantile=0.5, margin=1.0, floor=1, min_samples=3, min_saving=0.0)
    assert sized_limit([10, 20, 30], 1_000, params) == 20
    assert sized_limit([10, 20], 1_000, params) == 1_000


@pytest.mark.parametrize(
    ("body", "endpoint", "expected"),
    [
        ({"max_tokens": 10}, "chat/completions", ("max_tokens",)),
        ({"max_completion_tokens": 10}, "chat/completions", ("max_completion_tokens",)),
        (
            {"max_tokens": 10, "max_completion_tokens": 20},
            "chat/completions",
            ("max_completion_tokens", "max_tokens"),
        ),
        ({"max_output_tokens": 10}, "responses", ("max_output_tokens",)),
        ({"max_output_tokens": 10}, "chat/completions", ()),
        ({"max_tokens": 10}, "responses", ()),
        ({"max_tokens": None}, "chat/completions", ()),
        ({"max_tokens": True}, "chat/completions", ()),
        ({}, "chat/completions", ()),
    ],
)
def test_limit_fields(body: dict[str, Any], endpoint: Any, expected: tuple[str, ...]) -> None:
    assert limit_fields(body, endpoint) == expected


def _chat(*reasons: str, completion: int = 50) -> dict[str, Any]:
    return {
        "choices": [{"index": i, "finish_reason": r} for i, r in enumerate(reasons)],
        "usage": {"prompt_tokens": 9, "completion_tokens": completion, "total_tokens": 9},
    }


def _response(status: str, reason: str | None = None, output: int = 50) -> dict[str, Any]:
    return {
        "status": status,
        "incomplete_details": {"reason": reason} if reason else None,
        "usage": {"input_tokens": 9, "output_tokens": output, "total_tokens": 9 + output},
    }


@pytest.mark.parametrize(
    ("answer", "endpoint", "expected"),
    [
        (_chat("stop"), "chat/completions", False),
        (_chat("length"), "chat/completions", True),
        (_chat("stop", "length"), "chat/completions", True),  # n > 1: any choice
        (_chat("content_filter"), "chat/completions", False),
        ({"choices": "x"}, "chat/completions", False),
        (_response("completed"), "responses", False),
        (_response("incomplete", "max_output_tokens"), "responses", True),
        (_response("incomplete", "content_filter"), "responses", False),
    ],
)
def test_cut_short(answer: dict[str, Any], endpoint: Any, expected: bool) -> None:
    assert cut_short(answer, endpoint) is expected


@pytest.mark.parametrize(
    ("answer", "request_body", "expected"),
    [
        (_chat("stop", completion=80), {}, 80),
        (_chat("stop", "stop", completion=81), {"n": 2}, 41),  # per choice, rounded up
        (_response("completed", output=33), {}, 33),
        ({"choices": []}, {}, None),
    ],
)
def test_output_length(answer: dict[str, Any], request_body: Any, expected: int | None) -> None:
    assert output_length(answer, request_body) == expected


def _message(body: dict[str, Any], endpoint: Any = "chat/completions") -> QueuedRequest:
    return QueuedRequest(
        id="r1",
        deployment="dep",
        body=body,
        endpoint=endpoint,
        reply_key="k",
        enqueued_at=0.0,
        deadline=60.0,
    )


def test_a_plan_sends_the_sized_limit_then_the_callers_after_a_cut() -> None:
    original = _message({"messages": [], "max_tokens": 2_000})
    plan = Plan(original, 125)
    assert plan.message.body["max_tokens"] == 125 and not plan.full
    assert original.body["max_tokens"] == 2_000  # the caller's body is never changed

    assert plan.outcome(_chat("length", completion=125)) == (True, None)  # learns nothing
    assert plan.full and plan.message is original
    # the re-run, cut at the caller's own limit: a result, and a length to learn
    assert plan.outcome(_chat("length", completion=2_000)) == (False, 2_000)


def test_a_plan_learns_the_length_of_an_answer_that_fits() -> None:
    plan = Plan(_message({"messages": [], "max_tokens": 2_000}), 125)
    assert plan.outcome(_chat("stop", completion=90)) == (False, 90)
    assert not plan.full  # the next attempt (after an error) stays sized


@pytest.mark.parametrize(
    ("body", "endpoint", "sized", "sent", "full"),
    [
        ({"max_tokens": 2_000}, "chat/completions", None, {"max_tokens": 2_000}, True),
        ({"max_tokens": 2_000}, "chat/completions", 2_000, {"max_tokens": 2_000}, True),
        ({}, "chat/completions", 125, {}, True),  # no limit stated: never sized
        (
            {"max_completion_tokens": 2_000, "max_tokens": 100},
            "chat/completions",
            125,
            {"max_completion_tokens": 125, "max_tokens": 100},
            False,
        ),
        ({"max_output_tokens": 4_000}, "responses", 200, {"max_output_tokens": 200}, False),
    ],
)
def test_plan_limits(
    body: dict[str, Any], endpoint: Any, sized: int | None, sent: dict[str, int], full: bool
) -> None:
    plan = Plan(_message({"input": "x", **body}, endpoint), sized)
    limits = {k: v for k, v in plan.message.body.items() if k.startswith("max_")}
    assert limits == sent and plan.full is full
    assert repr(plan).startswith("<Plan request=r1")


def test_a_responses_plan_reruns_an_answer_cut_at_the_sized_limit() -> None:
    plan = Plan(_message({"input": "x", "max_output_tokens": 4_000}, "responses"), 200)
    assert plan.outcome(_response("incomplete", "max_output_tokens", output=200)) == (True, None)
    assert plan.message.body["max_output_tokens"] == 4_000
