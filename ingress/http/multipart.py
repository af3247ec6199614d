"""A small multipart/form-data reader for file uploads (python-multipart is not a dependency).

Reads the whole (size-limited) body: the parts are returned by field name with
their filename, if any, and their bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingress.http.errors import bad_request

_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


@dataclass(frozen=True, slots=True)
class Part:
    """One form field."""

    name: str
    filename: str | None
    content: bytes


def _params(header_value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for match in _PARAM.finditer(header_value):
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        out[match.group(1).lower()] = value
    return out


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart/form-data content type; 400 when it is not one."""
    kind = content_type.split(";", 1)[0].strip().lower()
    boundary = _params(content_type).get("boundary", "")
    if kind != "multipart/form-data" or not boundary or len(boundary) > 200:
        raise bad_request(
            "expected a multipart/form-data body with a boundary (fields 'file' and 'purpose')",
            code="invalid_content_type",
        )
    return boundary.encode("latin-1")


def parse_form(body: bytes, content_type: str) -> dict[str, Part]:
    """The form's parts by name; 400 for a malformed body."""
    delimiter = b"--" + boundary_of(content_type)
    sections = body.split(delimiter)
    parts: dict[str, Part] = {}
    for section in sections[1:]:
        if section.startswith(b"--"):
            return parts
        head, sep, content = section.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep or not content.endswith(b"\r\n"):
            break
        name, filename = _disposition(head)
        if name is None:
            break
        parts[name] = Part(name, filename, content[:-2])
    raise bad_request("malformed multipart/form-data body", code="invalid_multipart")


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            params = _params(value)
            filename = params.get("filename")
            if filename is not None:  # the HTML5 encoding httpx and browsers use for these
                filename = filename.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")
            return params.get("name"), filename
    return None, None
