"""Pure pieces of `ptu bench waiting`: latency summaries, verdicts, exactly-once tallies,
/proc parsing, the batch file, the flags."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import cli
from bench.harness.stack import DEPLOYMENT
from bench.scenarios import waiting
from bench.scenarios.waiting_measures import (
    WaitRecord,
    errors_by_status,
    latency_by_phase,
    local_ports_to,
    many_targets,
    phase_of,
    phase_rates,
    ratio,
    redis_clients,
    reply_counts,
    socket_inodes,
    stat_cpu_s,
    status_kb,
    summarise,
    tally,
    target_row,
    verdict,
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["waiting", *argv])


def test_the_scenario_is_registered_with_its_flags() -> None:
    args = _parse("--quick", "--batch-lines", "50", "--waiters", "30")
    assert args._module == "bench.scenarios.waiting"
    cfg = waiting.config_of(args)
    assert cfg.behind.batch_lines == 50 and cfg.many.waiters == 30
    # the rest stays --quick's
    assert cfg.behind.waiting_calls == waiting.QUICK.behind.waiting_calls
    assert cfg.behind.bound_s == waiting.QUICK.behind.bound_s
    full = waiting.config_of(_parse())
    assert (full.behind.batch_lines, full.many.waiters) == (5000, 2000)
    assert waiting.QUICK.behind.batch_lines < full.behind.batch_lines


@pytest.mark.parametrize("flag", ["--batch-lines", "--waiting-calls", "--bound-s", "--waiters"])
def test_a_size_that_is_not_positive_is_one_clear_error(flag: str) -> None:
    with pytest.raises(SystemExit, match=f"{flag} must be positive"):
        waiting.config_of(_parse("--quick", flag, "0"))


def test_a_summary_counts_calls_without_an_answer_as_lower_bounds() -> None:
    answered = [WaitRecord(s, True, 200) for s in (1.0, 3.0, 2.0)]
    summary = summarise(answered)
    assert (summary.p50_s, summary.max_s, summary.censored) == (2.0, 3.0, False)
    bounded = summarise([*answered, WaitRecord(90.0, False, 202)])
    assert (bounded.p50_s, bounded.max_s, bounded.censored) == (2.5, 90.0, True)
    empty = summarise([])
    assert (empty.p50_s, empty.max_s) == (None, None)


@pytest.mark.parametrize(
    ("measured", "limit", "lower_bound", "expected"),
    [
        (1.5, 2.0, False, "met"),
        (2.0, 2.0, False, "met"),
        (2.01, 2.0, False, "missed"),
        (40.0, 2.0, True, "missed"),  # at least 40: certainly over
        (1.5, 2.0, True, "unknown"),  # at least 1.5: could be either
        (None, 2.0, False, "not measured"),
        (0, 0, False, "met"),
        (1, 0, False, "missed"),
    ],
)
def test_verdict(measured: float | None, limit: float, lower_bound: bool, expected: str) -> None:
    assert verdict(measured, limit, lower_bound=lower_bound) == expected


def test_a_target_row_shows_the_measure_the_target_and_the_verdict() -> None:
    assert target_row("ratio", 3.456, 2.0, "x", lower_bound=True) == {
        "target": "ratio",
        "measured": "≥ 3.46x",
        "target_value": "≤ 2x",
        "result": "missed",
    }
    assert target_row("rss", None, 100.0, " MB")["measured"] == "-"
    assert target_row("connections", 1024, 1024.0)["measured"] == "1024"  # whole, not 1.02e+03
    assert ratio(3.0, 1.5) == 2.0
    assert ratio(None, 1.0) is None and ratio(1.0, 0.0) is None


def test_the_behind_targets_compare_arm_b_with_arm_a() -> None:
    a = {"batch_lines_queued": 0, "p50_s": 1.0, "max_s": 2.0, "lower_bound": False}
    b = {"batch_lines_queued": 300, "p50_s": 1.5, "max_s": 90.0, "lower_bound": True}
    p50, worst = waiting.targets_behind([a, b])
    assert "300-line" in p50["target"]
    assert (p50["measured"], p50["result"]) == ("≥ 1.5x", "unknown")
    assert (worst["measured"], worst["result"]) == ("≥ 45x", "missed")


def test_the_tally_counts_answers_by_request_id() -> None:
    answers = [(200, "r1"), (200, "r2"), (202, "r3"), (200, "r2"), (0, None), (200, None)]
    counted = tally(answers)
    assert (counted.calls, counted.ok_200, counted.fell_back_202, counted.other) == (6, 4, 1, 1)
    assert (counted.distinct_ids, counted.repeated_ids, counted.without_id) == (3, 1, 1)
    assert not counted.exactly_once
    assert tally([(200, "a"), (200, "b")]).exactly_once
    assert not tally([(200, "a"), (202, "b")]).exactly_once  # a 202 is not an answer
    assert not tally([(200, "a"), (200, "a")]).exactly_once
    assert reply_counts({"a": 1, "b": 0, "c": 2, "d": 1}) == (1, 1)


def test_the_part_two_targets_follow_the_row() -> None:
    row = {
        "waiters": 10, "answered_200": 9, "repeated_request_ids": 0, "reply_missing": 0,
        "reply_duplicated": 1, "rss_growth_mb": 12.5, "redis_conns_peak": 3,
        "redis_pool_size": 1024, "ingress_p99_ratio_held": 1.3,
    }  # fmt: skip
    once, rss, conns, hp = many_targets(row)
    assert (once["measured"], once["result"]) == ("2", "missed")
    assert (rss["measured"], rss["result"]) == ("12.5 MB", "met")
    assert (conns["measured"], conns["target_value"], conns["result"]) == ("3", "≤ 1024", "met")
    assert (hp["measured"], hp["result"]) == ("1.3x", "missed")


STATUS = "Name:\tpython\nVmHWM:\t  90000 kB\nVmRSS:\t  81234 kB\nThreads:\t4\n"
NET_TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt uid inode
   0: 0100007F:9C40 0100007F:1A85 01 00000000:00000000 00:00000000 00000000  1000        0 111 1 0
   1: 0100007F:9C41 0100007F:1A85 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0
   2: 0100007F:9C42 0100007F:1A85 06 00000000:00000000 00:00000000 00000000  1000        0 333 1 0
   3: 0100007F:9C43 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 444 1 0
   4: 0100007F:9C44 0100007F:1A85 01 00000000:00000000 00:00000000 00000000  1000        0 555 1 0
"""


def test_proc_texts_give_the_rss_and_the_connections_to_redis() -> None:
    assert status_kb(STATUS, "VmRSS") == 81234 and status_kb(STATUS, "VmHWM") == 90000
    assert status_kb(STATUS, "VmSwap") is None
    inodes = socket_inodes(["socket:[111]", "pipe:[222]", "/dev/null", "socket:[333]",
                            "socket:[444]", "socket:[222]"])  # fmt: skip
    assert inodes == {"111", "333", "444", "222"}
    # 0x1A85 = 6789 (Redis): 111 and 222 are established and ours; 333 is closing (06),
    # 444 goes elsewhere, 555 is another process's
    assert local_ports_to(NET_TCP, inodes, 6789) == {0x9C40, 0x9C41}
    listed = [
        {"addr": "127.0.0.1:40000", "idle": 12, "psub": 1, "cmd": "psubscribe"},
        {"addr": "127.0.0.1:40001", "idle": 0, "psub": 0},
        {"addr": "127.0.0.1:40004", "idle": 0, "psub": 0},  # another process's
        {"addr": "[::1]:40000", "idle": 30},
        {},
    ]
    # by port, on either address family
    assert redis_clients(listed, {0x9C40, 0x9C41}) == {
        "clients": 3, "active_last_s": 1, "active_commands": "?:1", "subscriptions": 1,
    }  # fmt: skip
    stat = "4242 (python -m orchestrator) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0"
    assert stat_cpu_s(stat, 100) == 3.0  # utime 250 + stime 50 ticks


def test_the_batch_file_holds_the_waiting_calls_request_on_every_line() -> None:
    body = waiting.line_body(7)
    assert body == waiting.line_body(7) and body["model"] == DEPLOYMENT
    assert body["max_tokens"] == waiting.LINE_SHAPE.max_tokens
    lines = waiting.batch_file(body, 3).decode().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert [p["custom_id"] for p in parsed] == ["line-0", "line-1", "line-2"]
    assert all(p["body"] == body and p["url"] == "/v1/chat/completions" for p in parsed)


def test_a_call_belongs_to_the_phase_it_started_in() -> None:
    marks = {"before": 10.0, "enqueue": 30.0, "held": 37.0, "count": 57.0, "end": 60.0}
    assert [phase_of(t, marks) for t in (5.0, 10.0, 29.9, 30.0, 40.0, 57.5, 61.0)] == [
        "warmup", "before", "before", "enqueue", "held", "count", "end",
    ]  # fmt: skip


def test_latency_by_phase_compares_held_and_draining_with_before_and_after() -> None:
    calls = [("before", float(ms), 200) for ms in range(1, 101)]
    calls += [("after", float(ms), 200) for ms in range(1, 101)]
    calls += [("held", 2.0 * ms, 200) for ms in range(1, 101)] + [("held", 1.0, 429)]
    calls += [("enqueue", 9999.0, 200)]  # in no phase compared
    row = latency_by_phase(calls, "ingress", ("before", "held", "draining", "after"))
    assert row["ingress_p99_without_ms"] == 99.01  # 200 values: between the two 99s and 100s
    assert (row["ingress_held_calls"], row["ingress_held_errors"]) == (101, 1)
    assert row["ingress_held_p50_ms"] == 101.0 and row["ingress_held_p99_ms"] == 198.02
    assert row["ingress_p99_ratio_held"] == 2.0
    assert row["ingress_draining_calls"] == 0 and row["ingress_draining_p99_ms"] is None
    assert row["ingress_p99_ratio_draining"] is None


def test_rates_per_phase_and_errors_by_status() -> None:
    marks = {"before": 10.0, "held": 30.0, "after": 40.0, "end": 50.0}
    cpu = {"before": 1.0, "held": 3.0, "after": 8.0, "end": 8.0}
    assert phase_rates(marks, cpu) == {"before": 0.1, "held": 0.5, "after": 0.0}
    answers = [(200, "a"), (503, None), (0, None), (503, None), (202, "b")]
    assert errors_by_status(answers) == {"0": 1, "503": 2}
