"""`ptu ingress --workers N`: N processes serving one port, for a pod's cores.

One Python process runs one event loop on one core; the ingress's per-request work (HTTP
parsing, the upstream client, token events) is CPU-bound at a few hundred requests a
second. With `--workers N` (`PTU_INGRESS_WORKERS`) the process started is a supervisor:
it checks the port, then starts N `ptu ingress` processes, each binding the port with
`SO_REUSEPORT`, so the kernel spreads connections across them. Everything the processes
must share is in Redis already (as between ingress replicas): the breakers' verdicts,
the tenants' counters (each process decides on its copy, `tenants/cached`), the batch
jobs' leases, the estimate; each process has its own offload processes and its own
subscription for waiting calls.

Metrics: the processes write their counters to files in one directory (prometheus_client's
multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`), and whichever process answers `/metrics`
answers the sum, so a scrape never sees one process's counters instead of another's.

Stopping: SIGTERM or SIGINT to the supervisor is passed on once as SIGTERM to every
process, which drains as a single ingress does; the supervisor returns when all have
exited. The processes run in sessions of their own (a terminal's Ctrl-C reaches the
supervisor only, so each process is signalled once) and stop by themselves when the
supervisor is gone. A process that exits while the others serve stops them all: the
supervisor exits with its code, and the pod (or `ptu up`) restarts the whole.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence

import structlog

log = structlog.get_logger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""What prometheus_client reads at import to keep its values in files (multiprocess mode)."""


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def command(host: str, port: int, metrics_dir: str) -> list[str]:
    """The command line of one serving process."""
    return [
        sys.executable, "-m", "orchestrator", "ingress", "--host", host, "--port", str(port),
        "--workers", "1", "--serve-shared", metrics_dir, "--parent", str(os.getpid()),
    ]  # fmt: skip


async def supervise(host: str, port: int, workers: int, stop: asyncio.Event) -> int:
    """Run `workers` serving processes until `stop`, then stop them; the exit code."""
    metrics_dir = tempfile.mkdtemp(prefix="ptu-ingress-metrics-")
    env = {**os.environ, METRICS_DIR_ENV: metrics_dir}
    procs: list[asyncio.subprocess.Process] = []
    code = 0
    try:
        for _ in range(workers):
            procs.append(
                await asyncio.create_subprocess_exec(
                    *command(host, port, metrics_dir), env=env, start_new_session=True
                )
            )
        log.info("ingress_processes_started", workers=workers, pids=[p.pid for p in procs])
        stopped = asyncio.ensure_future(stop.wait())
        exits = {asyncio.ensure_future(p.wait()): p for p in procs}
        done, _ = await asyncio.wait({stopped, *exits}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for task in exits:
            task.cancel()
        dead = [exits[t] for t in done if t in exits]
        if dead and not stop.is_set():
            code = dead[0].returncode or 1
            log.error("ingress_process_exited", pid=dead[0].pid, code=dead[0].returncode)
    finally:
        await _stop_all(procs)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


async def _stop_all(procs: Sequence[asyncio.subprocess.Process]) -> None:
    """SIGTERM once to each process still running, then wait for all of them."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.gather(*(proc.wait() for proc in procs))
    except asyncio.CancelledError:  # the stop deadline passed: no waiting any longer
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        raise


async def watch_parent(parent: int, stop: asyncio.Event) -> None:
    """Set `stop` once the supervisor `parent` is gone (this process was re-parented)."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("ingress_supervisor_gone", parent=parent)
            stop.set()
            return
        await asyncio.sleep(1.0)
