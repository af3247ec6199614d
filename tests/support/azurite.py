"""Azurite, Microsoft's Azure Storage emulator, as a local Blob endpoint for tests.

Installed from npm into `.tools/node` on first use (pinned version), started on a
free loopback port with its data in a temporary directory. Without node/npm the
tests that need it are skipped on a developer's machine but fail in CI (`CI` set),
so the Blob Storage contract is never silently untested there.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

VERSION = "3.37.0"
ROOT = Path(__file__).resolve().parents[2] / ".tools" / "node"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""The emulator's well-known development account (public, documented by Microsoft)."""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"azurite: {reason}")
    pytest.skip(f"azurite: {reason}")


def _installed() -> Path:
    main = ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    if main.exists():
        return main
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        _unavailable("node and npm are needed to install the emulator")
    ROOT.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(ROOT), f"azurite@{VERSION}"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0 or not main.exists():
        _unavailable(f"npm install failed: {done.stderr.decode(errors='replace')[-500:]}")
    return main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def azurite_blob() -> Iterator[str]:
    """The account URL of a running Azurite blob service."""
    main = _installed()
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="azurite-") as data:
        proc = subprocess.Popen(
            [
                str(shutil.which("node")), str(main), "--blobHost", "127.0.0.1",
                "--blobPort", str(port), "--location", data, "--silent",
                "--skipApiVersionCheck", "--loose",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    _unavailable(f"exited at start: {err[-500:]}")
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            else:
                _unavailable("did not listen within 30 s")
            yield f"http://127.0.0.1:{port}/{ACCOUNT}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
