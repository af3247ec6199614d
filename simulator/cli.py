"""`ptu simulator`: serve the Azure OpenAI PTU simulator under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

import structlog

from orchestrator.core.logs import configure
from orchestrator.core.runtime import run_until_signal
from orchestrator.core.settings import Settings
from simulator.app import create_app
from simulator.config import DEFAULT_DEPLOYMENT, DEFAULT_RESOURCE_ID, SimConfig
from simulator.openai.header import DEFAULT_LAG_S, DEFAULT_SMOOTHING_S, HEADER_MODES
from simulator.openai.meter import MODELS as UTILISATION_MODELS
from simulator.server import ForegroundServer, uvicorn_config
from simulator.tls import write_self_signed

log = structlog.get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the simulator's flags."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--deployment",
        action="append",
        default=[],
        metavar="SPEC",
        help="NAME=MODEL:PTUS, NAME=MODEL:TPM:standard or NAME=MODEL:TPM:globalbatch"
        f" (repeatable; {DEFAULT_DEPLOYMENT})",
    )
    parser.add_argument("--window-s", type=float, default=60.0, help="seconds of capacity = 100 %%")
    parser.add_argument("--tbt-ms", type=float, default=10.0, help="time between tokens")
    parser.add_argument(
        "--ttft-ms", type=float, default=50.0, help="base time to first token, +1x per 1k prompt"
    )
    parser.add_argument("--monitor-lag-s", type=float, default=90.0, help="metrics ingestion lag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--utilisation-model",
        choices=UTILISATION_MODELS,
        default="bucket",
        help="bucket: level of a bucket drained at capacity; sliding: charges over the window",
    )
    parser.add_argument(
        "--utilisation-header",
        choices=HEADER_MODES,
        default="exact",
        help="noisy: the value of 1 s earlier +/- up to 5 points; lagged: the value of"
        " --header-lag-s earlier; smoothed: a moving average (--header-smoothing-s);"
        " absent: no header",
    )
    parser.add_argument(
        "--header-lag-s",
        type=float,
        default=DEFAULT_LAG_S,
        metavar="S",
        help="lagged header: the true level of S seconds earlier",
    )
    parser.add_argument(
        "--header-smoothing-s",
        type=float,
        default=DEFAULT_SMOOTHING_S,
        metavar="S",
        help="smoothed header: exponential moving average with time constant S seconds",
    )
    parser.add_argument(
        "--background-share",
        type=float,
        default=0.0,
        metavar="S",
        help="share of capacity consumed by traffic that bypasses everything (0..1)",
    )
    parser.add_argument(
        "--background-profile",
        default=None,
        metavar="PROFILE",
        help="bypass traffic over time: square:LOW,HIGH,HALF_PERIOD_S alternates between the"
        " two shares every HALF_PERIOD_S seconds, starting LOW (or constant:S)",
    )
    parser.add_argument(
        "--flex-contention", type=float, default=0.0, metavar="P",
        help='share of service_tier "flex" calls a standard deployment refuses with 429 (0..1)',
    )  # fmt: skip
    parser.add_argument(
        "--batch-turnaround-s", type=float, default=60.0, metavar="S",
        help="globalbatch deployments: seconds from a batch's creation to its answers",
    )  # fmt: skip
    parser.add_argument(
        "--batch-failure-rate", type=float, default=0.0, metavar="F",
        help="globalbatch: share of lines answered with a 500 in the error file",
    )  # fmt: skip
    parser.add_argument(
        "--batch-expiry-rate", type=float, default=0.0, metavar="F",
        help="globalbatch: share of lines left unprocessed (the batch ends expired)",
    )  # fmt: skip
    parser.add_argument("--https", action="store_true", help="serve TLS with a throwaway CA")
    parser.add_argument("--tls-dir", type=Path, default=None, help="where --https writes ca.pem")
    parser.add_argument("--resource-id", default=DEFAULT_RESOURCE_ID)
    parser.add_argument("--api-key", default=None, help="required key (default: any non-empty)")
    parser.add_argument("--log-level", default="info")


def _uvloop() -> None:
    # uvloop roughly doubles the requests per second one process serves
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Serve until SIGINT/SIGTERM."""
    configure(args.log_level)
    config = SimConfig.from_specs(
        args.deployment,
        window_s=args.window_s,
        tbt_ms=args.tbt_ms,
        ttft_ms=args.ttft_ms,
        monitor_lag_s=args.monitor_lag_s,
        seed=args.seed,
        api_key=args.api_key,
        resource_id=args.resource_id,
        utilisation_model=args.utilisation_model,
        utilisation_header=args.utilisation_header,
        header_lag_s=args.header_lag_s,
        header_smoothing_s=args.header_smoothing_s,
        background_share=args.background_share,
        background_profile=args.background_profile,
        flex_contention=args.flex_contention,
        batch_turnaround_s=args.batch_turnaround_s,
        batch_failure_rate=args.batch_failure_rate,
        batch_expiry_rate=args.batch_expiry_rate,
    )
    with contextlib.ExitStack() as stack:
        certfile = keyfile = ca_pem = None
        if args.https:
            tls_dir = args.tls_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            files = write_self_signed(tls_dir)
            certfile, keyfile, ca_pem = files.cert_pem, files.key_pem, files.ca_pem
        scheme = "https" if args.https else "http"
        server = ForegroundServer(
            uvicorn_config(
                create_app(config), args.host, args.port, certfile=certfile, keyfile=keyfile
            )
        )

        async def main(stop: asyncio.Event) -> int:
            serving = asyncio.create_task(server.serve())
            stopping = asyncio.create_task(stop.wait())
            while not server.started and not serving.done():
                await asyncio.wait({serving}, timeout=0.01)
            if server.started:
                names = ", ".join(f"{d.name} ({d.kind})" for d in config.deployments)
                print(
                    f"simulator listening on {scheme}://{args.host}:{args.port} - {names}",
                    flush=True,
                )
                if ca_pem is not None:
                    print(f"CA certificate: {ca_pem}", flush=True)
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            stopping.cancel()
            await serving
            return 0 if server.started else 1

        _uvloop()
        return run_until_signal(main)
