"""Pure pieces of `ptu bench cost`: INFO parsing, deltas, the cost of one request, the
targets, /proc CPU, the flags."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from bench import cli
from bench.scenarios import cost
from bench.scenarios.cost_measures import (
    Reading,
    command_delta,
    parse_commandstats,
    parse_fail_opens,
    parse_redis_cpu_s,
    per_request,
    targets,
    top_commands,
    worst,
)
from bench.scenarios.cost_report import commands_table, per_request_table, scale_table
from bench.scenarios.waiting_measures import stat_cpu_s, target_row

COMMANDSTATS = (
    "# Commandstats\r\n"
    "cmdstat_hset:calls=25,usec=120,usec_per_call=4.80,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_evalsha:calls=7,usec=900,usec_per_call=128.57,rejected_calls=0,failed_calls=1\r\n"
    "cmdstat_client|setinfo:calls=2,usec=3,usec_per_call=1.50,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_INFO:calls=4,usec=400,usec_per_call=100.00\r\n"
    "\r\n"
    "# CPU\r\n"
    "used_cpu_sys:1.250000\r\n"
    "used_cpu_user:2.500000\r\n"
    "used_cpu_sys_children:9.000000\r\n"
    "used_cpu_sys_main_thread:1.000000\r\n"
)


def test_commandstats_give_the_calls_of_each_command_by_name() -> None:
    assert parse_commandstats(COMMANDSTATS) == {
        "hset": 25,
        "evalsha": 7,
        "client|setinfo": 2,
        "info": 4,
    }
    assert parse_commandstats("# Commandstats\r\n") == {}


def test_fail_opens_are_summed_over_what_from_the_metrics_text() -> None:
    text = "\n".join(
        [
            "# HELP ptu_ingress_redis_fail_open_total Redis calls ...",
            "# TYPE ptu_ingress_redis_fail_open_total counter",
            'ptu_ingress_redis_fail_open_total{what="breaker_sync"} 3.0',
            'ptu_ingress_redis_fail_open_total{what="token_event"} 40.0',
            'ptu_ingress_redis_fail_open_created{what="token_event"} 1.7e+09',
            'ptu_ingress_requests_total{priority="high"} 99.0',
        ]
    )
    assert parse_fail_opens(text) == 43
    assert parse_fail_opens("") == 0


def test_redis_cpu_is_system_plus_user_of_the_server_itself() -> None:
    # the children's and the main thread's figures are parts or others, not added
    assert parse_redis_cpu_s(COMMANDSTATS) == pytest.approx(3.75)
    with pytest.raises(ValueError, match="used_cpu_user"):
        parse_redis_cpu_s("used_cpu_sys:1.0\r\n")


def test_a_delta_leaves_out_what_did_not_run_and_the_harness_own_info() -> None:
    before = {"hset": 10, "get": 5, "info": 3}
    after = {"hset": 40, "get": 5, "info": 4, "evalsha": 2}
    # the first reading's INFO is in the second; nothing else of the harness's
    assert command_delta(before, after) == {"hset": 30, "evalsha": 2}
    assert list(command_delta(before, after)) == ["hset", "evalsha"]  # most called first
    assert command_delta(before, after, own={}) == {"hset": 30, "evalsha": 2, "info": 1}
    assert command_delta({}, {"info": 1}) == {}


def _reading(at: float, commands: dict[str, int], redis_s: float, ingress_s: float) -> Reading:
    return Reading(at, commands, redis_s, {"ingress": ingress_s})


def test_the_cost_of_one_request_divides_every_delta_by_the_requests() -> None:
    before = _reading(100.0, {"hset": 100, "hget": 10, "info": 1}, 2.0, 5.0)
    after = _reading(110.0, {"hset": 400, "hget": 160, "info": 2, "evalsha": 50}, 2.3, 8.0)
    row = per_request(before, after, 100, "ingress")
    assert row == {
        "requests": 100,
        "seconds": 10.0,
        "redis_commands": 5.0,  # (300 + 150 + 50) / 100
        "redis_cpu_ms": 3.0,  # 0.3 s / 100
        "process": "ingress",
        "process_cpu_ms": 30.0,  # 3 s / 100
        "commands": {"hset": 3.0, "hget": 1.5, "evalsha": 0.5},
    }
    empty = per_request(before, after, 0, "ingress")
    assert empty["redis_commands"] is None and empty["process_cpu_ms"] is None
    assert empty["commands"] == {"hset": None, "hget": None, "evalsha": None}


def test_process_cpu_between_two_proc_stat_texts() -> None:
    # a command name with a parenthesis and spaces does not shift the fields
    before = "77 (ptu (worker) x) S 1 2 3 4 5 6 7 8 9 10 100 20 0 0 20 0"
    after = "77 (ptu (worker) x) S 1 2 3 4 5 6 7 8 9 10 130 40 0 0 20 0"
    cpu = [stat_cpu_s(text, 100) for text in (before, after)]
    row = per_request(
        Reading(0.0, {}, 0.0, {"worker": cpu[0]}),
        Reading(1.0, {}, 0.0, {"worker": cpu[1]}),
        50,
        "worker",
    )
    assert row["process_cpu_ms"] == 10.0  # 50 ticks = 0.5 s over 50 calls


def _high(c: int, per_s: float, commands: float, redis_ms: float, cpu_ms: float) -> dict[str, Any]:
    return {
        "measure": "high-priority request",
        "concurrency": c,
        "per_s": per_s,
        "redis_commands": commands,
        "redis_cpu_ms": redis_ms,
        "process_cpu_ms": cpu_ms,
        "commands": {"hset": commands - 1, "get": 1.0},
    }


def test_the_targets_take_the_worst_concurrency_and_compare_both_ways() -> None:
    high = [_high(1, 400.0, 18.0, 0.1, 0.9), _high(128, 330.0, 21.0, 0.12, 1.4)]
    low = {"measure": "low-priority call", "per_s": 410.0, "redis_commands": 40.0}
    rows = {row["target"].split(":")[0] + row["target_value"]: row for row in targets(high, low)}
    assert [row["result"] for row in targets(high, low, 1.72)] == [
        "missed",  # 21 commands at 128 concurrent
        "met",
        "missed",  # 1.4 ms of ingress CPU
        "met",  # exactly 40
        "met",  # 410 calls/s
        "met",  # 330 / 400 = 0.825
        "met",  # two processes 1.72x one
    ]
    assert rows["one worker process≥ 400"]["measured"] == "410"
    assert targets(high, low)[5]["measured"] == "0.825x"
    assert targets(high, low)[5]["target"] == "one ingress: requests/s at 128 concurrent / at 1"
    assert targets(high, low, 1.69)[-1]["result"] == "missed"
    assert targets(high, low)[-1]["result"] == "not measured"
    slower = targets([_high(1, 400.0, 1, 0, 0), _high(128, 319.0, 1, 0, 0)], {"per_s": 399.9})
    assert [slower[4]["result"], slower[5]["result"]] == ["missed", "missed"]
    nothing = targets([], None)
    assert {row["result"] for row in nothing} == {"not measured"}


def test_an_at_least_target_row() -> None:
    assert target_row("calls/s", 126.4, 400.0, "/s", at_least=True) == {
        "target": "calls/s",
        "measured": "126/s",
        "target_value": "≥ 400/s",
        "result": "missed",
    }


def test_the_commands_shown_are_the_most_called_in_any_phase() -> None:
    rows = [
        {"commands": {"hset": 25.0, "hget": 13.0, "eval": 0.5}},
        {"commands": {"xadd": 30.0, "hget": 2.0}},
        {},
    ]
    assert top_commands(rows, 3) == ["xadd", "hset", "hget"]
    assert worst([{"x": 1.0}, {"x": None}, {"x": 3.0}, {}], "x") == 3.0
    assert worst([{"x": None}], "x") is None


def test_the_tables_show_each_phase_and_the_rest_of_the_commands() -> None:
    rows = [
        {
            **_high(1, 400.0, 5.0, 0.1, 0.9),
            "requests": 10,
            "errors": 0,
            "direct_per_s": 900.0,
            "fail_opens": 3,
            "process": "ingress",
            "commands": {f"c{i:02}": 1.0 for i in range(22)},
        },
        {
            "measure": "low-priority call",
            "concurrency": 64,
            "requests": 5,
            "per_s": 120.0,
            "errors": 0,
            "redis_commands": 2.0,
            "redis_cpu_ms": 0.5,
            "process": "worker",
            "process_cpu_ms": 4.0,
            "commands": {"c00": 2.0},
        },
    ]
    table = commands_table(rows).splitlines()
    assert table[0] == "| command | high, 1 concurrent | low-priority call |"
    assert table[-1] == "| other | 2 | - |"  # 22 commands, 20 shown
    assert table[2] == "| c00 | 1 | 2 |"
    shown = per_request_table(rows)
    assert "| low-priority call | 64 | 5 | 120 | - | 0 | - | 2 | 0.5 | worker | 4 |" in shown
    high = "| high-priority request | 1 | 10 | 400 | 900 | 0 | 3 | 5 | 0.1 | ingress | 0.9 |"
    assert high in shown


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(["cost", *argv])


def test_the_scenario_is_registered_with_its_flags() -> None:
    args = _parse("--quick", "--concurrency", "128,1,32,32", "--step-s", "3")
    assert args._module == "bench.scenarios.cost"
    cfg = cost.config_of(args)
    assert cfg.concurrencies == (1, 32, 128) and cfg.step_s == 3.0
    assert cfg.enqueue_requests == cost.QUICK.enqueue_requests
    full = cost.config_of(_parse())
    assert full.concurrencies == (1, 32, 128) and full.step_s > cost.QUICK.step_s


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--concurrency", "1,x"), "--concurrency takes integers"),
        (("--concurrency", "0,8"), "--concurrency levels must be positive"),
        (("--step-s", "0"), "--step-s must be positive"),
    ],
)
def test_a_bad_flag_is_one_clear_error(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        cost.config_of(_parse(*argv))


def test_the_scale_table_shows_both_ingress_arms_and_each_worker_count() -> None:
    result = {
        "ingress_scale": {
            "concurrency": 128,
            "one": {"per_s": 300.0, "errors": 0, "process_cpu_ms": 3.1},
            "two": {"per_s": 520.0, "errors": 1, "process_cpu_ms": 3.3},
            "ratio": 1.733,
        },
        "worker_scale": [{"workers": 1, "per_s": 150.0}, {"workers": 4, "per_s": 290.0}],
    }
    lines = scale_table(result).splitlines()
    assert lines[2] == "| ptu ingress | 128 | 300 | 0 | 3.1 |"
    assert lines[3] == "| ptu ingress --workers 2 | 128 | 520 | 1 | 3.3 |"
    assert lines[5] == "| 4 x ptu worker | - | 290 | - | - |"
    assert scale_table({}) == "(not measured)"
