"""Property-based fuzzing of every ingress route from its own OpenAPI document.

Schemathesis generates valid (positive) and invalid (negative) requests for each
operation, a bounded number per route. Invariants: never a 5xx, errors always in
the OpenAI envelope, and a request the ingress accepted (202) is really recorded
and on the queue.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import hypothesis
import pytest
import redis
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode

from ingress.http.openapi import openapi_document
from ingress.server import IngressThread
from orchestrator.core import keys
from orchestrator.core.settings import load_settings
from simulator.config import SimConfig
from simulator.server import SimulatorThread
from tests import redis_mode

MAX_EXAMPLES = 10
DEPLOYMENTS: list[dict[str, Any]] = [
    {"name": "ptu", "model": "gpt-4o-mini", "ptus": 15, "spillover": "paygo"},
    {"name": "paygo", "model": "gpt-4o-mini", "kind": "standard", "tpm": 100_000_000},
]
SCHEMA = schemathesis.openapi.from_dict(openapi_document([d["name"] for d in DEPLOYMENTS]))
OPERATIONS = [(op.method.upper(), op.path) for op in (r.ok() for r in SCHEMA.get_all_operations())]


@pytest.fixture(scope="module")
def stack(redis_url: str) -> Iterator[IngressThread]:
    config = SimConfig.from_specs(
        ["ptu=gpt-4o-mini:15", "paygo=gpt-4o-mini:100000000:standard"], tbt_ms=0.0, ttft_ms=0.0
    )
    with SimulatorThread(config) as sim:
        settings = load_settings(
            redis_url=redis_url,
            redis_cluster=redis_mode.CLUSTER,
            azure_openai_endpoint=sim.url,
            azure_openai_api_key="k",
            deployments=DEPLOYMENTS,
            max_body_bytes=65_536,
        )
        with IngressThread(settings) as ingress:
            yield ingress


@pytest.fixture(scope="module")
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_mode.connect_sync(redis_url)
    yield client
    client.close()


def _check(case: Any, stack: IngressThread, store: redis.Redis) -> None:
    response = case.call(base_url=stack.url, timeout=30)
    status = response.status_code
    assert status < 500, f"{case.method} {case.formatted_path}: {status} {response.text[:300]}"
    if status == 400 and response.text == "Invalid HTTP request received.":
        return  # uvicorn refused a malformed request (e.g. `content-length: ''`) before the app
    if status >= 400:
        assert response.headers.get("content-type") in (["application/json"], "application/json"), (
            f"{case.method} {case.formatted_path} {case.headers}: {status} {response.text[:200]}"
        )
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["type"] and "code" in error
    if status == 202 and case.path.endswith("/chat/completions"):
        accepted = response.json()
        location = response.headers["location"]
        location = location[0] if isinstance(location, list) else location
        assert location == f"/v1/requests/{accepted['id']}"
        record = store.hgetall(keys.request(accepted["id"]))
        assert record[b"status"] in (b"queued", b"in_progress")
        entries = store.xrange(keys.queue(record[b"deployment"].decode()))
        assert any(
            json.loads(fields[b"message"])["id"] == accepted["id"] for _, fields in entries
        ), "accepted but not on the queue"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_route_invariants(
    stack: IngressThread, store: redis.Redis, method: str, path: str, mode: GenerationMode
) -> None:
    strategy = SCHEMA[path][method].as_strategy(generation_mode=mode)

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def run(case: Any) -> None:
        _check(case, stack, store)

    run()


_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
_valid_line = st.fixed_dictionaries(
    {
        "custom_id": _text.filter(bool),
        "method": st.just("POST"),
        "url": st.sampled_from(["/v1/chat/completions", "/chat/completions"]),
        "body": st.fixed_dictionaries(
            {
                "model": st.sampled_from(["ptu", "paygo"]),
                "messages": st.lists(
                    st.fixed_dictionaries({"role": st.just("user"), "content": _text}),
                    min_size=1,
                    max_size=2,
                ),
            },
            optional={"max_tokens": st.integers(1, 5000), "temperature": st.floats(0, 2)},
        ),
    }
)
_bad_line = st.one_of(
    _text,
    st.dictionaries(_text, st.integers() | _text, max_size=3).map(json.dumps),
    _valid_line.map(lambda x: json.dumps({**x, "method": "GET"})),
    _valid_line.map(lambda x: json.dumps({**x, "body": {**x["body"], "model": "nope"}})),
    _valid_line.map(lambda x: json.dumps({**x, "body": {**x["body"], "max_tokens": 0}})),
    _valid_line.map(lambda x: json.dumps({**x, "body": {**x["body"], "stream": True}})),
)
_file = st.tuples(
    st.lists(_valid_line, min_size=1, max_size=6, unique_by=lambda x: x["custom_id"]),
    st.one_of(st.none(), st.none(), st.none(), _bad_line, st.just("duplicate")),
    st.integers(0, 6),
).map(
    lambda t: (
        [json.dumps(x) for x in t[0]][: t[2]]
        + ([] if t[1] is None else [json.dumps(t[0][0]) if t[1] == "duplicate" else t[1]])
        + [json.dumps(x) for x in t[0]][t[2] :]
    )
)


@hypothesis.given(
    lines=_file.filter(lambda ls: all("\n" not in x and "\r" not in x for x in ls)),
    priority=st.sampled_from(["low", "low", "high", "bogus"]),
)
@hypothesis.settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_batch_files_never_5xx_and_never_lose_lines(
    stack: IngressThread, store: redis.Redis, lines: list[str], priority: str
) -> None:
    with httpx2.Client(base_url=stack.url + "/v1", timeout=30) as http:
        content = "\n".join(lines).encode()
        upload = http.post(
            "/files", files={"file": ("f.jsonl", content)}, data={"purpose": "batch"}
        )
        assert upload.status_code in (200, 400), upload.text
        if upload.status_code != 200:
            assert upload.json()["error"]["message"]
            return
        created = http.post(
            "/batches",
            json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions",
                  "completion_window": "24h"},
            headers={"x-priority": priority},
        )  # fmt: skip
        assert created.status_code in (200, 400), created.text
        if created.status_code != 200:
            return
        batch = created.json()
        assert batch["request_counts"]["total"] == sum(1 for x in lines if x.strip())
        if priority == "low":
            queued = {
                json.loads(fields[b"message"])["id"]
                for _, fields in store.xrange(keys.queue("ptu"))
            }
            for raw in store.lrange(keys.batch_requests(batch["id"]), 0, -1):
                request_id = json.loads(raw)[0]
                assert request_id in queued, "batch line accepted but not on the queue"
                assert store.exists(keys.request(request_id))
        again = http.get(f"/batches/{batch['id']}")
        assert again.status_code == 200
        cancelled = http.post(f"/batches/{batch['id']}/cancel")
        assert cancelled.status_code in (200, 409)
