"""The bodies of streamed answers, paced like the deployment generates them.

Chat completions stream as SSE chunks (`chat.ChunkWriter`, Azure's empty first chunk,
`[DONE]` last); the Responses API streams its typed events (`responses.ResponseWriter`).
Both wait the time to first token and a reasoning model's hidden tokens, then one
time-between-tokens per visible token, and hand the number of visible tokens actually sent
to `done` however the stream ends (a client that hangs up is billed for what it got, and
for all the reasoning, which was spent before the first visible token).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from simulator.openai import chat
from simulator.openai.calls import ChatCall
from simulator.openai.counters import Decision
from simulator.openai.responses import ResponseWriter


def truncated(call: ChatCall, n: int) -> bool:
    """True when the output stopped at the request's limit (finish reason `length`)."""
    return call.max_tokens is not None and n + call.reasoning_tokens >= call.max_tokens


async def chat_chunks(
    writer: chat.ChunkWriter,
    decision: Decision,
    call: ChatCall,
    created: int,
    done: Callable[[int], None],
) -> AsyncIterator[bytes]:
    """The SSE chunks of one streamed chat completion."""
    n = call.completion_tokens
    tbt_s = decision.tbt_ms / 1000.0
    emitted = 0
    try:
        yield writer.first()
        if (first_s := decision.ttft_s + call.reasoning_tokens * tbt_s) > 0:
            await asyncio.sleep(first_s)
        yield writer.role()
        for i, text in enumerate(chat.completion_tokens_text(n, created)):
            yield writer.content(text.lstrip() if i == 0 else text)
            emitted += 1
            if tbt_s > 0:
                await asyncio.sleep(tbt_s)
        yield writer.finish("length" if truncated(call, n) else "stop")
        if call.include_usage:
            yield writer.usage(call.prompt_tokens, n + call.reasoning_tokens, call.reasoning_tokens)
        yield chat.SSE_DONE
    finally:
        done(emitted)


async def response_events(
    writer: ResponseWriter,
    decision: Decision,
    call: ChatCall,
    created: int,
    clock: Callable[[], float],
    done: Callable[[int], None],
) -> AsyncIterator[bytes]:
    """The Responses API event stream of one response."""
    n = call.completion_tokens
    tbt_s = decision.tbt_ms / 1000.0
    emitted, text = 0, []
    try:
        for event in writer.opening():
            yield event
        if (first_s := decision.ttft_s + call.reasoning_tokens * tbt_s) > 0:
            await asyncio.sleep(first_s)
        for event in writer.item_added():
            yield event
        for i, token in enumerate(chat.completion_tokens_text(n, created)):
            text.append(token.lstrip() if i == 0 else token)
            yield writer.delta(text[-1])
            emitted += 1
            if tbt_s > 0:
                await asyncio.sleep(tbt_s)
        closing = writer.closing(
            "".join(text), n, truncated=truncated(call, n), completed_at=int(clock())
        )
        for event in closing:
            yield event
    finally:
        done(emitted)
