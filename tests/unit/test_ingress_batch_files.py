"""Batch JSONL validation and output lines, and the multipart reader (pure)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from ingress.batch.jsonl import MAX_LINES, output_line, parse_input, render, succeeded
from ingress.http.errors import ApiError
from ingress.http.multipart import parse_form
from orchestrator.core.schemas import ResultDocument

DEPLOYMENTS = {"ptu", "paygo"}


def _line(cid: str = "a", **body: Any) -> str:
    payload = {"model": "ptu", "messages": [{"role": "user", "content": "x"}], **body}
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/chat/completions",
                       "body": payload})  # fmt: skip


def test_valid_file_with_blank_lines() -> None:
    content = (_line("a") + "\n\n" + _line("b", max_tokens=5) + "\r\n").encode()
    lines = parse_input(content, DEPLOYMENTS)
    assert [(x.number, x.custom_id, x.deployment) for x in lines] == [
        (1, "a", "ptu"),
        (3, "b", "ptu"),
    ]
    assert lines[1].body["max_tokens"] == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1]", "line 1: not a JSON object"),
        (json.dumps({"method": "POST"}), "line 1: 'custom_id'"),
        (_line("a") + "\n" + _line("a"), "line 2: duplicate custom_id 'a' (first on line 1)"),
        (_line("a", messages=[]), "line 1: body: messages: "),
        (_line("a", model="other"), "line 1: body.model 'other' is not a deployment here"),
        (_line("a", max_completion_tokens="9"), "line 1: body: max_completion_tokens"),
        ('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": 1}',
         "line 1: 'body'"),
        ("NaN", "line 1: not valid JSON"),
        ("[" * 100_000, "line 1: not valid JSON"),
    ],
)  # fmt: skip
def test_invalid_files_name_the_line(content: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_input(content.encode(), DEPLOYMENTS)
    assert info.value.status == 400
    assert message in info.value.message


def test_line_limit() -> None:
    content = "\n".join(_line(str(i)) for i in range(MAX_LINES + 1)).encode()
    with pytest.raises(ApiError) as info:
        parse_input(content, DEPLOYMENTS)
    assert f"line {MAX_LINES + 1}: a batch file holds at most" in info.value.message


def _doc(status: str, code: int | None, **kw: Any) -> ResultDocument:
    return ResultDocument(
        id="req_abc", custom_id="c1", status=status, status_code=code, deployment="ptu",  # type: ignore[arg-type]
        enqueued_at=1.0, completed_at=2.0, **kw,
    )  # fmt: skip


def test_output_and_error_lines() -> None:
    ok = _doc("completed", 200, response={"choices": []})
    assert succeeded(ok)
    assert output_line(ok) == {
        "id": "batch_req_abc",
        "custom_id": "c1",
        "response": {"status_code": 200, "request_id": "req_abc", "body": {"choices": []}},
        "error": None,
    }
    refused = _doc("failed", 400, error={"code": "invalid_value", "message": "bad temperature"})
    assert output_line(refused)["response"]["body"] == {
        "error": {"code": "invalid_value", "message": "bad temperature"}
    }
    assert output_line(refused)["error"] == {"code": "invalid_value", "message": "bad temperature"}
    expired = _doc("expired", None)
    assert output_line(expired)["response"] is None
    assert output_line(expired)["error"] == {"code": "expired", "message": "request expired"}
    assert render([{"a": 1}, {"b": 2}]) == b'{"a":1}\n{"b":2}\n'


def _encoded(files: Any, data: Any) -> tuple[bytes, str]:
    request = httpx2.Request("POST", "http://x/files", files=files, data=data)
    return request.read(), request.headers["content-type"]


def test_multipart_as_httpx_encodes_it() -> None:
    body, content_type = _encoded({"file": ("in \"x\".jsonl", b"line1\r\nline2\r\n")},
                                  {"purpose": "batch"})  # fmt: skip
    form = parse_form(body, content_type)
    assert form["purpose"].content == b"batch" and form["purpose"].filename is None
    assert form["file"].content == b"line1\r\nline2\r\n"
    assert form["file"].filename == 'in "x".jsonl'


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/json"),
        (b"", "multipart/form-data"),
        (b"--b\r\nno headers end", "multipart/form-data; boundary=b"),
        (b"--b\r\nX: y\r\n\r\nvalue\r\n--b--\r\n", "multipart/form-data; boundary=b"),
        (b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n",
         "multipart/form-data; boundary=b"),
    ],
)  # fmt: skip
def test_malformed_multipart_is_400(body: bytes, content_type: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_form(body, content_type)
    assert info.value.status == 400
