"""How a bad `PTU_*` variable is reported: one line naming the variable (DESIGN.md §5).

Pydantic's errors are read from their structured fields (`loc`, `type`, `ctx`), never
from their text: a model-level check names its field through `invalid_setting`, a
malformed JSON value is named by the environment source (`EnvSource`) as it decodes.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import EnvSettingsSource

from orchestrator.core.errors import ConfigError


def invalid_setting(field: str, message: str) -> PydanticCustomError:
    """A model-level error that names its field in structured form (`ctx["field"]`)."""
    return PydanticCustomError("invalid_setting", "{message}", {"field": field, "message": message})


class EnvSource(EnvSettingsSource):
    """The `PTU_*` environment, with malformed JSON reported as the variable that holds it."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """Decode a JSON-valued variable; ConfigError naming it when it is not JSON."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError as exc:
            raise ConfigError(f"PTU_{field_name.upper()}: not valid JSON ({exc})") from exc


def _variable(loc: tuple[int | str, ...]) -> str:
    """The variable an error location names (a `PTU_*` name with `[index.field]`, or an
    `OTEL_*` alias)."""
    if not loc:
        return "PTU_*"
    first = str(loc[0])
    head = first if first.isupper() else f"PTU_{first.upper()}"  # an alias: OTEL_*
    rest = ".".join(str(p) for p in loc[1:])
    return f"{head} [{rest}]" if rest else head


def _message(err: ErrorDetails) -> tuple[tuple[int | str, ...], str]:
    """Where an error is and what it says, from pydantic's structured fields, not its text."""
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    if err["type"] == "invalid_setting":  # a model-level check names its field
        return (str(ctx["field"]), *loc), str(ctx["message"])
    if err["type"] == "value_error" and "error" in ctx:  # a validator's own ValueError
        return loc, str(ctx["error"])
    return loc, err["msg"]


def one_line(exc: ValidationError) -> str:
    """The first error of a failed validation as `VARIABLE: what is wrong`."""
    loc, msg = _message(exc.errors()[0])
    return f"{_variable(loc)}: {msg}"
