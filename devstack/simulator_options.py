"""The flags of the `ptu simulator` a local stack runs, from one typed value."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

API_KEY = "bench-key"
"""Key the harness presents to the simulator."""
DEPLOYMENT = "gpt-4o-mini-ptu"


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """Flags of the `ptu simulator` the harness runs (one provisioned deployment)."""

    deployment: str = DEPLOYMENT
    model: str = "gpt-4o-mini"
    ptus: int = 15
    window_s: float = 10.0
    tbt_ms: float = 10.0
    ttft_ms: float = 50.0
    monitor_lag_s: float = 15.0
    https: bool = False
    seed: int = 0
    served_ptus: float | None = None
    """What the simulator serves when it differs from `ptus`, what the orchestrator is told."""
    utilisation_model: str = "bucket"
    utilisation_header: str = "exact"
    background_share: float = 0.0
    header_lag_s: float | None = None
    """`--header-lag-s` (with the `lagged` header); None: the simulator's default."""
    header_smoothing_s: float | None = None
    """`--header-smoothing-s` (with the `smoothed` header); None: the simulator's default."""
    background_profile: str | None = None
    """`--background-profile` (`square:LOW,HIGH,HALF_PERIOD_S`); None: a steady share."""
    flex_contention: float | None = None
    """`--flex-contention` (share of Flex calls refused with 429); None: the default, 0."""
    batch_turnaround_s: float | None = None
    """`--batch-turnaround-s` of globalbatch deployments; None: the simulator's default."""
    api_key: str = API_KEY
    """The key the simulator requires (and the orchestrator presents)."""
    specs: tuple[str, ...] = ()
    """`--deployment` specs that replace the single deployment above (`ptu up`)."""

    def argv(self, port: int, tls_dir: Path) -> list[str]:
        """Command-line flags for `ptu simulator`."""
        served = self.ptus if self.served_ptus is None else self.served_ptus
        specs = self.specs or (f"{self.deployment}={self.model}:{served:g}",)
        args = [
            "--port", str(port),
            *(arg for spec in specs for arg in ("--deployment", spec)),
            "--window-s", f"{self.window_s:g}",
            "--tbt-ms", f"{self.tbt_ms:g}",
            "--ttft-ms", f"{self.ttft_ms:g}",
            "--monitor-lag-s", f"{self.monitor_lag_s:g}",
            "--seed", str(self.seed),
            "--utilisation-model", self.utilisation_model,
            "--utilisation-header", self.utilisation_header,
            "--api-key", self.api_key,
            "--log-level", "warning",
        ]  # fmt: skip
        optional = (
            # the bypass traffic follows a profile or a steady share, never both
            (
                "--background-share",
                self.background_share if self.background_profile is None else None,
            ),
            ("--header-lag-s", self.header_lag_s),
            ("--header-smoothing-s", self.header_smoothing_s),
            ("--background-profile", self.background_profile),
            ("--flex-contention", self.flex_contention),
            ("--batch-turnaround-s", self.batch_turnaround_s),
        )
        for flag, value in optional:  # left out when unset: the simulator's defaults
            if value is not None:
                args += [flag, value if isinstance(value, str) else f"{value:g}"]
        if self.https:
            args += ["--https", "--tls-dir", str(tls_dir)]
        return args

    def deployments_json(self) -> str:
        """The matching `PTU_DEPLOYMENTS` value."""
        return json.dumps([{"name": self.deployment, "model": self.model, "ptus": self.ptus}])
