"""SSE pass-through: whole events forwarded, usage captured, the injected usage chunk hidden."""

from __future__ import annotations

import json

from ingress.chat.sse import SSEFilter


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


FIRST = _event({"id": "", "created": 0, "choices": [], "prompt_filter_results": [{}]})
DELTA = _event({"id": "c", "choices": [{"index": 0, "delta": {"content": "hi"}}]})
USAGE = _event({"id": "c", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"
STREAM = FIRST + DELTA + DELTA + USAGE + DONE


def test_usage_is_hidden_when_the_client_did_not_ask() -> None:
    sse = SSEFilter(strip_usage=True)
    out = sse.feed(STREAM) + sse.flush()
    assert out == FIRST + DELTA + DELTA + DONE
    assert sse.usage == {"prompt_tokens": 7, "completion_tokens": 2}
    assert sse.content_events == 2


def test_usage_is_kept_when_the_client_asked() -> None:
    sse = SSEFilter(strip_usage=False)
    assert sse.feed(STREAM) + sse.flush() == STREAM
    assert sse.usage == {"prompt_tokens": 7, "completion_tokens": 2}


def test_events_split_across_chunks_are_forwarded_whole() -> None:
    sse = SSEFilter(strip_usage=True)
    pieces = [STREAM[i : i + 7] for i in range(0, len(STREAM), 7)]
    forwarded = []
    for piece in pieces:
        out = sse.feed(piece)
        if out:
            forwarded.append(out)
            assert out.endswith(b"\n\n")
    forwarded.append(sse.flush())
    assert b"".join(forwarded) == FIRST + DELTA + DELTA + DONE
    assert sse.usage is not None


def test_crlf_separators_and_null_usage_chunks() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\r\n\r\n'
    sse = SSEFilter(strip_usage=True)
    assert sse.feed(chunk) == chunk
    assert sse.usage is None
    assert sse.content_events == 1


def test_unterminated_tail_is_flushed() -> None:
    sse = SSEFilter(strip_usage=False)
    assert sse.feed(b"data: [DONE]") == b""
    assert sse.flush() == b"data: [DONE]"
    assert sse.flush() == b""
    assert "buffered=0" in repr(sse)


def test_garbage_is_passed_through() -> None:
    sse = SSEFilter(strip_usage=True)
    junk = b'data: {"usage": oops\n\n'
    assert sse.feed(junk) == junk
