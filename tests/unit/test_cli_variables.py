"""Every verb's `--help` lists exactly the `PTU_*` variables its code reads.

The list comes from `settings.READ_BY`; this test holds that table to the code. It reads
the verb's module and every project module it imports (also lazily, inside functions),
and collects the settings its live code touches: `<...>settings.<field>` and the
`Settings` methods such code calls (`settings.thresholds(d)` reads the thresholds). A
function counts when its name is used somewhere in those modules (a module imported for
one helper does not lend the verb the fields of its other functions); module-level code
always counts. So a verb that starts reading a variable, or stops, fails here until the
table says so.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.cli.main import VERBS, main
from orchestrator.core.settings import Settings
from orchestrator.core.variables import READ_BY, variable, variables_read_by

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "ingress", "bench", "simulator", "devstack")
FIELDS = frozenset(Settings.model_fields)
DISPLAY_ONLY = frozenset({"effective_configuration"})
"""Functions that read every setting to log it, which is not behaviour."""


def _path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.exists():
            return candidate
    return None


def _imports(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _closure(module: str) -> dict[str, ast.Module]:
    trees: dict[str, ast.Module] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in trees or name.split(".")[0] not in PACKAGES:
            continue
        path = _path(name)
        if path is None:
            continue
        trees[name] = tree = ast.parse(path.read_text())
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += list(_imports(tree))
    trees.pop("orchestrator.core.settings", None)  # its validators read fields to check them
    return trees


def _on_settings(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id.endswith("settings")
    return isinstance(node, ast.Attribute) and node.attr.endswith("settings")


def _method_fields() -> dict[str, set[str]]:
    """Fields each public `Settings` method reads through `self`."""
    path = _path("orchestrator.core.settings")
    assert path is not None
    tree = ast.parse(path.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    on_self = {
        fn.name: {
            n.attr
            for n in ast.walk(fn)
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and n.value.id == "self"
        }
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_")
    }
    # a method that reads a view (`self.throttle`) reads the view's fields
    fields = {name: attrs & FIELDS for name, attrs in on_self.items()}
    for _ in on_self:
        for name, attrs in on_self.items():
            for other in attrs & set(on_self):
                fields[name] |= fields[other]
    return fields


def _used_names(trees: dict[str, ast.Module]) -> set[str]:
    used: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.alias):
                used.add(node.asname or node.name.rsplit(".", 1)[-1])
    return used


def _live_nodes(tree: ast.Module, used: set[str]) -> Iterator[ast.AST]:
    """Module-level code, and the functions (with their nested ones) whose name is used."""

    def visit(node: ast.AST, owner: str | None) -> Iterator[ast.AST]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                dunder = child.name.startswith("__")
                live = (owner in used) if dunder and owner else child.name in used
                if live and child.name not in DISPLAY_ONLY:
                    yield from ast.walk(child)
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, child.name)
            else:
                yield from ast.walk(child)

    yield from visit(tree, None)


def fields_read(module: str) -> set[str]:
    """Settings fields the live code of `module` and its imports reads."""
    trees = _closure(module)
    used = _used_names(trees)
    methods = _method_fields()
    found: set[str] = set()
    for tree in trees.values():
        for node in _live_nodes(tree, used):
            if isinstance(node, ast.Attribute) and _on_settings(node.value):
                if node.attr in FIELDS:
                    found.add(node.attr)
                found |= methods.get(node.attr, set())
    return found


def help_text(verb: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_setting_is_tagged_with_the_verbs_that_read_it() -> None:
    assert set(READ_BY) == FIELDS
    unknown = {v for verbs in READ_BY.values() for v in verbs} - set(VERBS)
    assert not unknown, f"READ_BY names verbs that do not exist: {unknown}"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_the_table_matches_what_the_code_reads(verb: str) -> None:
    module, _ = VERBS[verb]
    tagged = {name for name, verbs in READ_BY.items() if verb in verbs}
    read = fields_read(module)
    assert not read - tagged, f"ptu {verb} reads but READ_BY omits: {sorted(read - tagged)}"
    assert not tagged - read, f"READ_BY says ptu {verb} reads: {sorted(tagged - read)}"


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_help_lists_exactly_the_variables_the_verb_reads(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_text(verb, capsys)
    _, _, epilog = text.partition("\nenvironment")
    listed = re.findall(r"\b(?:PTU|OTEL|APPLICATIONINSIGHTS)_[A-Z0-9_]+", epilog)
    assert listed == variables_read_by(verb)
    expected = sorted(variable(f) for f in fields_read(VERBS[verb][0]))
    assert sorted(listed) == expected
    if not listed:
        assert "reads no PTU_* variable" in text


def test_the_analysis_sees_reads_through_settings_methods() -> None:
    # the worker calls settings.thresholds(d) and settings.retry_policy(), nothing else reads
    # PTU_MAX_ATTEMPTS: without method tracking these would be missed
    read = fields_read("orchestrator.worker.main")
    assert {"lower_threshold", "upper_threshold", "max_attempts", "backoff_max_s"} <= read
    # status imports the breaker module for read_view only: breaker_config is not its code
    assert "breaker_failure_rate" not in fields_read("orchestrator.cli.status")


def test_client_verbs_read_the_ingress_url(capsys: pytest.CaptureFixture[str]) -> None:
    for verb in ("submit", "result", "batches"):
        text = help_text(verb, capsys)
        assert "PTU_INGRESS_URL" in text and "http://127.0.0.1:8080" in text
