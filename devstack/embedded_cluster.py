"""A real 3-master Redis Cluster on loopback, for the tests: what Azure Managed Redis runs.

Three `valkey-server --cluster-enabled yes` processes (the same binary as
`EmbeddedRedis`), each given a third of the 16384 slots with CLUSTER ADDSLOTSRANGE,
joined with CLUSTER MEET, ready once every node reports `cluster_state:ok`. No
replicas: the suite tests slot routing and the one-slot rule, not failover.
"""

from __future__ import annotations

import time
from typing import Self

import redis

from devstack.embedded_redis import EmbeddedRedis, Managed
from orchestrator.core.errors import PTUError
from orchestrator.core.serving import free_port

SLOTS = 16384


class EmbeddedCluster(Managed):
    """Three cluster-enabled servers sharing the slots; a context manager."""

    def __init__(self, masters: int = 3) -> None:
        # the bus port is given: the default (port + 10000) may not exist or be taken
        self.bus_ports = [free_port() for _ in range(masters)]
        self.nodes = [
            EmbeddedRedis(free_port(), options={"cluster-enabled": "yes", "cluster-port": str(bus)})
            for bus in self.bus_ports
        ]

    @property
    def url(self) -> str:
        """URL of the first node (any node would do: the client discovers the rest)."""
        return self.nodes[0].url

    def start(self, timeout_s: float = 30.0) -> Self:
        """Start the nodes, assign the slots, join them and wait for `cluster_state:ok`."""
        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis(port=n.port, socket_timeout=5) for n in self.nodes]
            share = SLOTS // len(clients)
            for i, client in enumerate(clients):
                first = i * share
                last = SLOTS - 1 if i == len(clients) - 1 else first + share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + timeout_s
            while not all(_ok(c, len(clients)) for c in clients):
                if time.monotonic() > deadline:
                    raise PTUError(f"embedded cluster not ready in {timeout_s}s")
                time.sleep(0.05)
            for client in clients:
                client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedCluster ports={[n.port for n in self.nodes]}>"


def _ok(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_known_nodes") == str(masters)
        and fields.get("cluster_slots_ok") == str(SLOTS)
    )
