"""Response and SSE chunk builders in Azure's shape."""

from __future__ import annotations

import json

from simulator.openai import chat


def parse(event: bytes) -> dict[str, object]:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    result: dict[str, object] = json.loads(event[6:])
    return result


def test_first_chunk_is_azures_empty_one() -> None:
    first = parse(chat.ChunkWriter.first())
    assert first["choices"] == [] and first["id"] == "" and first["created"] == 0
    assert first["prompt_filter_results"] == chat.PROMPT_FILTER_RESULTS


def test_chunks_and_usage() -> None:
    w = chat.ChunkWriter(
        completion_id="chatcmpl-1", created=7, model="gpt-4o-mini", with_usage=True
    )
    role = parse(w.role())
    assert role["model"] == "gpt-4o-mini-2024-07-18" and role["usage"] is None
    content = parse(w.content(" hi"))
    assert content["choices"][0]["delta"] == {"content": " hi"}  # type: ignore[index]
    assert parse(w.finish("stop"))["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    last = parse(w.usage(10, 5))
    assert last["choices"] == []
    assert last["usage"]["total_tokens"] == 15  # type: ignore[index]
    no_usage = chat.ChunkWriter(completion_id="c", created=7, model="m", with_usage=False)
    assert "usage" not in parse(no_usage.content("x"))
    assert chat.SSE_DONE == b"data: [DONE]\n\n"


def test_completion_body() -> None:
    body = chat.completion_body(
        completion_id="chatcmpl-1",
        created=1,
        model="unknown",
        content="hello",
        finish_reason="length",
        prompt_tokens=3,
        completion_tokens=4,
    )
    assert body["object"] == "chat.completion" and body["model"] == "unknown"
    assert body["usage"]["total_tokens"] == 7
    assert body["choices"][0]["message"]["content"] == "hello"


def test_tokens_text_is_deterministic_and_one_word_per_token() -> None:
    text = chat.completion_tokens_text(25, salt=3)
    assert text == chat.completion_tokens_text(25, salt=3)
    assert len(text) == 25 and all(t.startswith(" ") and " " not in t[1:] for t in text)


def test_error_envelopes() -> None:
    assert chat.error_body("429", "m") == {"error": {"code": "429", "message": "m"}}
    full = chat.error_body(None, "bad", type_="invalid_request_error", param="messages")
    assert full["error"]["type"] == "invalid_request_error" and full["error"]["param"] == "messages"
    assert "Provisioned-Managed" in chat.msg_429_provisioned(120)
    assert "2024-10-21" in chat.msg_429_standard("2024-10-21", 6)
