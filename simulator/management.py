"""The resource's deployments as Azure Resource Manager shows them (read only).

`GET {resource_id}/deployments/{name}?api-version=…`, as `azure-mgmt-cognitiveservices`'
`deployments.get` calls it, answers the deployment resource: its SKU
(`ProvisionedManaged` with the PTUs as capacity, or `Standard` with the TPM in
thousands), its model and, for a provisioned deployment that spills over natively, the
property `spilloverDeploymentName` (ARM api-version 2024-10-01 and later). The
orchestrator's start-up check reads it there; the live value follows `PATCH
/sim/deployments/{name}` `spillover`. A Bearer token is required, as ARM requires one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simulator.openai.deployments import Deployment

DEPLOYMENT_TYPE = "Microsoft.CognitiveServices/accounts/deployments"


def deployment_resource(resource_id: str, d: Deployment) -> dict[str, Any]:
    """The ARM document of deployment `d` of the resource `resource_id`."""
    spec = d.spec
    provisioned = spec.kind == "provisioned"
    properties: dict[str, Any] = {
        "model": {"format": "OpenAI", "name": spec.model, "version": ""},
        "provisioningState": "Succeeded",
    }
    if provisioned and d.spillover:
        properties["spilloverDeploymentName"] = d.spillover
    capacity = spec.ptus if provisioned else spec.tpm / 1000
    return {
        "id": f"{resource_id.rstrip('/')}/deployments/{spec.name}",
        "name": spec.name,
        "type": DEPLOYMENT_TYPE,
        "sku": {
            "name": "ProvisionedManaged" if provisioned else "Standard",
            "capacity": int(capacity) if capacity == int(capacity) else capacity,
        },
        "properties": properties,
    }


def management_routes(deployments: Mapping[str, Deployment], resource_id: str) -> list[Route]:
    """The read-only ARM route of the resource `resource_id`'s deployments."""
    prefix = resource_id.rstrip("/")

    async def get_deployment(request: Request) -> JSONResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return _error(
                401, "AuthenticationFailed", "The 'Authorization' Bearer token is missing"
            )
        if "api-version" not in request.query_params:
            return _error(400, "MissingApiVersionParameter", "The api-version is missing")
        d = deployments.get(request.path_params["name"])
        if d is None:
            message = f"The deployment {request.path_params['name']!r} was not found"
            return _error(404, "DeploymentNotFound", message)
        return JSONResponse(deployment_resource(prefix, d))

    return [Route(prefix + "/deployments/{name}", get_deployment, methods=["GET"])]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
