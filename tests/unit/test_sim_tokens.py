"""Prompt estimate, admission estimate and deterministic completion lengths."""

from __future__ import annotations

import pytest

from simulator.openai import tokens


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "user", "content": "abcd" * 10}]}, 3 + 3 + 10),
        ({"messages": [{"role": "user", "content": "abcde"}]}, 3 + 3 + 2),
        ({"messages": [{"role": "user", "name": "x", "content": ""}]}, 3 + 3 + 1),
        (
            {
                "messages": [
                    {"role": "system", "content": "abcd"},
                    {"role": "user", "content": [{"type": "text", "text": "abcdefgh"}]},
                ]
            },
            3 + 3 + 1 + 3 + 2,
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 3 + 3 + 85),
        ({"messages": [{"role": "user", "content": None}], "tools": "abcd"}, 3 + 3 + 2),
    ],
)
def test_prompt_estimate(body: dict[str, object], expected: int) -> None:
    assert tokens.estimate_prompt_tokens(body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, None),
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
        ({"max_tokens": None}, None),
    ],
)
def test_validated_max_tokens(body: dict[str, object], expected: int | None) -> None:
    assert tokens.validated_max_tokens(body) == expected


@pytest.mark.parametrize("bad", [0, -3, "10", 2.5, True])
def test_validated_max_tokens_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        tokens.validated_max_tokens({"max_tokens": bad})


def test_admission_estimate_when_absent() -> None:
    assert tokens.admission_output_tokens(None) == tokens.DEFAULT_MAX_TOKENS_ESTIMATE == 1_000
    assert tokens.admission_output_tokens(64) == 64


@pytest.mark.parametrize(
    ("fraction", "max_tokens", "forced", "expected"),
    [
        (0.0, 100, None, 20),  # 20 % of max_tokens at the bottom
        (0.999999, 100, None, 100),  # never above max_tokens
        (0.5, 100, None, 60),
        (0.0, 1, None, 1),
        (0.0, None, None, 16),
        (0.999999, None, None, 512),
        (0.3, 100, 7, 7),  # forced
        (0.3, 100, 500, 100),  # forced, capped at max_tokens
        (0.3, None, 900, 900),
        (0.3, 50, -2, 0),
    ],
)
def test_completion_length(
    fraction: float, max_tokens: int | None, forced: int | None, expected: int
) -> None:
    assert tokens.completion_length(fraction, max_tokens, forced) == expected


def test_fraction_is_deterministic_per_seed_and_content() -> None:
    a = [{"role": "user", "content": "hello"}]
    b = [{"role": "user", "content": "hello!"}]
    assert tokens.content_fraction(0, a) == tokens.content_fraction(0, a)
    assert tokens.content_fraction(0, a) != tokens.content_fraction(1, a)
    assert tokens.content_fraction(0, a) != tokens.content_fraction(0, b)
    values = [tokens.content_fraction(s, a) for s in range(200)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.35 < sum(values) / len(values) < 0.65  # spread, not constant


@pytest.mark.parametrize(
    ("fraction", "effort", "bound", "expected"),
    [
        (0.0, None, None, tokens.REASONING_MIN),  # medium when not given
        (0.999_999, "medium", None, tokens.REASONING_MAX),
        (0.5, "medium", None, 416),  # 64 + floor(0.5 x 705)
        (0.5, "low", None, 208),
        (0.5, "high", None, 832),
        (0.5, "minimal", None, 42),
        (0.5, "high", 300, 300),  # within max_completion_tokens
        (0.0, "minimal", None, 6),
        (0.5, "unknown", None, 416),  # validated at parse time; medium otherwise
    ],
)
def test_reasoning_length(
    fraction: float, effort: str | None, bound: int | None, expected: int
) -> None:
    assert tokens.reasoning_length(fraction, effort, bound) == expected


def test_reasoning_fraction_is_deterministic_and_not_the_content_fraction() -> None:
    said = [{"role": "user", "content": "x"}]
    assert tokens.reasoning_fraction(1, said) == tokens.reasoning_fraction(1, said)
    assert tokens.reasoning_fraction(1, said) != tokens.content_fraction(1, said)
    assert 0.0 <= tokens.reasoning_fraction(2, said) < 1.0
