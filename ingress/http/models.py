"""The ingress's HTTP contract: the shapes of its requests and parameters (its own answers
are in `ingress.http.answers`).

These models are the one definition of what a route accepts and returns: the
handlers validate with them and `/openapi.json` is generated from them
(`ingress.http.openapi`), so the document cannot drift from the checks. OpenAI's
own objects come from the `openai` SDK (`Batch`, `FileObject`, `FileDeleted`,
`ChatCompletion`, `Response`); where the ingress accepts more or less than the SDK's
types say (a message is any object with a string `role`; a batch runs chat completions
and responses only), the model here says what the code
really does.

Request bodies are strict (no `"1"` for 1, no `1.0` for `max_tokens`) and keep
unknown fields: everything the ingress does not check is passed to the
deployment as sent. Header and query values are text, so their types convert.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

from ingress.http.errors import ApiError, invalid
from orchestrator.core import keys
from orchestrator.core.schemas import PRIORITIES, PRIORITY_HEADER, Priority

DEPLOYMENT_MARK = "x-ptu-deployment"
"""Marks a deployment name in a schema: the document lists the app's deployments there."""
DeploymentName = Annotated[str, WithJsonSchema({"type": "string", DEPLOYMENT_MARK: True})]
MAX_TTL_S = 30 * 86_400.0
MAX_WAIT_S = 60.0
REPLY_KEY_PATTERN = r"^ptu:reply:[!-z|~]+:[!-z|~]+$"
"""Printable ASCII without spaces or braces: a brace would move the key to another Redis
Cluster slot than `keys.reply_pushed` computes for it."""
BatchEndpoint = Literal["/v1/chat/completions", "/chat/completions", "/v1/responses"]
"""What a batch line may call (its `url`) and a batch names as its `endpoint`."""
RESPONSES_URL = "/v1/responses"
"""The batch `url` of a Responses API line; every other batch url is chat completions."""

M = TypeVar("M", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class _Params(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# --- parameters (path, query, headers) ---------------------------------------------

TtlSeconds = Annotated[float, Field(gt=0, le=MAX_TTL_S, allow_inf_nan=False)]
ReplyKey = Annotated[str, Field(pattern=REPLY_KEY_PATTERN, max_length=200)]
WaitSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_TTL: TypeAdapter[float] = TypeAdapter(TtlSeconds)
_REPLY_KEY: TypeAdapter[str] = TypeAdapter(ReplyKey)
_WAIT: TypeAdapter[float] = TypeAdapter(WaitSeconds)


class PriorityHeaders(_Params):
    x_priority: Priority | None = Field(
        None,
        alias=PRIORITY_HEADER,
        description="high: proxied now; low: queued for idle PTU capacity (case-insensitive). "
        "Default: PTU_DEFAULT_PRIORITY for chat completions, low for batches",
    )


class ChatHeaders(PriorityHeaders):
    x_reply_key: ReplyKey | None = Field(
        None,
        alias="x-reply-key",
        description="low priority: the Redis list the result is pushed to; must lie in the "
        "caller's namespace ptu:reply:<tenant>:<suffix>",
    )
    x_ptu_ttl_s: TtlSeconds | None = Field(
        None,
        alias="x-ptu-ttl-s",
        description="low priority: seconds until the deadline (default PTU_DEFAULT_TTL_S)",
    )
    prefer: str | None = Field(
        None,
        alias="prefer",
        description="low priority: `wait=SECONDS` (RFC 7240) holds the call until its result "
        "and answers it as high priority would (Preference-Applied: wait=N); else 202",
    )
    idempotency_key: str | None = Field(
        None,
        alias="idempotency-key",
        max_length=255,
        description="low priority: a retry with the same key answers the first attempt's "
        "answer (same request id) and is never queued twice",
    )


class AzureChatPath(_Params):
    deployment: DeploymentName


class AzureChatQuery(_Params):
    api_version: str | None = Field(None, alias="api-version")


class RequestPath(_Params):
    request_id: str


class WaitQuery(_Params):
    wait: WaitSeconds | None = Field(
        None, description=f"seconds to wait for the result (capped at {MAX_WAIT_S:.0f})"
    )


class ResponsePath(_Params):
    response_id: str


class FilePath(_Params):
    file_id: str


class BatchPath(_Params):
    batch_id: str


class FileListQuery(_Params):
    limit: int | None = Field(None, ge=1, le=10_000)
    after: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the id of the last file of the previous page",
    )
    order: Literal["asc", "desc"] | None = Field(None, description="by created_at; default desc")


class BatchListQuery(_Params):
    limit: int | None = Field(None, ge=1, le=100)
    after: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the id of the last batch of the previous page",
    )


def parse_priority(value: str | None, default: Priority) -> Priority:
    """`x-priority` (case-insensitive, surrounding spaces ignored); default when absent.

    Anything other than high or low is a 400: a typo must not silently send batch
    work to the interactive path or the other way round.
    """
    if value is None:
        return default
    normalised = value.strip().lower()
    for priority in PRIORITIES:
        if normalised == priority:
            return priority
    raise ApiError(
        400,
        "invalid_priority",
        f"{PRIORITY_HEADER} must be 'high' or 'low', got {value[:40]!r}",
        param=PRIORITY_HEADER,
    )


def parse_ttl(value: str | None, default: float) -> float:
    """`x-ptu-ttl-s`: the request's time to live in seconds, or the default."""
    if value is None:
        return default
    try:
        return _TTL.validate_python(value)
    except ValidationError:
        raise ApiError(
            400,
            "invalid_ttl",
            f"x-ptu-ttl-s must be a number of seconds in (0, {MAX_TTL_S:.0f}]",
            param="x-ptu-ttl-s",
        ) from None


def parse_reply_key(value: str, tenant: str) -> str:
    """`x-reply-key`: a key of the documented shape inside `ptu:reply:<tenant>:`."""
    prefix = keys.tenant_reply_prefix(tenant)
    try:
        key = _REPLY_KEY.validate_python(value)
    except ValidationError:
        key = ""
    if not key.startswith(prefix) or len(key) == len(prefix):
        raise ApiError(
            400,
            "invalid_reply_key",
            f"x-reply-key must start with {prefix!r}, add a suffix, and be at most 200 "
            "printable characters without spaces or braces",
            param="x-reply-key",
        )
    return key


def parse_wait(value: str | None) -> float:
    """The `wait` query parameter in seconds (0 when absent), capped at MAX_WAIT_S."""
    if value is None or value == "":
        return 0.0
    try:
        return min(_WAIT.validate_python(value), MAX_WAIT_S)
    except ValidationError:
        raise ApiError(
            400,
            "invalid_request",
            "wait must be a non-negative number of seconds",
            param="wait",
        ) from None


# --- request bodies ----------------------------------------------------------------


class ChatMessage(_Body):
    """One message: any object with a string `role`; its content is passed as sent."""

    role: str
    content: Any = None


class ChatCompletionRequest(_Body):
    """A chat completions body (Azure shape: the deployment is in the path)."""

    model: DeploymentName | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None


class OpenAIChatCompletionRequest(ChatCompletionRequest):
    """A chat completions body, OpenAI shape: `model` names the deployment."""

    model: DeploymentName


class ResponsesRequest(_Body):
    """A Responses API body: `model` names the deployment; the rest passes as sent."""

    model: DeploymentName
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    max_output_tokens: PositiveInt | None = None
    background: bool | None = Field(
        None,
        description="true: queued at low priority whatever x-priority says; answered with the "
        "Response object (status queued), polled at GET …/responses/{id} (not with stream)",
    )
    store: bool | None = Field(None, description="background needs it true or absent")


MIN_EXPIRES_S = 3_600
MAX_EXPIRES_S = 30 * 86_400
"""OpenAI's bounds of a file's `expires_after.seconds`: one hour to 30 days."""


class ExpiresAfter(BaseModel):
    """A file's expiry: `seconds` after its creation (`anchor`: `created_at`, the only one)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRES_S, le=MAX_EXPIRES_S)


class BatchCreateRequest(BaseModel):
    """`POST /batches` (unknown fields are ignored)."""

    model_config = ConfigDict(strict=True)

    input_file_id: str = Field(min_length=1)
    endpoint: BatchEndpoint
    completion_window: str = Field(min_length=1, max_length=40)
    """A duration (`24h`, `4h`, `7d`...; `ingress.batch.deadline.window`)."""
    metadata: dict[str, str] | None = Field(None, max_length=16)
    output_expires_after: ExpiresAfter | None = None
    """The output and error files' expiry, from their own creation."""


class FileUpload(BaseModel):
    """`POST /files` (multipart/form-data): a batch JSONL file.

    `expires_after` comes as the form fields `expires_after[anchor]` and
    `expires_after[seconds]`, as the openai SDK sends it.
    """

    file: bytes
    purpose: Literal["batch"]
    expires_after: ExpiresAfter | None = None


def validated(model: type[M], data: object, where: str = "") -> M:
    """`data` as `model`, else a 400 naming the first field that is wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc, where) from None
