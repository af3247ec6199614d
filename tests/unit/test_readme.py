"""The README is the front door: it must document every PTU_* variable."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    missing = [
        f"PTU_{name.upper()}"
        for name in Settings.model_fields
        if f"`PTU_{name.upper()}`" not in text
    ]
    assert not missing, f"README lacks: {missing}"


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
