"""Process supervisor for the demo and the benchmarks.

Starts the embedded Redis, `ptu simulator`, `ptu ingress`, `ptu worker` and
`ptu estimator` as subprocesses on free loopback ports, waits until each is
ready, and always stops every process it started: on normal exit, on an
exception, on Ctrl-C and on SIGTERM (turned into KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import httpx2
import redis
import structlog
from redis.cluster import ClusterNode, RedisCluster

from devstack.embedded_redis import EmbeddedRedis
from devstack.signals import signal_group, signals_deferred, sigterm_as_interrupt
from devstack.simulator_options import API_KEY, DEPLOYMENT, SimulatorOptions
from orchestrator.core import keys
from orchestrator.core.deployments import seed_urls
from orchestrator.core.errors import PTUError
from orchestrator.core.serving import free_port

log = structlog.get_logger(__name__)

__all__ = ["API_KEY", "DEPLOYMENT", "Child", "SimulatorOptions", "Stack", "sigterm_as_interrupt"]


@dataclass(slots=True)
class Child:
    """One started subprocess and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def tail(self, chars: int = 600) -> str:
        """The end of the process's log, for error messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""


@dataclass
class Stack:
    """The processes of one run; a context manager that always cleans up."""

    workdir: Path
    sim: SimulatorOptions = field(default_factory=SimulatorOptions)
    stop_timeout_s: float = 8.0
    redis: EmbeddedRedis | None = None
    sim_url: str = ""
    ingress_url: str = ""
    children: dict[str, Child] = field(default_factory=dict)

    def __repr__(self) -> str:
        running = [n for n, c in self.children.items() if c.alive()]
        return f"<Stack redis={self.redis!r} running={running}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child (workers first, Redis last); signals wait until this is done."""
        with signals_deferred():
            for name in sorted(self.children, key=_stop_order):
                self.stop(name)
            if self.redis is not None:
                self.redis.stop()
                self.redis = None

    # -- components --------------------------------------------------------------------------

    @property
    def tls_dir(self) -> Path:
        """Where the simulator writes its CA and certificate with `--https`."""
        return self.workdir / "tls"

    @property
    def ca_file(self) -> Path:
        """The simulator's CA certificate (only with `--https`)."""
        return self.tls_dir / "ca.pem"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What the harness's HTTP clients verify the simulator with (False over plain HTTP)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.sim.https else False

    @property
    def redis_url(self) -> str:
        """URL of the embedded Redis."""
        if self.redis is None:
            raise PTUError("redis is not running")
        return self.redis.url

    def start_redis(self, port: int | None = None) -> str:
        """Start the embedded Redis-compatible server (on a free port unless given)."""
        self.redis = EmbeddedRedis(port, aof=True).start()  # as production should run it
        return self.redis.url

    def start_simulator(self, port: int | None = None) -> str:
        """Start `ptu simulator` (on a free port unless given); wait until /sim/state answers."""
        port = port or free_port()
        scheme = "https" if self.sim.https else "http"
        self.sim_url = f"{scheme}://127.0.0.1:{port}"
        self._spawn("simulator", ["simulator", *self.sim.argv(port, self.tls_dir)], {})
        self._wait_http("simulator", f"{self.sim_url}/sim/state", tls=self.sim.https)
        return self.sim_url

    def use_upstream(self, url: str) -> None:
        """Send the orchestrator and the direct batch to an upstream this stack does not run.

        Such an upstream (another simulator, a gateway) answers only the data plane: the
        harness neither resets it nor reads its true level (`simulated` is False).
        """
        if "simulator" in self.children:
            raise PTUError("the stack already runs a simulator")
        self.sim_url = url.rstrip("/")

    @property
    def simulated(self) -> bool:
        """Whether the upstream is the `ptu simulator` this stack runs (it answers /sim/*)."""
        return "simulator" in self.children

    def start_ingress(self, env: Mapping[str, str], name: str = "ingress") -> str:
        """Start `ptu ingress` with the given PTU_* settings and wait for /healthz; its URL.

        Another `name` starts a second ingress beside the stack's own (`ingress_url`).
        """
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "ingress":
            self.ingress_url = url
        self._spawn(name, ["ingress", "--port", str(port)], env)
        self._wait_http(name, f"{url}/healthz")
        return url

    def start_worker(
        self,
        env: Mapping[str, str],
        name: str = "worker",
        *,
        ready_timeout_s: float = 30.0,
        args: Sequence[str] = (),
    ) -> None:
        """Start one `ptu worker` (with `args`) and wait until its first heartbeat says it is
        consuming.

        A worker takes seconds to import and connect; a measurement that starts before it is
        up would blame the throttle for the start-up time.
        """
        url = env.get("PTU_REDIS_URL") or self.redis_url
        with _client(url, cluster=env.get("PTU_REDIS_CLUSTER") == "true") as client:
            before = set(client.hkeys(keys.WORKERS))
            self._spawn(name, ["worker", *args], env)
            deadline = time.monotonic() + ready_timeout_s
            while not set(client.hkeys(keys.WORKERS)) - before:
                child = self.children[name]
                if not child.alive():
                    raise PTUError(f"{name} exited at start: {child.tail()}")
                if time.monotonic() > deadline:
                    raise PTUError(f"{name} did not report ready within {ready_timeout_s:g} s")
                time.sleep(0.05)

    def start_orchestrator(
        self,
        env: Mapping[str, str],
        *,
        estimator: bool,
        workers: int,
        timeout_s: float = 60.0,
        port: int | None = None,
        worker_module: str = "orchestrator",
        metrics_ports: Sequence[int] = (),
    ) -> str:
        """Start the ingress (on a free port unless given), the estimator and `workers` workers.

        `metrics_ports`: worker i serves its metrics on `metrics_ports[i]` (its
        `PTU_METRICS_PORT`), so workers of one host never bind the same port.

        All are spawned before any is waited for: each process spends seconds importing,
        and on a loaded machine starting them one after the other costs that many times over.
        `worker_module` is what `python -m` runs as the worker (`orchestrator`: `ptu worker`;
        a benchmark may run its own wiring of the same worker).
        """
        port = port or free_port()
        self.ingress_url = f"http://127.0.0.1:{port}"
        url = env.get("PTU_REDIS_URL") or self.redis_url
        with _client(url, cluster=env.get("PTU_REDIS_CLUSTER") == "true") as client:
            before = set(client.hkeys(keys.WORKERS))
            self._spawn("ingress", ["ingress", "--port", str(port)], env)
            if estimator:
                self._spawn("estimator", ["estimator"], env)
            names = [f"worker-{i}" for i in range(workers)]
            for i, name in enumerate(names):
                own = dict(env)
                if i < len(metrics_ports):
                    own["PTU_METRICS_PORT"] = str(metrics_ports[i])
                self._spawn(
                    name,
                    ["worker"] if worker_module == "orchestrator" else [],
                    own,
                    module=worker_module,
                )
            self._wait_http("ingress", f"{self.ingress_url}/healthz", timeout_s=timeout_s)
            deadline = time.monotonic() + timeout_s
            while len(set(client.hkeys(keys.WORKERS)) - before) < workers:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise PTUError(f"workers did not report ready within {timeout_s:g} s")
                time.sleep(0.05)
        if estimator:
            self._settle("estimator")
        return self.ingress_url

    def start_module(self, name: str, module: str, args: list[str], ready_url: str) -> None:
        """Start `python -m module args` (a benchmark's own helper); wait until `ready_url`
        answers below 500."""
        self._spawn(name, args, {}, module=module)
        self._wait_http(name, ready_url)

    def start_estimator(self, env: Mapping[str, str]) -> None:
        """Start `ptu estimator`."""
        self._spawn("estimator", ["estimator"], env)
        self._settle("estimator")

    def base_env(self, **extra: str) -> dict[str, str]:
        """PTU_* settings every orchestrator process of this stack shares."""
        env = {
            "PTU_REDIS_URL": self.redis_url,
            "PTU_DEPLOYMENTS": self.sim.deployments_json(),
            "PTU_AZURE_OPENAI_ENDPOINT": self.sim_url,
            "PTU_AZURE_OPENAI_API_KEY": self.sim.api_key,
            "PTU_ESTIMATE_WINDOW_S": f"{self.sim.window_s:g}",
            "PTU_LOG_LEVEL": "warning",
            "PTU_DRAIN_TIMEOUT_S": "2",
        }
        env.update(extra)
        return env

    def stop(self, name: str) -> None:
        """Stop one child: SIGTERM to its process group, SIGKILL after the timeout."""
        child = self.children.pop(name, None)
        if child is None:
            return
        if child.alive():
            signal_group(child.proc, signal.SIGTERM)
            try:
                child.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("child_killed", name=name, pid=child.proc.pid)
                signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
        log.debug("child_stopped", name=name, code=child.proc.returncode)

    def check_alive(self) -> None:
        """Raise PTUError naming the first child that exited on its own."""
        for child in self.children.values():
            if not child.alive():
                raise PTUError(
                    f"{child.name} exited with code {child.proc.returncode}: {child.tail()}"
                )

    # -- plumbing ----------------------------------------------------------------------------

    def _spawn(
        self, name: str, verb_args: list[str], env: Mapping[str, str], module: str = "orchestrator"
    ) -> Child:
        if name in self.children:
            raise PTUError(f"{name} is already running")
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
        child_env.update(env)
        child_env.setdefault("PTU_LOG_LEVEL", "warning")
        if self.sim.https:
            # httpx2 and OpenSSL clients in the children trust the simulator's CA
            child_env["SSL_CERT_FILE"] = str(self.ca_file)
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *verb_args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
                start_new_session=True,  # Ctrl-C reaches only the harness, which stops us in order
            )
        child = Child(name, proc, log_path)
        self.children[name] = child
        log.debug("child_started", name=name, pid=proc.pid)
        return child

    def _wait_http(self, name: str, url: str, tls: bool = False, timeout_s: float = 30.0) -> None:
        child = self.children[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not child.alive():
                raise PTUError(f"{name} exited at start: {child.tail()}")
            if tls and not self.ca_file.exists():
                time.sleep(0.05)
                continue
            with contextlib.suppress(httpx2.HTTPError, ssl.SSLError):
                response = httpx2.get(url, verify=self.verify, timeout=1.0)
                if response.status_code < 500:
                    return
            time.sleep(0.05)
        raise PTUError(f"{name} did not become ready at {url}: {child.tail()}")

    def _settle(self, name: str, seconds: float = 1.0) -> None:
        child = self.children[name]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not child.alive():
                raise PTUError(f"{name} exited at start: {child.tail()}")
            time.sleep(0.05)


def _client(url: str, *, cluster: bool) -> redis.Redis:
    """A blocking client of the stack's Redis: one server, or a cluster from its seed nodes."""
    if not cluster:
        return redis.Redis.from_url(url)
    nodes = [urlsplit(seed) for seed in seed_urls(url)]
    startup = [ClusterNode(n.hostname or "127.0.0.1", n.port or 6379) for n in nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=startup)  # type: ignore[return-value]


def _stop_order(name: str) -> int:
    # Producers of work stop before what they depend on: workers, ingress, estimator, simulator.
    for rank, prefix in enumerate(("worker", "ingress", "estimator", "simulator")):
        if name.startswith(prefix):
            return rank
    return 9
