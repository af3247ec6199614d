"""`ptu bench cost`'s `Meter` against a real server: a phase is charged exactly the commands
run during it, none of the harness's own."""

from __future__ import annotations

import os

import redis

from bench.scenarios.cost_measures import command_delta, per_request
from bench.scenarios.cost_probe import Meter
from bench.scenarios.waiting_probe import cpu_s
from devstack.embedded_redis import EmbeddedRedis


def test_a_phase_is_charged_what_ran_in_it_and_nothing_of_the_meter() -> None:
    with EmbeddedRedis() as server:
        other = redis.Redis.from_url(server.url)
        other.ping()  # its connection's handshake before the first reading
        meter = Meter(server.url)
        try:
            quiet = meter.read({})
            idle = meter.read({})
            assert command_delta(quiet.commands, idle.commands) == {}
            for i in range(5):
                other.set(f"k{i}", i)
            other.get("k0")
            busy = meter.read({"me": os.getpid()})
            while cpu_s(os.getpid()) == busy.process_cpu_s["me"]:
                sum(range(100_000))  # until this process's CPU counter moves a tick
            after = meter.read({"me": os.getpid()})
        finally:
            meter.close()
            other.close()
    assert command_delta(idle.commands, busy.commands) == {"set": 5, "get": 1}
    assert busy.redis_cpu_s >= idle.redis_cpu_s > 0
    row = per_request(busy, after, 1, "me")
    assert row["redis_commands"] == 0  # the meter's own INFO is not charged
    assert row["process_cpu_ms"] > 0
