"""Azure Monitor `metrics:getBatch` for the simulated resource, as querymetrics calls it.

Request (from the SDK source): `POST /subscriptions/{sub}/metrics:getBatch` with query
`api-version, starttime, endtime, interval, metricnamespace, metricnames (comma separated),
aggregation (comma separated), top, orderby, filter, rollupby` and body `{"resourceids": [...]}`;
answer `{"values": [{"starttime", "endtime", "interval", "namespace", "resourceregion",
"resourceid", "value": [metric...]}]}` in request order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from simulator.monitor.recorder import METRICS, NAMESPACE, MetricQueryError, MetricsRecorder, Series

log = structlog.get_logger(__name__)

DEFAULT_SPAN_S = 3600.0
DEFAULT_TOP = 10
MAX_RESOURCES = 50
RESOURCE_REGION = "local"
AGGREGATIONS = ("average", "minimum", "maximum", "total", "count")
_ORDER_ALIASES = {"avg": "average", "sum": "total", "min": "minimum", "max": "maximum"}
_CLAUSE = re.compile(r"^\s*(?P<dim>[^\s()]+)\s+eq\s+'(?P<value>[^']*)'\s*$", re.IGNORECASE)
_DISPLAY = {
    "AzureOpenAIProvisionedManagedUtilizationV2": (
        "Provisioned-managed Utilization V2",
        "Utilization % for a provisioned-managed deployment: PTUs consumed / PTUs deployed x 100.",
    ),
    "ProcessedPromptTokens": ("Processed Prompt Tokens", "Number of prompt tokens processed."),
    "GeneratedTokens": ("Generated Completion Tokens", "Number of tokens generated."),
    "AzureOpenAIRequests": ("Azure OpenAI Requests", "Number of calls made to the API."),
}


class MonitorError(Exception):
    """A request the metrics API answers with an error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        """The Azure-style error body."""
        body = {"error": {"code": self.code, "message": self.message}}
        return JSONResponse(body, status_code=self.status)


def parse_filter(text: str | None) -> dict[str, list[str] | None]:
    """Parse `$filter` (`A eq 'a1' and B eq 'b1' or B eq 'b2' and C eq '*'`): dim -> values."""
    result: dict[str, list[str] | None] = {}
    if text is None or not text.strip():
        return result
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        dim: str | None = None
        values: list[str] | None = []
        for part in re.split(r"\s+or\s+", clause.strip().strip("()"), flags=re.IGNORECASE):
            match = _CLAUSE.match(part.strip().strip("()"))
            if match is None:
                raise MonitorError(400, "BadRequest", f"Invalid filter expression: {part.strip()}")
            if dim is not None and match["dim"].lower() != dim.lower():
                raise MonitorError(
                    400, "BadRequest", "The 'or' operator cannot separate different dimensions"
                )
            dim = match["dim"]
            values = None if match["value"] == "*" or values is None else [*values, match["value"]]
        if dim is not None:
            result[dim] = values
    return result


def parse_time(text: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp (naive means UTC)."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace(" ", "+"))
    except ValueError as exc:
        raise MonitorError(400, "BadRequest", f"Invalid timestamp: {text}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(t: float) -> str:
    """Azure's UTC timestamp format, e.g. 2024-01-01T00:05:00Z."""
    text = datetime.fromtimestamp(t, UTC).isoformat()
    return text.replace("+00:00", "Z")


def _canon_dims(flt: Mapping[str, list[str] | None], metric: str) -> dict[str, list[str] | None]:
    """Dimension names are case-insensitive in Azure; map them to the metric's spelling."""
    known = {d.lower(): d for d in METRICS[metric].dimensions}
    out: dict[str, list[str] | None] = {}
    for dim, values in flt.items():
        if dim.lower() not in known:
            raise MonitorError(
                400, "BadRequest", f"Dimension {dim} is not defined for metric {metric}"
            )
        out[known[dim.lower()]] = values
    return out


def _series_score(series: Series, aggregation: str) -> float | None:
    values = [getattr(p, aggregation) for p in series.points]
    present = [v for v in values if v is not None]
    if not present:
        return None
    if aggregation in ("total", "count"):
        return float(sum(present))
    if aggregation == "maximum":
        return float(max(present))
    if aggregation == "minimum":
        return float(min(present))
    return float(sum(present) / len(present))


def order_and_top(series: list[Series], order_by: str | None, top: int) -> list[Series]:
    """Sort series by `orderby` (e.g. `average desc`) and keep the first `top`."""
    if order_by:
        words = order_by.lower().split()
        agg = _ORDER_ALIASES.get(words[0], words[0]) if words else ""
        if agg not in AGGREGATIONS or len(words) > 2 or words[1:] not in ([], ["asc"], ["desc"]):
            raise MonitorError(400, "BadRequest", f"Invalid orderby: {order_by}")
        desc = words[1:] == ["desc"]
        scored = [(s, _series_score(s, agg)) for s in series]
        present = sorted((x for x in scored if x[1] is not None), key=lambda x: x[1] or 0.0)
        if desc:
            present.reverse()
        series = [s for s, _ in present] + [s for s, v in scored if v is None]
    return series[:top]


class _Query:
    """The parsed query string of one getBatch call."""

    def __init__(self, params: Mapping[str, str], now: float) -> None:
        if "api-version" not in params:
            raise MonitorError(
                400, "MissingApiVersionParameter", "The api-version query parameter is required"
            )
        namespace = params.get("metricnamespace", "")
        if namespace.lower() != NAMESPACE.lower():
            raise MonitorError(400, "BadRequest", f"Unknown metric namespace: {namespace!r}")
        self.end = parse_time(params["endtime"]) if "endtime" in params else now
        start = params.get("starttime")
        self.start = parse_time(start) if start else self.end - DEFAULT_SPAN_S
        interval = params.get("interval", "PT1M")
        if interval.upper() != "PT1M":
            raise MonitorError(400, "BadRequest", f"Unsupported interval {interval}; use PT1M")
        self.names = [n.replace("%2", ",") for n in params.get("metricnames", "").split(",") if n]
        if not self.names:
            raise MonitorError(400, "BadRequest", "metricnames is required")
        requested = params.get("aggregation")
        self.aggregations = [a.strip().lower() for a in requested.split(",")] if requested else []
        for agg in self.aggregations:
            if agg not in AGGREGATIONS:
                raise MonitorError(400, "BadRequest", f"Unsupported aggregation: {agg}")
        self.filter = parse_filter(params.get("filter"))
        self.rollup = [d.strip() for d in params.get("rollupby", "").split(",") if d.strip()]
        self.order_by = params.get("orderby")
        try:
            self.top = int(params.get("top", DEFAULT_TOP))
        except ValueError as exc:
            raise MonitorError(400, "BadRequest", "top must be an integer") from exc


def _metric_body(
    recorder: MetricsRecorder, query: _Query, resource_id: str, name: str, now: float
) -> dict[str, Any]:
    definition = METRICS.get(name)
    if definition is None:
        raise MonitorError(
            400,
            "BadRequest",
            f"Failed to find metric configuration for provider: Microsoft.CognitiveServices, "
            f"resource Type: accounts, metric: {name}, Valid metrics: {', '.join(METRICS)}",
        )
    flt = _canon_dims(query.filter, name)
    rolled = {d.lower() for d in query.rollup}
    split = [d for d in flt if d.lower() not in rolled]
    try:
        series = recorder.query(now, name, query.start, query.end, flt, split)
    except MetricQueryError as exc:
        raise MonitorError(400, "BadRequest", str(exc)) from exc
    if split:
        series = order_and_top(series, query.order_by, query.top)
    aggregations = query.aggregations or [definition.primary_aggregation.lower()]
    display, description = _DISPLAY[name]
    return {
        "id": f"{resource_id}/providers/Microsoft.Insights/metrics/{name}",
        "type": "Microsoft.Insights/metrics",
        "name": {"value": name, "localizedValue": display},
        "displayDescription": description,
        "unit": definition.unit,
        "timeseries": [_series_body(s, aggregations) for s in series],
        "errorCode": "Success",
    }


def _series_body(series: Series, aggregations: Sequence[str]) -> dict[str, Any]:
    data = []
    for point in series.points:
        item: dict[str, Any] = {"timeStamp": iso(point.time_stamp)}
        for agg in aggregations:
            value = getattr(point, agg)
            if value is not None:
                item[agg] = value
        data.append(item)
    # Azure reports dimension names lower-cased in metadatavalues.
    metadata = [
        {"name": {"value": dim.lower(), "localizedValue": dim.lower()}, "value": value}
        for dim, value in series.dimensions
    ]
    return {"metadatavalues": metadata, "data": data}


def _subscription_of(resource_id: str) -> str:
    parts = resource_id.strip("/").split("/")
    return parts[1] if len(parts) > 1 and parts[0].lower() == "subscriptions" else ""


async def _resource_ids(request: Request) -> list[str]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        raise MonitorError(400, "BadRequest", "The request body is not valid JSON") from exc
    ids = body.get("resourceids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise MonitorError(400, "BadRequest", 'Body must be {"resourceids": [<id>, ...]}')
    if len(ids) > MAX_RESOURCES:
        raise MonitorError(400, "BadRequest", f"At most {MAX_RESOURCES} resource ids per batch")
    return ids


def monitor_routes(
    recorder: MetricsRecorder, resource_id: str, clock: Callable[[], float]
) -> list[Route]:
    """Routes serving the metrics batch API for the single resource `resource_id`."""
    known = resource_id.rstrip("/").lower()

    async def get_batch(request: Request) -> JSONResponse:
        try:
            return await _get_batch(request)
        except MonitorError as exc:
            log.info("metrics_query_refused", status=exc.status, code=exc.code, reason=exc.message)
            return exc.response()

    async def _get_batch(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise MonitorError(
                401, "AuthenticationFailed", "The 'Authorization' Bearer token is missing"
            )
        now = clock()
        params = {k.lower(): v for k, v in request.query_params.items()}
        query = _Query(params, now)
        subscription = request.path_params["sub"]
        values = []
        for rid in await _resource_ids(request):
            if _subscription_of(rid).lower() != subscription.lower():
                raise MonitorError(
                    400, "BadRequest", f"Resource {rid} is not in subscription {subscription}"
                )
            if rid.rstrip("/").lower() != known:
                raise MonitorError(404, "ResourceNotFound", f"The resource {rid} was not found")
            values.append(
                {
                    "starttime": iso(query.start),
                    "endtime": iso(query.end),
                    "interval": "PT1M",
                    "namespace": NAMESPACE,
                    "resourceregion": RESOURCE_REGION,
                    "resourceid": rid,
                    "value": [
                        _metric_body(recorder, query, rid, name, now) for name in query.names
                    ],
                }
            )
        log.debug("metrics_query_served", metrics=query.names, resources=len(values))
        return JSONResponse({"values": values})

    return [Route("/subscriptions/{sub}/metrics:getBatch", get_batch, methods=["POST"])]
