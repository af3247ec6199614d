"""`PTU_CALIBRATION`: whether the estimate learns from the deployment's own signals.

`auto` (the default) steps the filter (`filter.py`) with every signal a token event
carries and the Azure Monitor minute; `off` steps it with our charges alone, the open-loop
token-event model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from orchestrator.calls.signals import UTILISATION_HEADER, parse_utilisation
from orchestrator.utilisation.estimate.state import FilterParams

CalibrationMode = Literal["auto", "off"]

DEFAULT_PARAMS = FilterParams()


def params_for(mode: CalibrationMode) -> FilterParams | None:
    """The filter of `PTU_CALIBRATION` (None = off: the open-loop model alone)."""
    return DEFAULT_PARAMS if mode == "auto" else None


def header_utilisation(headers: Mapping[str, str]) -> float | None:
    """The deployment's utilisation header of a response, as a fraction."""
    return parse_utilisation(headers.get(UTILISATION_HEADER))
