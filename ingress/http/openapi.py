"""`/openapi.json`, generated from the app's route table and the models of each route.

A handler states its contract with `@operation(...)`: a summary, the models of
its body, path, query and headers (`ingress.http.models`), what it answers and
its error statuses. `openapi_document(app.routes, deployments)` walks the route
table, so every route is in the document with exactly its methods (HEAD, which
Starlette adds to every GET, is left out), and a route without an operation is
an error at start-up rather than a gap in the document. Adding a route is one
line in the route table plus one `@operation` on its handler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute, Route

from ingress.http.errors import ErrorEnvelope
from ingress.http.models import DEPLOYMENT_MARK

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
REF = "#/components/schemas/{model}"
DEPLOYMENT_SCHEMA = "Deployment"
_ATTRIBUTE = "openapi_operation"
_IGNORED_METHODS = frozenset({"HEAD"})
JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: a description and its body (a model, or a media type only)."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = JSON
    also: tuple[str, ...] = ()
    """Further media types of the same answer (an SSE stream of a chat completion)."""


@dataclass(frozen=True, slots=True)
class Operation:
    """What one handler accepts and answers; the document is built from these."""

    summary: str
    responses: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    path: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: type[BaseModel] | None = None
    models: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = field(init=False)

    def __post_init__(self) -> None:
        models = [(m, "validation") for m in (self.body, self.form, self.path, self.query,
                                               self.headers) if m is not None]  # fmt: skip
        models += [(r.model, "serialization") for r in self.responses.values() if r.model]
        if self.errors:
            models.append((ErrorEnvelope, "serialization"))
        object.__setattr__(self, "models", tuple(models))


def operation(
    summary: str,
    responses: Mapping[int, Reply],
    *,
    errors: Iterable[int] = (),
    body: type[BaseModel] | None = None,
    form: type[BaseModel] | None = None,
    path: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    headers: type[BaseModel] | None = None,
) -> Callable[[F], F]:
    """Decorate a handler with its contract (read back by `operation_of`)."""
    op = Operation(
        summary, dict(responses), tuple(sorted(set(errors))),
        body=body, form=form, path=path, query=query, headers=headers,
    )  # fmt: skip

    def attach(handler: F) -> F:
        setattr(handler, _ATTRIBUTE, op)
        return handler

    return attach


def operation_of(endpoint: object) -> Operation:
    """The contract of a route's handler; TypeError when it has none."""
    op = getattr(endpoint, _ATTRIBUTE, None)
    if not isinstance(op, Operation):
        raise TypeError(f"{endpoint!r} has no @operation: every route must be documented")
    return op


def documented_routes(routes: Iterable[BaseRoute]) -> list[tuple[Route, str, Operation]]:
    """(route, method, operation) for every route and method of the table, HEAD aside."""
    out = []
    for route in routes:
        if not isinstance(route, Route) or route.methods is None:
            raise TypeError(f"{route!r}: only Routes with explicit methods can be documented")
        op = operation_of(route.endpoint)
        declared = set(op.path.model_fields) if op.path else set()
        if declared != set(route.param_convertors):
            raise TypeError(f"{route.path}: path parameters {sorted(route.param_convertors)} "
                            f"but the operation's path model has {sorted(declared)}")  # fmt: skip
        out += [(route, m, op) for m in sorted(route.methods - _IGNORED_METHODS)]
    return out


def _content(media_type: str, schema: Schema | None) -> Schema:
    return {media_type: {"schema": schema} if schema is not None else {}}


def _optional(schema: Schema) -> Schema:
    """An optional parameter's schema without its `null` branch: absent is its None."""
    schema.pop("default", None)
    options = [o for o in schema.get("anyOf", ()) if o != {"type": "null"}]
    if "anyOf" in schema and len(options) == 1:
        del schema["anyOf"]
        schema.update(options[0])
    return schema


def _parameters(
    where: Literal["path", "query", "header"], definition: Schema | None
) -> list[Schema]:
    if definition is None:
        return []
    required = set(definition.get("required", ()))
    params = []
    for name, schema in definition["properties"].items():
        description = schema.pop("description", None)
        schema.pop("title", None)
        param: Schema = {"name": name, "in": where, "required": where == "path" or name in
                         required, "schema": _optional(schema)}  # fmt: skip
        if description:
            param["description"] = description
        params.append(param)
    return params


class _Schemas:
    """The components of the document and each model's schema, from one pydantic pass."""

    def __init__(self, ops: Iterable[Operation]) -> None:
        wanted = list(dict.fromkeys(m for op in ops for m in op.models))
        refs, defs = models_json_schema(wanted, ref_template=REF)
        self.components: dict[str, Schema] = dict(defs.get("$defs", {}))
        self._refs = refs
        self._inline: set[str] = set()

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> Schema:
        return dict(self._refs[(model, mode)])

    def inline(self, model: type[BaseModel] | None) -> Schema | None:
        """A parameter model's own definition (parameters are listed, not referenced)."""
        if model is None:
            return None
        name = self._refs[(model, "validation")]["$ref"].rsplit("/", 1)[1]
        self._inline.add(name)
        return dict(self.components[name])

    def finished(self) -> dict[str, Schema]:
        return {k: v for k, v in sorted(self.components.items()) if k not in self._inline}


def _operation(op: Operation, schemas: _Schemas) -> Schema:
    out: Schema = {"summary": op.summary}
    params = (
        _parameters("path", schemas.inline(op.path))
        + _parameters("query", schemas.inline(op.query))
        + _parameters("header", schemas.inline(op.headers))
    )
    if params:
        out["parameters"] = params
    if op.body is not None:
        content = _content(JSON, schemas.ref(op.body, "validation"))
        out["requestBody"] = {"required": True, "content": content}
    if op.form is not None:
        content = _content("multipart/form-data", schemas.ref(op.form, "validation"))
        out["requestBody"] = {"required": True, "content": content}
    responses: Schema = {}
    for status, reply in sorted(op.responses.items()):
        model = schemas.ref(reply.model, "serialization") if reply.model else None
        if model is None and reply.media_type == JSON:
            model = {"type": "object"}
        content = _content(reply.media_type, model)
        for other in reply.also:
            content.update(_content(other, None))
        responses[str(status)] = {"description": reply.description, "content": content}
    error = schemas.ref(ErrorEnvelope, "serialization") if op.errors else None
    for status in op.errors:
        responses[str(status)] = {"description": "error", "content": _content(JSON, error)}
    out["responses"] = responses
    return out


def _deployment_refs(node: Any) -> Any:
    """`node` with every marked deployment name replaced by a reference to the enum."""
    if isinstance(node, dict):
        if node.get(DEPLOYMENT_MARK):
            return {"$ref": REF.format(model=DEPLOYMENT_SCHEMA)}
        return {k: _deployment_refs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_deployment_refs(v) for v in node]
    return node


def openapi_document(routes: Iterable[BaseRoute], deployments: Sequence[str]) -> Schema:
    """The OpenAPI 3.1 document of `routes`; `deployments` fill the Deployment enum."""
    table = documented_routes(routes)
    schemas = _Schemas(op for _, _, op in table)
    paths: dict[str, Schema] = {}
    for route, method, op in table:
        paths.setdefault(route.path, {})[method.lower()] = _operation(op, schemas)
    paths = _deployment_refs(paths)
    components = _deployment_refs(schemas.finished())
    names = list(deployments)
    components[DEPLOYMENT_SCHEMA] = (
        {"type": "string", "enum": names} if names else {"type": "string"}
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "ptu-orchestrator ingress", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
    }
