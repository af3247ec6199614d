"""A SIGKILLed ingress takes its batch offload processes with it (none re-parented to PID 1)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from devstack.stack import SimulatorOptions, Stack


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (read from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_offload_processes_die_with_a_sigkilled_ingress(tmp_path: Path) -> None:
    sim = SimulatorOptions(deployment="ptu", model="gpt-4o-mini", ptus=100)
    with Stack(tmp_path, sim) as stack:
        stack.start_redis()
        stack.start_simulator()
        env = stack.base_env(PTU_FILES_DIR=str(tmp_path / "files"))
        stack.start_ingress(env)
        ingress = stack.children["ingress"].proc
        deadline = time.monotonic() + 60
        while len(children_of(ingress.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the offload processes start (warm) with the ingress
        offload = children_of(ingress.pid)
        assert len(offload) >= 2, offload
        os.kill(ingress.pid, signal.SIGKILL)  # the ingress alone, not its process group
        ingress.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(p) for p in offload) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in offload if alive(p)]
        for pid in left:  # leave nothing behind whatever the outcome
            os.kill(pid, signal.SIGKILL)
        stack.children.pop("ingress")
    assert left == [], f"offload processes outlived their ingress: {left}"
