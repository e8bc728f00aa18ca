"""Request counters per server and endpoint, for tests that assert on traffic.

Kept apart from the catalog so that resetting counters never touches indexes.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    from .sim import Simulation


class Stats:
    """Counts every request that reached a server's HTTP layer (faulty or not)."""

    def __init__(self, servers: int) -> None:
        self.by_server: List[Counter[str]] = [Counter() for _ in range(servers)]
        self.txn: Counter[str] = Counter()
        self.blocked_reads_woken = 0  # a held blocking read woken to look at its index again

    def record(self, server: int, method: str, endpoint: str) -> None:
        """Count one request under its route pattern (``/v1/catalog/service/:arg``)."""
        self.by_server[server][f"{method} {endpoint}"] += 1

    def record_txn(self, kind: str, ops: int, conflict: bool) -> None:
        """Count one transaction answered by a server RPC (``kind`` read or write)."""
        self.txn[kind] += 1
        self.txn["ops"] += ops
        self.txn["conflicts"] += conflict

    def reset(self) -> None:
        for counter in self.by_server:
            counter.clear()
        self.txn.clear()
        self.blocked_reads_woken = 0

    def snapshot(self, sim: Simulation) -> Dict[str, Any]:
        """The JSON document ``SimCluster.stats()`` returns (see README.md)."""
        total: Counter[str] = Counter()
        servers = []
        for i, counter in enumerate(self.by_server):
            total.update(counter)
            faults = sim.topology.faults[i]
            servers.append(
                {
                    "address": sim.addresses[i] if i < len(sim.addresses) else "",
                    "node": sim.node_name(i),
                    "up": faults.up,
                    "blackholed": faults.blackholed,
                    "slow_seconds": faults.slow_seconds,
                    "txn_refusal": faults.txn_refusal,
                    "no_block": faults.no_block,
                    "leader": sim.topology.leader == i,
                    "requests": sum(counter.values()),
                    "endpoints": dict(sorted(counter.items())),
                }
            )
        return {
            "servers": servers,
            "requests": sum(total.values()),
            "endpoints": dict(sorted(total.items())),
            "writes_applied": sim.store.writes_applied,
            "writes_changed": sim.store.writes_changed,
            "txn": {k: self.txn[k] for k in ("read", "write", "conflicts", "ops")},
            "blocked_reads_woken": self.blocked_reads_woken,
            "leader": sim.topology.leader,
            "term": sim.topology.term,
            "raft_index": sim.store.idx.raft,
            "indexes": sim.store.snapshot(),
        }
