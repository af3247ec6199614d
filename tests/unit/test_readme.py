"""The README is the front door: it must document every variable the settings read."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_configuration_table() -> None:
    text = README.read_text()
    variables = [
        field.validation_alias if isinstance(field.validation_alias, str) else f"PTU_{name.upper()}"
        for name, field in Settings.model_fields.items()
    ]  # a field with an alias reads a standard variable (OTEL_*)
    missing = [v for v in variables if f"`{v}`" not in text]
    assert not missing, f"README lacks: {missing}"


def test_readme_gives_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
