"""The ingress accepts only what the worker can read: the worker's own code is the oracle.

Property: any byte string the ingress's body reader accepts, enqueued as the low-
priority path enqueues it, is read back by the worker's parser and driven by the
real dispatcher to a terminal result. Deep nesting (the poison that used to get a
202 and then no result) is generated on purpose, on both sides of the limit.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ingress.http.body import parse_object
from ingress.http.errors import ApiError
from ingress.metrics import IngressMetrics
from ingress.queued.enqueue import Enqueuer
from orchestrator.core.schemas import MAX_BODY_DEPTH, json_depth
from tests.unit.worker_fakes import DEPLOYMENT, T0, make_rig

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested to a drawn depth, up to well past what pydantic-core parses."""
    depth = draw(st.integers(min_value=0, max_value=400))
    value: Any = draw(scalars)
    for _ in range(depth):
        value = [value] if draw(st.booleans()) else {"k": value}
    return value


bodies = st.builds(
    lambda extra, messages: {"messages": messages, **extra},
    st.dictionaries(st.text(max_size=5), values | deep(), max_size=2),
    st.lists(
        st.fixed_dictionaries({"role": st.just("user"), "content": st.text() | deep()}), max_size=2
    ),
)
raw_bodies = bodies.map(lambda b: json.dumps(b).encode()) | st.binary(max_size=64)


async def _through_the_worker(body: dict[str, Any]) -> str | None:
    rig = make_rig()
    enqueuer = Enqueuer(
        rig.results, {DEPLOYMENT.name: rig.queue}, IngressMetrics(), clock=lambda: T0
    )
    req = enqueuer.build(DEPLOYMENT.name, body, tenant="t", ttl_s=600)
    await enqueuer.put(req)  # what follows the 202
    stop = asyncio.Event()
    slot = await rig.throttle.acquire(stop)
    assert slot is not None
    [delivery] = await rig.queue.receive(1, 0)
    assert delivery.unreadable is None, delivery.unreadable
    assert delivery.message.body == body
    status = await rig.dispatcher.handle(delivery, slot, stop)
    state = await rig.results.get(req.id)
    assert state is not None and state.result is not None  # a terminal result, always
    return status


@settings(max_examples=80, deadline=None)
@given(raw_bodies)
def test_every_accepted_body_reaches_a_terminal_result(raw: bytes) -> None:
    try:
        body = parse_object(raw)
    except ApiError as err:
        assert 400 <= err.status < 500
        return
    assert json_depth(body) <= MAX_BODY_DEPTH
    assert asyncio.run(_through_the_worker(body)) in ("completed", "failed", "expired")


def test_the_limit_sits_below_what_the_worker_can_read() -> None:
    at_limit = {
        "messages": [],
        "x": json.loads("[" * (MAX_BODY_DEPTH - 1) + "]" * (MAX_BODY_DEPTH - 1)),
    }
    assert parse_object(json.dumps(at_limit).encode()) == at_limit
    assert asyncio.run(_through_the_worker(at_limit)) == "completed"
    over = json.dumps({"x": json.loads("[" * MAX_BODY_DEPTH + "]" * MAX_BODY_DEPTH)}).encode()
    try:
        parse_object(over)
    except ApiError as err:
        assert err.status == 400 and "nested deeper" in err.message
    else:
        raise AssertionError("a body over the depth limit was accepted")
