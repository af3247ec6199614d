"""The worker's probes on its metrics port: `/healthz` from the loop's beats, `/readyz` from
its phase, `/metrics` unchanged; the pure decisions from a table, then a real `ptu worker`."""

from __future__ import annotations

import socket
import time

import httpx2
import pytest

from orchestrator.worker.health import Health
from orchestrator.worker.metrics import WorkerMetrics
from tests.integration.test_ingress_batch import worker_process
from tests.support import stacks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("phase", "beat_age_s", "healthz", "readyz"),
    [
        ("starting", 0, (200, "ok"), (503, "starting")),
        ("ready", 0, (200, "ok"), (200, "ready")),
        ("ready", 30, (200, "ok"), (200, "ready")),
        ("ready", 31, (503, "stalled"), (503, "stalled")),
        ("stopping", 0, (200, "ok"), (503, "stopping")),
    ],
)
def test_probe_answers(
    phase: str, beat_age_s: float, healthz: tuple[int, str], readyz: tuple[int, str]
) -> None:
    clock = Clock()
    health = Health(clock=clock)
    if phase in ("ready", "stopping"):
        health.started()
    if phase == "stopping":
        health.stopping()
    clock.now += beat_age_s
    for path, (status, state) in (("/healthz", healthz), ("/readyz", readyz)):
        answered = health.answer(path)
        assert answered is not None
        assert (answered[0], answered[1]["status"]) == (status, state), path
    assert health.answer("/metrics") is None
    health.beat()
    assert health.live()
    assert f"phase={health._phase}" in repr(health)


def test_the_metrics_port_serves_the_probes_and_the_metrics() -> None:
    clock = Clock()
    health = Health(clock=clock)
    metrics = WorkerMetrics(deployments=["d"])
    port = metrics.serve(0, "127.0.0.1", health=health)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = httpx2.get(base + "/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "starting"})
        health.started()
        assert httpx2.get(base + "/readyz").status_code == 200
        assert httpx2.get(base + "/healthz").json() == {"status": "ok"}
        clock.now += 60
        assert httpx2.get(base + "/healthz").status_code == 503
        assert "ptu_worker" in httpx2.get(base + "/metrics").text
    finally:
        metrics.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ptu_worker_is_ready_once_started(redis_url: str) -> None:
    deployments = [{"name": "d", "model": "gpt-4o-mini", "ptus": 15}]
    port = _free_port()
    with (
        stacks.simulator(["d=gpt-4o-mini:15"], "k") as sim,
        worker_process(redis_url, sim.url, deployments, PTU_METRICS_PORT=str(port)) as proc,
    ):
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except httpx2.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        assert httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
