"""The README's "Using it" runs as pasted: its commands, taken from README.md itself.

The blocks between `<!-- readme-walk:NAME -->` and `<!-- /readme-walk -->` are run with
bash in a temporary directory laid out like a checkout (`.venv` linked, `.env.example`
copied), from a clean environment: no `PTU_*`, no virtualenv on PATH. The `server` block
(`ptu up`) runs in the background as a first shell would; once it says `ready`, the
`client` block runs in a second shell (its Python blocks through `python`, as typed at
the prompt); then Ctrl-C (SIGINT to the first shell's process group) must stop
everything. The only change to what the README says: `.env.example`'s loopback ports
become free ones, so the test does not collide with anything else on the machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.serving import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
BLOCK = re.compile(r"<!-- readme-walk:(\w+) -->\n(.*?)<!-- /readme-walk -->", re.S)
FENCE = re.compile(r"```(bash|python)\n(.*?)```", re.S)
READY_TIMEOUT_S = 120.0
CLIENT_TIMEOUT_S = 120.0


def walk_blocks(text: str) -> dict[str, str]:
    """Each marked section of the README as one bash script (Python blocks through python)."""
    out: dict[str, str] = {}
    for name, body in BLOCK.findall(text):
        parts = []
        for lang, code in FENCE.findall(body):
            parts.append(code if lang == "bash" else f"python - <<'PY'\n{code}PY\n")
        out[name] = "set -e\n" + "\n".join(parts)
    return out


def clean_env(home: Path) -> dict[str, str]:
    """A fresh login's environment: no PTU_*, no virtualenv, nothing of this test process."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def checkout(tmp: Path) -> dict[str, int]:
    """A directory shaped like the checkout; `.env.example` on free loopback ports."""
    (tmp / ".venv").symlink_to(ROOT / ".venv")
    ports = {old: free_port() for old in (6379, 8081, 8080)}
    text = ENV_EXAMPLE.read_text()
    for old, new in ports.items():
        assert f"127.0.0.1:{old}" in text
        text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    (tmp / ".env.example").write_text(text)
    return ports


def answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def blocks() -> dict[str, str]:
    found = walk_blocks(README.read_text())
    assert set(found) == {"server", "client"}, "README lost its readme-walk markers"
    return found


def test_the_blocks_are_what_the_readme_shows(blocks: dict[str, str]) -> None:
    assert "ptu up" in blocks["server"] and "set -a; . ./.env; set +a" in blocks["server"]
    assert "python - <<'PY'" in blocks["client"] and "blpop" in blocks["client"]


@pytest.fixture
def server(tmp_path: Path, blocks: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    work = tmp_path / "checkout"
    work.mkdir()
    ports = checkout(work)
    out = tmp_path / "server.out"
    with out.open("w") as fh:
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-c", blocks["server"]],
            cwd=work,
            env=clean_env(tmp_path),
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # processes `ptu up` started live in their own sessions: end any it failed to stop
        for pid in re.findall(r"pid (\d+)", out.read_text()):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                continue
        assert not any(answers(p) for p in ports.values()), "a process outlived the test"


def wait_ready(proc: subprocess.Popen[str], out: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while "ptu up: ready" not in out.read_text():
        assert proc.poll() is None, f"ptu up exited early:\n{out.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"ptu up not ready:\n{out.read_text()[-3000:]}"
        time.sleep(0.2)


@pytest.mark.timeout(READY_TIMEOUT_S + CLIENT_TIMEOUT_S + 90)
def test_using_it_works_as_pasted_in_a_fresh_shell(
    server: tuple[subprocess.Popen[str], Path], blocks: dict[str, str], tmp_path: Path
) -> None:
    proc, out = server
    wait_ready(proc, out)
    client = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", blocks["client"]],
        cwd=tmp_path / "checkout",
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
    )
    shown = f"stdout:\n{client.stdout[-3000:]}\nstderr:\n{client.stderr[-3000:]}"
    assert client.returncode == 0, shown
    assert "ptu status" in client.stdout and "gpt-4o-mini-ptu" in client.stdout, shown
    assert '"status": "completed"' in client.stdout, shown  # ptu result's document
    assert "queued: 202 " in client.stdout, shown
    assert "result: completed" in client.stdout, shown
    assert "reply key: completed" in client.stdout, shown

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the first shell
    assert proc.wait(timeout=60) == 0, out.read_text()[-3000:]
    text = out.read_text()
    assert "ptu up: stopped" in text, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
