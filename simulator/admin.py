"""The simulator's admin API: `/sim/state`, `PATCH /sim/deployments/{name}`, `/sim/reset`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simulator.monitor.recorder import MetricsRecorder
from simulator.openai.deployments import Deployment
from simulator.openai.patch import SPILLOVER
from simulator.openai.spillover import target_problem

log = structlog.get_logger(__name__)


def snapshot(deployments: Mapping[str, Deployment], now: float) -> dict[str, Any]:
    """The `/sim/state` document."""
    return {"time": now, "deployments": {n: d.state(now) for n, d in deployments.items()}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": str(status), "message": message}}, status_code=status)


def _changes(raw: bytes, deployments: Mapping[str, Deployment]) -> dict[str, Any]:
    """The PATCH body as an object, its `spillover` naming a standard deployment if any."""
    try:
        changes = json.loads(raw or b"{}")
    except ValueError:
        raise ValueError("body is not valid JSON") from None
    if not isinstance(changes, dict):
        raise ValueError("body must be a JSON object")
    target = changes.get(SPILLOVER)
    kinds = {n: d.spec.kind for n, d in deployments.items()}
    if isinstance(target, str) and target_problem(target, kinds) is not None:
        raise ValueError(f"{SPILLOVER} must name a standard deployment of this simulator")
    return changes


def admin_routes(
    deployments: Mapping[str, Deployment],
    clock: Callable[[], float],
    recorder: MetricsRecorder | None = None,
    extra: Callable[[], dict[str, Any]] | None = None,
) -> list[Route]:
    """Routes to inspect and steer the simulated deployments.

    `POST /sim/reset` keeps the Azure Monitor history, as the real service would after a
    quiet spell; `?metrics=1` forgets it too, for a benchmark that wants a fresh resource.
    """

    async def state(request: Request) -> JSONResponse:
        now = clock()
        body = snapshot(deployments, now)
        body.update(extra() if extra is not None else {})
        if request.query_params.get("reset_peaks", "") not in ("", "0", "false"):
            for deployment in deployments.values():
                deployment.reset_peaks()
        return JSONResponse(body)

    async def patch(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        deployment = deployments.get(name)
        if deployment is None:
            return _error(404, f"unknown deployment {name!r}")
        now = clock()
        try:
            changes = _changes(await request.body(), deployments)
            deployment.patch(now, changes)
        except ValueError as exc:
            return _error(400, str(exc))
        log.info("deployment_patched", deployment=name, changes=changes)
        return JSONResponse(deployment.state(now))

    async def reset(request: Request) -> JSONResponse:
        now = clock()
        for deployment in deployments.values():
            deployment.reset(now)
        metrics = request.query_params.get("metrics", "") not in ("", "0", "false")
        if metrics and recorder is not None:
            recorder.clear()
        log.info("simulator_reset", deployments=list(deployments), metrics=metrics)
        return JSONResponse(snapshot(deployments, now))

    return [
        Route("/sim/state", state, methods=["GET"]),
        Route("/sim/deployments/{name}", patch, methods=["PATCH"]),
        Route("/sim/reset", reset, methods=["POST"]),
    ]
