"""What an operator sees when something is wrong: one line on stderr, never a traceback.

Each verb runs as a process, as the operator runs it: Redis unreachable (every verb that
reads it) or silent, a malformed `PTU_REDIS_URL` holding a password (in every long-running
verb), a variable left blank, an empty upstream key with no Entra ID credential, Ctrl-C on
the ingress, the worker and `ptu status`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2
import pytest

from orchestrator.core import keys
from orchestrator.core.serving import free_port
from tests import redis_mode
from tests.support import cli

DEPLOYMENTS = '[{"name": "d", "model": "gpt-4o-mini", "ptus": 15}]'
UPSTREAM = {"PTU_DEPLOYMENTS": DEPLOYMENTS, "PTU_AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9"}
REDIS_VERBS = (
    ["usage"],
    ["dlq", "list"],
    ["dlq", "show", "some-entry"],
    ["dlq", "replay", "--all"],
    ["dlq", "purge", "--all"],
    ["status", "--once"],
    ["worker"],
    ["estimator"],
    ["ingress", "--port", "0"],
)
NO_ENTRA = {"AZURE_TOKEN_CREDENTIALS": "EnvironmentCredential"}
"""azure-identity's own switch: DefaultAzureCredential tries only the environment's
credential, which these tests leave unconfigured, so it fails at once on any machine."""


def one_line(out: subprocess.CompletedProcess[str]) -> str:
    assert not cli.has_traceback(out.stderr), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    return out.stderr.strip()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_every_redis_verb_says_redis_is_unreachable_in_one_line() -> None:
    port = free_port()
    env = cli.ptu_env({**UPSTREAM, "PTU_AZURE_OPENAI_API_KEY": "k",
                       "PTU_REDIS_URL": f"redis://127.0.0.1:{port}/0"})  # fmt: skip
    for verb in REDIS_VERBS:
        out = cli.run(verb, env)
        assert out.returncode == 1, (verb, out.stderr)
        line = one_line(out)
        assert line.startswith(f"ptu {verb[0]}: Redis unreachable at 127.0.0.1:{port} ")
        assert "(connection refused; PTU_REDIS_URL)" in line


def test_a_silent_redis_is_named_with_the_time_it_was_given(silent_server: int) -> None:
    env = cli.ptu_env({"PTU_REDIS_URL": f"redis://127.0.0.1:{silent_server}/0"})
    line = one_line(cli.run(["usage"], env))
    assert line == (
        f"ptu usage: Redis at 127.0.0.1:{silent_server} accepted the connection but did not "
        "answer PING within 2 s (PTU_REDIS_URL)"
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@localhost:6379/zero",
        "redis://user:s3cret@localhost:port/0",
        "redis//user:s3cret@localhost/0",
        "http://user:s3cret@localhost:6379/0",
    ],
)
def test_a_malformed_redis_url_is_never_echoed_with_its_password(url: str) -> None:
    out = cli.run(["dlq", "list"], cli.ptu_env({"PTU_REDIS_URL": url}))
    assert out.returncode == 2
    line = one_line(out)
    assert "s3cret" not in line and "PTU_REDIS_URL" in line and "***" in line


@pytest.mark.parametrize("verb", [["worker"], ["ingress", "--port", "0"], ["status", "--once"]])
def test_no_verb_echoes_the_password_of_a_malformed_redis_url(verb: list[str]) -> None:
    env = cli.ptu_env({**UPSTREAM, "PTU_REDIS_URL": "redis://user:s3cret@localhost:port/0"})
    out = cli.run(verb, env)
    assert out.returncode == 2
    line = one_line(out)
    assert "s3cret" not in line and "PTU_REDIS_URL" in line


BLANKS = (
    "PTU_REDIS_URL",
    "PTU_DEPLOYMENTS",
    "PTU_API_KEYS",
    "PTU_TENANTS",
    "PTU_MAX_CONCURRENCY",
    "PTU_METRICS_PORT",
    "PTU_QUEUE_BACKEND",
    "PTU_LOWER_THRESHOLD",
    "PTU_DEFAULT_PRIORITY",
    "PTU_AZURE_OPENAI_ENDPOINT",
    "PTU_LOG_LEVEL",
)
"""Variables a manifest may leave empty (`NAME=`) that have no meaning when empty."""


@pytest.mark.parametrize("name", BLANKS)
def test_a_blank_variable_stops_the_worker_in_one_line_naming_it(name: str) -> None:
    env = cli.ptu_env({**UPSTREAM, "PTU_AZURE_OPENAI_API_KEY": "k", name: ""})
    out = cli.run(["worker"], env)
    assert out.returncode == 2, out.stderr
    line = one_line(out)
    assert line.startswith(f"ptu worker: configuration error: {name}: "), line


@pytest.mark.parametrize("verb", [["worker"], ["ingress", "--port", "0"]])
def test_an_empty_key_without_entra_id_stops_the_process_in_one_line(
    redis_url: str, verb: list[str]
) -> None:
    env = cli.ptu_env(
        {**redis_mode.env(redis_url), **UPSTREAM, **NO_ENTRA, "PTU_AZURE_OPENAI_API_KEY": " "}
    )
    out = cli.run(verb, env)
    assert out.returncode == 2
    line = one_line(out)
    assert "cannot obtain an Entra ID token" in line and "PTU_AZURE_OPENAI_API_KEY" in line


def test_ctrl_c_stops_the_ingress_without_a_traceback(redis_url: str) -> None:
    port = free_port()
    env = cli.ptu_env({**redis_mode.env(redis_url), **UPSTREAM, "PTU_AZURE_OPENAI_API_KEY": "k"})
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "ingress", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _serving(port):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        _wait_for_children(process.pid, deadline)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not cli.has_traceback(stderr), stderr
    assert "KeyboardInterrupt" not in stderr
    assert process.returncode == 0


@pytest.mark.parametrize("verb", [["worker"], ["status", "--json"]])
def test_ctrl_c_stops_a_long_running_verb_without_a_traceback(
    redis_url: str, verb: list[str]
) -> None:
    env = cli.ptu_env({**redis_mode.env(redis_url), **UPSTREAM, "PTU_AZURE_OPENAI_API_KEY": "k"})
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *verb],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        with redis_mode.connect_sync(redis_url) as client:
            deadline = time.monotonic() + 60
            # running: the worker has beaten its heartbeat, status has printed a view
            while verb == ["worker"] and not client.hlen(keys.WORKERS):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        if verb[0] == "status":
            assert process.stdout is not None
            assert process.stdout.readline()  # its first view is out
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert not cli.has_traceback(stderr), stderr
    assert "KeyboardInterrupt" not in stderr
    assert process.returncode == 0


def _serving(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False


def _wait_for_children(pid: int, deadline: float) -> None:
    """Until the ingress's offload processes run (they are what Ctrl-C used to break)."""
    while time.monotonic() < deadline:
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        if len(children) >= 2:  # the resource tracker and at least one offload process
            return
        time.sleep(0.1)
    raise AssertionError("the ingress started no offload process")
