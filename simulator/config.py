"""Simulator configuration: deployments and latency, parsed once from the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orchestrator.core.errors import ConfigError
from simulator.openai.background import parse_profile
from simulator.openai.header import DEFAULT_LAG_S, DEFAULT_SMOOTHING_S, HEADER_MODES, MAX_LAG_S
from simulator.openai.meter import MODELS as UTILISATION_MODELS
from simulator.openai.models import capacity as model_capacity

DEFAULT_RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sim"
    "/providers/Microsoft.CognitiveServices/accounts/sim"
)
DEFAULT_DEPLOYMENT = "gpt-4o-mini-ptu=gpt-4o-mini:15"
# Azure grants 6 requests per minute for every 1,000 tokens per minute of standard quota.
RPM_PER_1000_TPM = 6.0
# Output weight for standard deployments of models missing from the capacity table.
DEFAULT_OUTPUT_WEIGHT = 1.0

Kind = Literal["provisioned", "standard", "globalbatch"]


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One simulated deployment: `NAME=MODEL:PTUS`, `NAME=MODEL:TPM:standard` or
    `NAME=MODEL:TPM:globalbatch` (a Global Batch deployment: Files + Batches API)."""

    name: str
    model: str
    kind: Kind
    ptus: float = 0.0
    tpm: float = 0.0
    input_tpm_per_ptu: float = 0.0
    output_weight: float = DEFAULT_OUTPUT_WEIGHT
    spillover: str | None = None
    """The standard deployment a provisioned one spills to (`NAME=MODEL:PTUS:spill=STD`)."""

    @property
    def capacity_tpm(self) -> float:
        """Input-token equivalents per minute (provisioned) or the TPM quota (standard)."""
        return self.ptus * self.input_tpm_per_ptu if self.kind == "provisioned" else self.tpm

    @property
    def rpm(self) -> float:
        """Requests per minute of a standard deployment (6 per 1,000 TPM)."""
        return self.tpm / 1000.0 * RPM_PER_1000_TPM


SPEC_FORMS = (
    "NAME=MODEL:PTUS, NAME=MODEL:PTUS:spill=STD, NAME=MODEL:TPM:standard "
    "or NAME=MODEL:TPM:globalbatch"
)


def parse_deployment(text: str) -> DeploymentSpec:
    """Parse `NAME=MODEL:PTUS[:spill=STD]` (provisioned) or `NAME=MODEL:TPM:standard`."""
    name, sep, rest = text.partition("=")
    parts = rest.split(":")
    if not sep or not name or len(parts) not in (2, 3) or not parts[0]:
        raise ConfigError(f"--deployment {text!r}: expected {SPEC_FORMS}")
    model = parts[0]
    try:
        amount = float(parts[1])
    except ValueError:
        raise ConfigError(f"--deployment {text!r}: {parts[1]!r} is not a number") from None
    if amount <= 0:
        raise ConfigError(f"--deployment {text!r}: capacity must be positive")
    capacity = model_capacity(model)
    spill, is_spill, target = parts[-1].partition("=") if len(parts) == 3 else ("", "", "")
    if len(parts) == 3 and not (is_spill and spill == "spill"):
        if parts[2] not in ("standard", "globalbatch"):
            raise ConfigError(
                f"--deployment {text!r}: the third field can only be 'standard', "
                "'globalbatch' or 'spill=STD'"
            )
        weight = capacity.output_weight if capacity else DEFAULT_OUTPUT_WEIGHT
        kind: Kind = "standard" if parts[2] == "standard" else "globalbatch"
        return DeploymentSpec(name, model, kind, tpm=amount, output_weight=weight)
    if capacity is None:
        raise ConfigError(f"--deployment {text!r}: unknown model {model!r} has no PTU capacity")
    return DeploymentSpec(
        name,
        model,
        "provisioned",
        ptus=amount,
        input_tpm_per_ptu=float(capacity.input_tpm_per_ptu),
        output_weight=capacity.output_weight,
        spillover=_spill_target(text, target) if is_spill else None,
    )


def _spill_target(text: str, target: str) -> str:
    if not target or target == text.partition("=")[0]:
        raise ConfigError(f"--deployment {text!r}: spill= names another, standard deployment")
    return target


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything the simulator app needs; built by `ptu simulator` or by tests."""

    deployments: tuple[DeploymentSpec, ...] = field(
        default_factory=lambda: (parse_deployment(DEFAULT_DEPLOYMENT),)
    )
    window_s: float = 60.0
    tbt_ms: float = 10.0
    ttft_ms: float = 50.0
    monitor_lag_s: float = 90.0
    seed: int = 0
    api_key: str | None = None
    resource_id: str = DEFAULT_RESOURCE_ID
    utilisation_model: str = "bucket"
    utilisation_header: str = "exact"
    header_lag_s: float = DEFAULT_LAG_S
    header_smoothing_s: float = DEFAULT_SMOOTHING_S
    background_share: float = 0.0
    background_profile: str | None = None
    """`constant:S` or `square:LOW,HIGH,HALF_PERIOD_S`; replaces `background_share`."""
    flex_contention: float = 0.0
    """Share of `service_tier: "flex"` calls a standard deployment refuses with 429."""
    batch_turnaround_s: float = 60.0
    """Seconds from a Global Batch batch's creation to its answers."""
    batch_failure_rate: float = 0.0
    batch_expiry_rate: float = 0.0

    def __post_init__(self) -> None:
        self._check_deployments()
        self._check_realities()
        if self.window_s <= 0:
            raise ConfigError("--window-s must be positive")
        if self.tbt_ms < 0 or self.ttft_ms < 0:
            raise ConfigError("--tbt-ms and --ttft-ms must not be negative")

    def _check_deployments(self) -> None:
        names = [d.name for d in self.deployments]
        if len(set(names)) != len(names):
            raise ConfigError(f"--deployment: duplicate deployment names in {names}")
        kinds = {d.name: d.kind for d in self.deployments}
        for d in self.deployments:
            if d.spillover is not None and kinds.get(d.spillover) != "standard":
                raise ConfigError(
                    f"--deployment {d.name}: spill={d.spillover} is not a standard deployment"
                    " of this simulator"
                )

    def _check_realities(self) -> None:
        if self.utilisation_model not in UTILISATION_MODELS:
            raise ConfigError(f"--utilisation-model must be one of {', '.join(UTILISATION_MODELS)}")
        if self.utilisation_header not in HEADER_MODES:
            raise ConfigError(f"--utilisation-header must be one of {', '.join(HEADER_MODES)}")
        if not 0.0 <= self.header_lag_s <= MAX_LAG_S:
            raise ConfigError(f"--header-lag-s must be between 0 and {MAX_LAG_S:g}")
        if not 0.0 <= self.header_smoothing_s < float("inf"):
            raise ConfigError("--header-smoothing-s must be a non-negative number")
        for flag, rate in (
            ("--flex-contention", self.flex_contention),
            ("--batch-failure-rate", self.batch_failure_rate),
            ("--batch-expiry-rate", self.batch_expiry_rate),
        ):
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"{flag} must be between 0 and 1")
        if self.batch_turnaround_s < 0:
            raise ConfigError("--batch-turnaround-s must not be negative")
        if not 0.0 <= self.background_share <= 1.0:
            raise ConfigError("--background-share must be between 0 and 1")
        if self.background_profile is not None:
            if self.background_share:
                raise ConfigError("give --background-share or --background-profile, not both")
            try:
                parse_profile(self.background_profile)
            except ValueError as exc:
                raise ConfigError(f"--background-profile: {exc}") from None

    @property
    def background(self) -> str | float:
        """What the deployments' bypass traffic follows: the profile, else the share."""
        return self.background_profile or self.background_share

    @classmethod
    def from_specs(cls, specs: list[str] | tuple[str, ...], **kwargs: object) -> SimConfig:
        """Build a config from `--deployment` strings (the default one when empty)."""
        parsed = tuple(parse_deployment(s) for s in (specs or [DEFAULT_DEPLOYMENT]))
        return cls(deployments=parsed, **kwargs)  # type: ignore[arg-type]
