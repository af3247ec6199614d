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
