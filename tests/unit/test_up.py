"""`ptu up`: what it decides to start from the settings, and how it shows the logs."""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from devstack.up import LogFollower, Plan, child_env, plan, simulator_spec
from orchestrator.core.errors import ConfigError
from orchestrator.core.logs import renders_console
from orchestrator.core.settings import DeploymentConfig, Settings

LOCAL = {
    "redis_url": "redis://127.0.0.1:6379/0",
    "azure_openai_endpoint": "http://127.0.0.1:8081",
    "azure_openai_api_key": "k",
    "deployments": [{"name": "ptu", "model": "gpt-4o-mini", "ptus": 15}],
    "ingress_url": "http://127.0.0.1:8080",
}


def args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**{"workers": 1, "estimator": False, **kw})


def decide(redis_up: bool = False, taken: frozenset[int] = frozenset(), **over: object) -> Plan:
    settings = Settings(**{**LOCAL, **over})  # type: ignore[arg-type]
    return plan(settings, args(), redis_up=lambda _url: redis_up, taken=lambda p: p in taken)


def test_a_local_env_starts_everything_on_its_ports() -> None:
    p = decide()
    assert (p.redis_port, p.simulator_port, p.ingress_port) == (6379, 8081, 8080)
    assert (p.estimator, p.workers, p.notes) == (False, 1, [])


def test_what_already_runs_is_used_and_a_real_endpoint_gets_no_simulator() -> None:
    p = decide(redis_up=True, taken=frozenset({8081}))
    assert p.redis_port is None and p.simulator_port is None
    assert any("using the server at redis://127.0.0.1:6379/0" in n for n in p.notes)
    azure = decide(azure_openai_endpoint="https://acct.openai.azure.com")
    assert azure.simulator_port is None
    assert decide(queue_backend="eventhubs").estimator


@pytest.mark.parametrize(
    ("over", "taken", "variable"),
    [
        ({"deployments": []}, frozenset(), "PTU_DEPLOYMENTS"),
        ({"ingress_url": "http://10.0.0.5:8080"}, frozenset(), "PTU_INGRESS_URL"),
        ({}, frozenset({8080}), "PTU_INGRESS_URL: cannot listen on 127.0.0.1:8080"),
        ({"redis_url": "redis://cache.example.com:6380/0"}, frozenset(), "PTU_REDIS_URL"),
        ({"azure_openai_api_key": None}, frozenset(), "PTU_AZURE_OPENAI_API_KEY"),
        ({"azure_openai_endpoint": None}, frozenset(), "PTU_AZURE_OPENAI_ENDPOINT"),
    ],
)
def test_what_prevents_it_is_one_line_naming_the_variable(
    over: dict[str, object], taken: frozenset[int], variable: str
) -> None:
    with pytest.raises(ConfigError) as info:
        decide(taken=taken, **over)
    assert str(info.value).startswith(variable) and "\n" not in str(info.value)


def test_the_simulator_serves_the_deployments_as_configured() -> None:
    assert simulator_spec(DeploymentConfig(name="a", model="gpt-4o", ptus=50)) == "a=gpt-4o:50"
    standard = DeploymentConfig(name="b", model="gpt-4o", kind="standard", tpm=90_000)
    assert simulator_spec(standard) == "b=gpt-4o:90000:standard"


def test_children_get_the_callers_ptu_variables_only() -> None:
    settings = Settings(**LOCAL, log_level="debug")  # type: ignore[arg-type]
    env = child_env(
        settings,
        {
            "PTU_REDIS_URL": "redis://x:1/0",
            "HOME": "/h",
            "PTU_X": "1",
            "OTEL_TRACES_EXPORTER": "otlp",
        },
    )
    assert env["PTU_REDIS_URL"] == "redis://x:1/0" and env["PTU_X"] == "1"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"  # the standard telemetry variables pass too
    assert "HOME" not in env and env["PTU_LOG_LEVEL"] == "debug"
    expected = "console" if sys.stderr.isatty() else "json"
    assert env["PTU_LOG_FORMAT"] == expected
    fixed = Settings(**LOCAL, log_format="json")  # type: ignore[arg-type]
    assert "PTU_LOG_FORMAT" not in child_env(fixed, {})


def test_the_follower_prints_complete_lines_prefixed(tmp_path: Path) -> None:
    out = io.StringIO()
    follower = LogFollower(tmp_path, out)
    log = tmp_path / "worker-0.log"
    log.write_text("first\nhalf")
    follower.poll()
    assert out.getvalue() == "worker-0  | first\n"
    with log.open("a") as fh:
        fh.write(" done\n")
    follower.poll()
    assert out.getvalue().splitlines()[-1] == "worker-0  | half done"


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_log_format_is_console_on_a_terminal_only() -> None:
    assert renders_console("auto", Tty()) and not renders_console("auto", io.StringIO())
    assert renders_console("console", io.StringIO()) and not renders_console("json", Tty())


def test_the_redis_url_is_shown_without_its_password() -> None:
    used = decide(redis_up=True, redis_url="redis://app:s3cret@127.0.0.1:6379/0")
    assert any("redis://app:***@127.0.0.1:6379/0" in n for n in used.notes)
    assert "s3cret" not in " ".join(used.notes)
    with pytest.raises(ConfigError) as info:
        decide(redis_url="rediss://app:s3cret@cache.example.com:6380/0")
    assert "s3cret" not in str(info.value) and "app:***@" in str(info.value)


def test_each_worker_gets_its_own_metrics_port() -> None:
    settings = Settings(**LOCAL, metrics_port=9100)  # type: ignore[arg-type]
    p = plan(settings, args(workers=3), redis_up=lambda _url: False, taken=lambda _p: False)
    assert p.metrics_ports == [9100, 9101, 9102]
    assert decide().metrics_ports == []  # no PTU_METRICS_PORT: none
    assert decide(metrics_port=0).metrics_ports == []  # 0: each worker its own free port


def test_a_taken_worker_metrics_port_is_one_line() -> None:
    settings = Settings(**LOCAL, metrics_port=9100)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        plan(settings, args(workers=2), redis_up=lambda _url: False, taken=lambda p: p == 9101)
    assert str(info.value).startswith("PTU_METRICS_PORT: worker-1's metrics port")
    assert "127.0.0.1:9101" in str(info.value) and "\n" not in str(info.value)
