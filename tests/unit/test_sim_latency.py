"""Latency model: TTFT grows with the prompt; TBT per token; zero means instant."""

from __future__ import annotations

import pytest

from simulator.openai.latency import generation_s, total_s, ttft_s


@pytest.mark.parametrize(
    ("ttft_ms", "prompt", "spike_ms", "expected"),
    [
        (50.0, 0, 0.0, 0.050),
        (50.0, 1_000, 0.0, 0.100),
        (50.0, 3_000, 0.0, 0.200),
        (50.0, 0, 2_000.0, 2.050),
        (0.0, 100_000, 0.0, 0.0),
    ],
)
def test_ttft(ttft_ms: float, prompt: int, spike_ms: float, expected: float) -> None:
    assert ttft_s(ttft_ms, prompt, spike_ms) == pytest.approx(expected)


def test_ttft_grows_with_prompt() -> None:
    values = [ttft_s(50.0, p) for p in range(0, 10_000, 500)]
    assert values == sorted(values) and values[0] < values[-1]


@pytest.mark.parametrize(
    ("tbt_ms", "n", "expected"), [(10.0, 100, 1.0), (30.0, 0, 0.0), (0.0, 5_000, 0.0)]
)
def test_generation(tbt_ms: float, n: int, expected: float) -> None:
    assert generation_s(tbt_ms, n) == pytest.approx(expected)


def test_total_and_instant() -> None:
    assert total_s(50.0, 10.0, 1_000, 100) == pytest.approx(1.1)
    assert total_s(0.0, 0.0, 50_000, 4_000) == 0.0
