"""The `ptu` entry point: help, version, unknown verbs."""

from __future__ import annotations

from importlib import metadata

import pytest

from orchestrator.cli.main import main


def test_version_prints_the_installed_distribution_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"ptu {metadata.version('ptu-orchestrator')}"


def test_unknown_verb_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown verb 'nope'" in err


def test_no_verb_prints_help_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "ptu --version" in capsys.readouterr().out
