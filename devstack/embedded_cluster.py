"""A real 3-master Redis Cluster on loopback, for the tests: what Azure Managed Redis runs.

Three `valkey-server --cluster-enabled yes` processes (the same binary as
`EmbeddedRedis`), each given a third of the 16384 slots with CLUSTER ADDSLOTSRANGE,
joined with CLUSTER MEET, ready once every node reports `cluster_state:ok`. By default no
replicas: the suite tests slot routing and the one-slot rule. `replicas=1` gives each
master a replica (CLUSTER REPLICATE), what the failover tests need; `cut_off` and
`promote` let them make a replica fall behind its master and take over from it.
"""

from __future__ import annotations

import time
from typing import Self

import redis
from redis.crc import key_slot

from devstack.embedded_redis import EmbeddedRedis, Managed
from orchestrator.core.errors import PTUError
from orchestrator.core.serving import free_port

SLOTS = 16384


class EmbeddedCluster(Managed):
    """Three cluster-enabled servers sharing the slots; a context manager."""

    def __init__(
        self, masters: int = 3, *, replicas: int = 0, node_timeout_ms: int = 15_000
    ) -> None:
        # the bus port is given: the default (port + 10000) may not exist or be taken
        self.masters = masters
        self.bus_ports = [free_port() for _ in range(masters * (1 + replicas))]
        options = {"cluster-enabled": "yes", "cluster-node-timeout": str(node_timeout_ms)}
        self.nodes = [
            EmbeddedRedis(free_port(), options={**options, "cluster-port": str(bus)})
            for bus in self.bus_ports
        ]
        """The masters first, then the replicas: `nodes[masters + i]` replicates `nodes[i]`
        (the roles they started in; a promotion swaps them)."""

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
            masters = clients[: self.masters]
            share = SLOTS // len(masters)
            for i, client in enumerate(masters):
                first = i * share
                last = SLOTS - 1 if i == len(masters) - 1 else first + share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)  # type: ignore[no-untyped-call]
            deadline = time.monotonic() + timeout_s
            while not all(_ok(c, len(clients)) for c in clients):
                _until(deadline, timeout_s)
            for i, replica in enumerate(clients[self.masters :]):
                master_id = masters[i % self.masters].execute_command("CLUSTER", "MYID")  # type: ignore[no-untyped-call]
                replica.execute_command("CLUSTER", "REPLICATE", master_id)  # type: ignore[no-untyped-call]
            replicas = len(clients) // self.masters - 1
            while not all(_replicated(m, replicas) for m in masters):
                _until(deadline, timeout_s)
            # CLUSTER SLOTS lists a replica once gossip says it holds data: until then a
            # client would not know the replica exists
            while replicas and not all(_slots_list(c, replicas) for c in clients):
                for i, master in enumerate(masters):
                    master.set(
                        _key_in(
                            i * share, SLOTS - 1 if i == len(masters) - 1 else (i + 1) * share - 1
                        ),
                        "1",
                    )
                _until(deadline, timeout_s)
            for client in clients:
                client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def cut_off(self, replica: EmbeddedRedis) -> None:
        """Make `replica` fall behind: its link to the master is dropped and cannot be made
        again (it now authenticates as a user the master does not know), so every write the
        master takes from here on exists only there, as with a replica seconds behind."""
        with redis.Redis(port=replica.port, socket_timeout=5) as client:
            master_port = int(_fields(client.info("replication"))["master_port"])
            with redis.Redis(port=master_port, socket_timeout=5) as master:
                # caught up first: what the master took before this is on the replica
                wanted = int(_fields(master.info("replication"))["master_repl_offset"])
                deadline = time.monotonic() + 10
                while int(_fields(client.info("replication"))["slave_repl_offset"]) < wanted:
                    _until(deadline, 10)
            client.config_set("masteruser", "ptu-cut-off")
            client.config_set("masterauth", "not-a-password")
            client.execute_command("CLIENT", "KILL", "TYPE", "master")
            deadline = time.monotonic() + 10
            while _link_up(client):
                _until(deadline, 10)

    def promote(self, replica: EmbeddedRedis, timeout_s: float = 30.0) -> None:
        """`CLUSTER FAILOVER TAKEOVER` on `replica` (its master is dead or cut off) and wait
        until every live node serves every slot again."""
        with redis.Redis(port=replica.port, socket_timeout=5) as client:
            client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for node in self.nodes:
                try:
                    with redis.Redis(port=node.port, socket_timeout=1) as c:
                        states.append(_fields(c.execute_command("CLUSTER", "INFO")))
                except redis.exceptions.ConnectionError:
                    continue  # the dead one
            if all(f.get("cluster_state") == "ok" for f in states) and _serves(replica):
                return
            _until(deadline, timeout_s)

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedCluster ports={[n.port for n in self.nodes]}>"


def _until(deadline: float, timeout_s: float) -> None:
    if time.monotonic() > deadline:
        raise PTUError(f"embedded cluster not ready in {timeout_s}s")
    time.sleep(0.05)


def _fields(info: object) -> dict[str, str]:
    if isinstance(info, dict):  # INFO, parsed by redis-py (`slave0` a dict of its own)
        return {str(k): str(v) for k, v in info.items()}
    text = info.decode() if isinstance(info, bytes) else str(info)
    return dict(line.strip().split(":", 1) for line in text.splitlines() if ":" in line)


def _ok(client: redis.Redis, nodes: int) -> bool:
    fields = _fields(client.execute_command("CLUSTER", "INFO"))  # type: ignore[no-untyped-call]
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_known_nodes") == str(nodes)
        and fields.get("cluster_slots_ok") == str(SLOTS)
    )


def _replicated(master: redis.Redis, replicas: int) -> bool:
    fields = _fields(master.execute_command("INFO", "replication"))  # type: ignore[no-untyped-call]
    online = sum(1 for k, v in fields.items() if k.startswith("slave") and "'online'" in v)
    return online >= replicas


def _key_in(first: int, last: int) -> str:
    """A key whose slot lies in first..last (a write there replicates on that master)."""
    n = 0
    while not first <= key_slot(f"ptu:cluster-ready:{n}".encode()) <= last:
        n += 1
    return f"ptu:cluster-ready:{n}"


def _slots_list(client: redis.Redis, replicas: int) -> bool:
    ranges = client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
    return all(len(r) >= 3 + replicas for r in ranges)


def _link_up(replica: redis.Redis) -> bool:
    fields = _fields(replica.execute_command("INFO", "replication"))  # type: ignore[no-untyped-call]
    return fields.get("master_link_status") == "up"


def _serves(node: EmbeddedRedis) -> bool:
    with redis.Redis(port=node.port, socket_timeout=1) as c:
        fields = _fields(c.execute_command("INFO", "replication"))
    return fields.get("role") == "master"
