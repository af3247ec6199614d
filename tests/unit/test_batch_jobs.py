"""The batch sweeper's decision table and the line reader the jobs share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ingress.batch.jobs import next_action
from ingress.batch.lines import lines_from, requests_from
from ingress.batch.store import line_request_id

NOW = 1_000.0
BASE = {"status": "in_progress", "total": "10", "completed": "0", "failed": "0",
        "expires_at": "2000", "priority": "low"}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "action"),
    [
        ({}, "forget"),
        ({**BASE, "status": "completed"}, "forget"),
        ({**BASE, "status": "cancelled"}, "forget"),
        ({**BASE, "status": "validating"}, "expand"),
        ({**BASE, "expanded": "1"}, None),
        ({**BASE, "expanded": "1", "completed": "7", "failed": "3"}, "finalize"),
        ({**BASE, "status": "finalizing"}, "finalize"),
        ({**BASE, "status": "cancelling"}, "close"),
        ({**BASE, "status": "cancelling", "closed": "1", "closed_at": "900"}, None),
        # lines running at the close get CLOSE_GRACE_S (600 s) to finish, then a second close
        ({**BASE, "status": "cancelling", "closed": "1", "closed_at": "400"}, "close"),
        ({**BASE, "status": "cancelling", "closed": "1", "closed_at": "401"}, None),
        ({**BASE, "status": "cancelling", "closed": "1", "failed": "10"}, "finalize"),
        ({**BASE, "expires_at": "999"}, "expire"),
        ({**BASE, "expires_at": "999", "final_status": "expired"}, "close"),
        ({**BASE, "final_status": "expired", "closed": "1", "closed_at": "999"}, None),
        ({**BASE, "final_status": "expired", "closed": "1", "completed": "10"}, "finalize"),
        ({**BASE, "status": "cancelling", "expires_at": "999"}, "close"),
        # high-priority lines run in the ingress that beats `runner_at` (RUNNER_STALE_S 10 s)
        ({**BASE, "priority": "high", "runner_at": "991"}, None),
        ({**BASE, "priority": "high", "runner_at": "990"}, "resume"),  # its process is gone
        ({**BASE, "priority": "high"}, "resume"),  # a run from before the beat existed
        ({**BASE, "priority": "high", "status": "cancelling", "runner_at": "0"}, "close"),
        ({**BASE, "priority": "high", "completed": "10"}, "finalize"),
    ],
)
def test_next_action(fields: dict[str, str], action: str | None) -> None:
    assert next_action(fields, NOW) == action


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
async def test_lines_carry_the_offset_after_them(size: int) -> None:
    data = b'{"a":1}\n\n  \n{"b":2}\n{"c":3}'
    got = [x async for x in lines_from(_chunks(data, size))]
    assert [raw for raw, _ in got] == [b'{"a":1}', b"", b"  ", b'{"b":2}', b'{"c":3}']
    assert [end for _, end in got] == [8, 9, 12, 20, len(data)]
    # resuming at any recorded offset yields exactly the lines after it
    for i, (_, end) in enumerate(got):
        rest = [raw async for raw, _ in lines_from(_chunks(data[end:], size), end)]
        assert rest == [raw for raw, _ in got[i + 1 :]]


async def test_requests_skip_blank_lines_and_keep_indexes() -> None:
    data = b'{"custom_id":"a"}\n\n{"custom_id":"b"}\n'
    got = [(i, o["custom_id"], end) async for i, o, end in requests_from(_chunks(data, 5))]
    assert got == [(0, "a", 18), (1, "b", len(data))]
    resumed = [(i, o["custom_id"]) async for i, o, _ in requests_from(_chunks(data[18:], 5), 18, 1)]
    assert resumed == [(1, "b")]


def test_line_request_ids_are_derived_and_distinct() -> None:
    ids = {line_request_id("batch_abc", i) for i in range(1000)}
    assert len(ids) == 1000 and line_request_id("batch_abc", 7) == "req_abc_7"
