"""`python -m bench.harness.oracle_worker`: `ptu worker` steering by the simulator's truth.

The worker's own wiring (`orchestrator.worker.main.run`: settings, lanes, throttle,
breaker, retries, results) with one collaborator replaced: the throttle reads
`OracleSource` (the simulator's `/sim/state`, at `PTU_AZURE_OPENAI_ENDPOINT`) instead of
the configured utilisation source. The worker's token events still feed the estimate, so
the ingress and the benchmark's sampler see what they would beside a normal worker. The
product never imports this module: it exists for `ptu bench robustness`'s `oracle` arm.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import httpx2

from bench.harness.oracle import OracleSource
from orchestrator.core.errors import ConfigError
from orchestrator.core.settings import Settings, load_settings
from orchestrator.worker import main as worker


def oracle_source(settings: Settings) -> OracleSource:
    """The oracle on the simulator the worker calls (its CA from SSL_CERT_FILE, as the SDK's)."""
    if not settings.azure_openai_endpoint:
        raise ConfigError("PTU_AZURE_OPENAI_ENDPOINT: the oracle reads the simulator there")
    return OracleSource(httpx2.AsyncClient(), settings.azure_openai_endpoint)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the worker's flags and run it with the oracle source."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.harness.oracle_worker", description=__doc__.splitlines()[0]
    )
    worker.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return worker.run(args, load_settings(), source=oracle_source)
    except ConfigError as exc:
        print(f"oracle worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
