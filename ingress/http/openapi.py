"""The OpenAPI 3 document of the ingress's own routes (served at /openapi.json)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Schema = dict[str, Any]
_REF = "#/components/schemas/"


def _ref(name: str) -> Schema:
    return {"$ref": _REF + name}


def _json(schema: Schema) -> Schema:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Schema]:
    return {str(c): {"description": "error", **_json(_ref("Error"))} for c in codes}


def _header(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


_PRIORITY = _header("x-priority", {"type": "string", "enum": ["high", "low"]}, "routing")
_CHAT_HEADERS = [
    _PRIORITY,
    _header(
        "x-reply-key",
        {"type": "string", "pattern": "^ptu:reply:[A-Za-z0-9_-]{1,20}:[A-Za-z0-9_:-]{1,60}$"},
        "low priority: the Redis list for the result, in the caller's namespace "
        "ptu:reply:<tenant>:<suffix>",
    ),
    _header(
        "x-ptu-ttl-s",
        {"type": "string", "pattern": "^[1-9][0-9]{0,5}$"},
        "low priority: seconds until the deadline (default PTU_DEFAULT_TTL_S)",
    ),
]


def _chat_op(summary: str, extra_params: list[Schema], body: str) -> Schema:
    return {
        "summary": summary,
        "parameters": extra_params + _CHAT_HEADERS,
        "requestBody": {"required": True, **_json(_ref(body))},
        "responses": {
            "200": {
                "description": "completion (JSON, or SSE when stream is true)",
                **_json({"type": "object"}),
            },
            "202": {"description": "queued (low priority)", **_json(_ref("QueuedRequest"))},
            **_errors(400, 401, 404, 408, 413, 429, 500, 502, 503, 504),
        },
    }


def _schemas(deployments: list[str]) -> dict[str, Schema]:
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
    }
    model: Schema = {"type": "string", "enum": deployments} if deployments else {"type": "string"}
    chat = {
        "model": model,
        "messages": {"type": "array", "minItems": 1, "items": message},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 100_000},
        "stream": {"type": "boolean"},
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "type"],
                    "properties": {
                        "code": {"type": ["string", "null"]},
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                    },
                }
            },
        },
        "ChatRequest": {
            "type": "object",
            "required": ["messages"],
            "properties": chat,
        },
        "ChatRequestOpenAI": {
            "type": "object",
            "required": ["model", "messages"],
            "properties": chat,
        },
        "QueuedRequest": {
            "type": "object",
            "required": ["id", "object", "status", "reply_key"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string", "enum": ["queued_request"]},
                "status": {"type": "string"},
                "reply_key": {"type": "string"},
            },
        },
        "BatchCreate": {
            "type": "object",
            "required": ["input_file_id", "endpoint", "completion_window"],
            "properties": {
                "input_file_id": {"type": "string"},
                "endpoint": {
                    "type": "string",
                    "enum": ["/v1/chat/completions", "/chat/completions"],
                },
                "completion_window": {"type": "string", "enum": ["24h"]},
                "metadata": {
                    "type": ["object", "null"],
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "Batch": {"type": "object", "required": ["id", "object", "status"]},
        "File": {"type": "object", "required": ["id", "object", "bytes", "purpose"]},
        "List": {"type": "object", "required": ["object", "data"]},
    }


def _ok(description: str, schema: Schema) -> dict[str, Schema]:
    return {"200": {"description": description, **_json(schema)}}


def _batch_paths(prefix: str) -> dict[str, Schema]:
    fid = _path("file_id", "file id")
    bid = _path("batch_id", "batch id")
    upload = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    }
    return {
        f"{prefix}/files": {
            "post": {
                "summary": "upload a batch JSONL file",
                "requestBody": {"required": True, "content": upload},
                "responses": {**_ok("file", _ref("File")), **_errors(400, 401, 413, 503)},
            },
            "get": {
                "summary": "list files",
                "responses": {**_ok("files", _ref("List")), **_errors(401, 503)},
            },
        },
        f"{prefix}/files/{{file_id}}": {
            "get": {
                "summary": "file metadata",
                "parameters": [fid],
                "responses": {**_ok("file", _ref("File")), **_errors(401, 404, 503)},
            },
            "delete": {
                "summary": "delete a file",
                "parameters": [fid],
                "responses": {**_ok("deleted", {"type": "object"}), **_errors(401, 404, 503)},
            },
        },
        f"{prefix}/files/{{file_id}}/content": {
            "get": {
                "summary": "file content",
                "parameters": [fid],
                "responses": {"200": {"description": "JSONL"}, **_errors(401, 404, 503)},
            },
        },
        f"{prefix}/batches": {
            "post": {
                "summary": "create a batch",
                "parameters": [_PRIORITY],
                "requestBody": {"required": True, **_json(_ref("BatchCreate"))},
                "responses": {**_ok("batch", _ref("Batch")), **_errors(400, 401, 404, 413, 503)},
            },
            "get": {
                "summary": "list batches",
                "responses": {**_ok("batches", _ref("List")), **_errors(401, 503)},
            },
        },
        f"{prefix}/batches/{{batch_id}}": {
            "get": {
                "summary": "retrieve a batch",
                "parameters": [bid],
                "responses": {**_ok("batch", _ref("Batch")), **_errors(401, 404, 503)},
            },
        },
        f"{prefix}/batches/{{batch_id}}/cancel": {
            "post": {
                "summary": "cancel a batch",
                "parameters": [bid],
                "responses": {**_ok("batch", _ref("Batch")), **_errors(401, 404, 409, 503)},
            },
        },
    }


def openapi_document(
    deployments: Sequence[str], prefixes: tuple[str, ...] = ("/v1", "/openai")
) -> Schema:
    """The document: chat completions, result retrieval, files and batches, health, metrics."""
    names = list(deployments)
    model: Schema = {"type": "string", "enum": names} if names else {"type": "string"}
    paths: dict[str, Schema] = {
        "/openai/deployments/{deployment}/chat/completions": {
            "post": _chat_op(
                "chat completion, Azure shape",
                [
                    {**_path("deployment", "deployment name"), "schema": model},
                    {
                        "name": "api-version",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "ChatRequest",
            )
        },
        "/v1/chat/completions": {
            "post": _chat_op("chat completion, OpenAI shape", [], "ChatRequestOpenAI")
        },
        "/v1/requests/{request_id}": {
            "get": {
                "summary": "a queued request's result",
                "parameters": [
                    _path("request_id", "request id"),
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                ],
                "responses": {
                    **_ok("result document", {"type": "object"}),
                    "202": {"description": "still queued", **_json(_ref("QueuedRequest"))},
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/healthz": {"get": {"summary": "liveness", "responses": _ok("ok", {"type": "object"})}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {"200": {"description": "text exposition"}},
            }
        },
    }
    for prefix in prefixes:
        paths.update(_batch_paths(prefix))
    return {
        "openapi": "3.1.0",
        "info": {"title": "ptu-orchestrator ingress", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": _schemas(names),
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"apiKey": []}, {"bearer": []}],
    }
