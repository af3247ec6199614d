"""ARCHITECTURE.md names every module under `orchestrator/` and `ingress/`, in its package's row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "ARCHITECTURE.md").read_text()
ROWS = {
    m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_/]+/)` \| (.*) \|$", DOC, re.MULTILINE)
}


def _modules() -> list[Path]:
    found: list[Path] = []
    for top in ("orchestrator", "ingress"):
        found += [p for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py"]
    return sorted(p.relative_to(ROOT) for p in found)


def _row_of(module: Path) -> tuple[str, str]:
    """The row of the deepest package listed in the table that holds `module`."""
    for parent in module.parents:
        key = parent.as_posix() + "/"
        if key in ROWS:
            return key, ROWS[key]
    raise AssertionError(f"{module}: no row of ARCHITECTURE.md holds its package")


def test_the_table_has_rows() -> None:
    assert {"orchestrator/core/", "orchestrator/calls/", "ingress/chat/"} <= set(ROWS)


@pytest.mark.parametrize("module", _modules(), ids=str)
def test_every_module_is_named(module: Path) -> None:
    package, row = _row_of(module)
    # the module by its name, or by its path below the row's package (`dispatch/` + `gate`)
    inner = module.relative_to(package).with_suffix("")
    names = {f"`{module.stem}`", f"`{inner.as_posix()}`"}
    assert any(n in row for n in names), f"{module} is not named in the `{package}` row"
    for sub in inner.parents:
        if sub.name:
            assert f"{sub.as_posix()}/" in row, f"{module}: `{sub}/` is not named in `{package}`"
