"""Running `ptu` as a process the way an operator does: a pipe that closes, its stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence


def ptu_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The test process's environment without its `PTU_*` variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PTU_")}
    return {**env, "PTU_LOG_LEVEL": "warning", **extra}


def run(
    args: Sequence[str], env: Mapping[str, str], timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`ptu ARGS` to completion, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def into_closed_pipe(
    args: Sequence[str], env: Mapping[str, str], timeout_s: float = 60.0
) -> tuple[int, str]:
    """`ptu ARGS | head -0`: stdout is a pipe whose reader is gone before the verb writes.

    The read end is closed as soon as the process exists; the interpreter takes far
    longer to import the verb than that, so every write the verb makes meets a closed
    pipe. Returns the exit status and stderr.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", *args],
        env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    process.stdout.close()
    try:
        _, stderr = process.communicate(timeout=timeout_s)
    finally:
        process.kill()
    return process.returncode, stderr


def has_traceback(stderr: str) -> bool:
    """Whether Python printed a traceback (or an exception it ignored) on stderr."""
    return "Traceback (most recent call last)" in stderr or "Exception ignored" in stderr
