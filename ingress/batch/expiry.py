"""Files' own expiry: `expires_after` at upload, `output_expires_after` on a batch.

OpenAI's shape (`ingress.http.models.ExpiresAfter`): `{"anchor": "created_at",
"seconds": N}`, N from 3,600 (an hour) to 2,592,000 (30 days), counted from the file's
creation; for a batch's output and error files, from when the finaliser writes them.
A file without one keeps the default lifetime (`files.FILE_TTL_S`). The file object
answers `expires_at`; from then on the file is gone: its metadata key expires with
it (a 404 from every route, the list skips it) and `Files.meta` refuses it by its
`expires_at` on the caller's clock as well.

At upload the policy arrives as two multipart fields, `expires_after[anchor]` and
`expires_after[seconds]` (how the openai SDK sends a nested form value); a value that
is not OpenAI's shape is a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import FormData, UploadFile

from ingress.http.errors import bad_request
from ingress.http.models import BatchCreateRequest, FileUpload, validated

FIELDS = ("anchor", "seconds")
OUTPUT_EXPIRES = "output_expires_s"
"""The batch hash field holding `output_expires_after.seconds` ("" when not given)."""


def upload_expiry(form: FormData) -> int | None:
    """The seconds of an upload's `expires_after` form fields; None when none is given."""
    if form.get("expires_after") is not None:
        raise bad_request(
            "expires_after must be given as the form fields expires_after[anchor] and "
            "expires_after[seconds]",
            param="expires_after",
        )
    given = {f: form.get(f"expires_after[{f}]") for f in FIELDS}
    if all(v is None for v in given.values()):
        return None
    if any(isinstance(v, UploadFile) for v in given.values()):
        raise bad_request("expires_after fields must be text, not files", param="expires_after")
    policy: dict[str, object] = {f: v for f, v in given.items() if v is not None}
    seconds = policy.get("seconds")
    if isinstance(seconds, str) and seconds.lstrip("-").isdigit():
        policy["seconds"] = int(seconds)  # a form value is text
    parsed = validated(FileUpload, {"file": b"", "purpose": "batch", "expires_after": policy})
    assert parsed.expires_after is not None
    return parsed.expires_after.seconds


def output_expiry(params: BatchCreateRequest) -> str:
    """A batch's `output_expires_after` seconds as stored on the batch ("" when none)."""
    policy = params.output_expires_after
    return "" if policy is None else str(policy.seconds)


def output_expiry_s(fields: Mapping[str, str]) -> int | None:
    """The output files' lifetime a batch hash asks for (None: the default)."""
    stored = fields.get(OUTPUT_EXPIRES, "")
    return int(stored) if stored.isdigit() else None
