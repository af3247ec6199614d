"""The README's simulator section documents every flag, PATCH field and /sim/state field."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from simulator.cli import add_arguments
from simulator.config import parse_deployment
from simulator.openai.deployments import Deployment
from simulator.openai.patch import CHOICES, NUMBERS, PROFILE, SPILLOVER

README = Path(__file__).resolve().parents[2] / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## The simulator\n")
    return text[start : text.index("\n## ", start + 1)]


def test_every_flag_is_documented() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    missing = [f for f in flags if f not in ("--help", "--log-level") and f"`{f}" not in section()]
    assert not missing, f"README's simulator section lacks {missing}"


def test_every_patch_field_is_documented() -> None:
    fields = [*NUMBERS, *CHOICES, PROFILE, SPILLOVER]
    missing = [f for f in fields if f"`{f}`" not in section()]
    assert not missing, f"README's simulator section lacks {missing}"


def test_every_state_field_is_documented() -> None:
    keys: set[str] = set()
    for spec in ("p=gpt-4o:15:spill=s", "s=gpt-4o:1000:standard"):
        d = Deployment(
            parse_deployment(spec), window_s=60, tbt_ms=0, ttft_ms=0, rng=random.Random(0)
        )
        state = d.state(0.0)
        keys |= set(state) | set(state.get("background", {}))
    missing = sorted(k for k in keys if f"`{k}`" not in section())
    assert not missing, f"README's simulator section lacks {missing}"
