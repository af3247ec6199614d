"""The documented prompt-token estimate and the max_tokens budget."""

from __future__ import annotations

import pytest

from orchestrator.core.tokens import estimate_prompt_tokens, requested_max_tokens, text_tokens
from simulator.openai import tokens as simulator_tokens


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("abc", 1), ("abcd", 1), ("abcde", 2)])
def test_text_tokens(text: str, tokens: int) -> None:
    assert text_tokens(text) == tokens


def test_prompt_estimate_counts_overheads_and_parts() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "x" * 40},  # 3 + 10
            {
                "role": "user",
                "content": [{"type": "text", "text": "y" * 8}, {"type": "image_url"}],
            },  # 3 + 2 + 85
            {"role": "user", "content": None, "name": "bob"},  # 3 + 1
        ]
    }
    assert estimate_prompt_tokens(body) == 3 + (3 + 10) + (3 + 2 + 85) + (3 + 1)


def test_prompt_estimate_tolerates_junk() -> None:
    assert estimate_prompt_tokens({}) == 3
    # "oops" as JSON is 6 characters (2 tokens), 5 is 1 character (1 token)
    assert estimate_prompt_tokens({"messages": ["oops", 5]}) == 3 + (3 + 2) + (3 + 1)
    assert estimate_prompt_tokens({"messages": [], "tools": [{"a": 1}]}) == 3 + 3  # 9 chars


def test_the_simulator_charges_the_one_prompt_estimate() -> None:
    # one definition: the simulator's charge and the admit event cannot drift apart
    assert simulator_tokens.estimate_prompt_tokens is estimate_prompt_tokens


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, 100),
        ({"max_tokens": 50}, 50),
        ({"max_tokens": 50, "max_completion_tokens": 70}, 70),
        ({"max_tokens": 0}, 100),
        ({"max_tokens": True}, 100),
        ({"max_tokens": "5"}, 100),
    ],
)
def test_requested_max_tokens(body: dict[str, object], expected: int) -> None:
    assert requested_max_tokens(body, 100) == expected
