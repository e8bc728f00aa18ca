"""Which emulated servers run, which one leads, and when the next election finishes.

Raft is reduced to the behaviour clients can observe: a leader exists only while a quorum of
servers runs; losing the leader (it stopped, or a test dropped it) leaves the cluster without
one for ``election_delay`` seconds, after which a running server is elected if a quorum is
still there. Black-holed, slow, dripping, endless and status-answering servers stay Raft
members: those faults only affect the server's HTTP port, as a hung API, a congested link, a
rate limiter or a broken proxy would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional


@dataclass
class ServerFaults:
    """Fault flags of one server's HTTP port."""

    up: bool = True
    blackholed: bool = False
    slow_seconds: float = 0.0
    txn_refusal: int = 0  # non-zero: /v1/txn answers this status (an old Consul, a proxy)
    # Misbehaving answers, for clients' bounds (each applies to every request of the port):
    answer_status: int = 0  # non-zero: answer this status (e.g. 429 rate limit, 503 overload)
    retry_after: int = 0  # with answer_status: a Retry-After header of this many seconds
    drip_seconds: float = 0.0  # > 0: send the answer one byte per this many seconds
    endless: bool = False  # a 200 whose body never ends
    no_block: bool = False  # blocking reads answered at once, whatever ?index (a broken proxy)


class Topology:
    """Leader and quorum bookkeeping; the caller holds the cluster lock and passes ``now``."""

    def __init__(self, count: int, election_delay: float) -> None:
        self.count = count
        self.election_delay = election_delay
        self.faults: List[ServerFaults] = [ServerFaults() for _ in range(count)]
        self.leader: Optional[int] = 0
        self.election_at: Optional[float] = None
        self.excluded: Optional[int] = None
        self.leaderless_since: Optional[float] = None
        self.term = 1

    def up(self, i: int) -> bool:
        return self.faults[i].up

    def quorum(self) -> bool:
        """A majority of the configured servers is running."""
        return sum(f.up for f in self.faults) >= self.count // 2 + 1

    def drop_leader(self, now: float) -> Optional[int]:
        """Force the leader to step down; it sits out the next election if others can win."""
        old = self.leader
        if old is not None:
            self._lose(now)
            self.excluded = old
        self.reconcile(now)
        return old

    def _lose(self, now: float) -> None:
        self.leader = None
        self.leaderless_since = now
        self.election_at = None

    def reconcile(self, now: float) -> bool:
        """Apply the rules for the current fault state; True when the leader changed."""
        changed = False
        if self.leader is not None and (not self.up(self.leader) or not self.quorum()):
            self._lose(now)
            changed = True
        if self.leader is None:
            if not self.quorum():
                self.election_at = None
            elif self.election_at is None:
                self.election_at = now + self.election_delay
            if self.election_at is not None and now >= self.election_at:
                running = [i for i in range(self.count) if self.up(i)]
                preferred = [i for i in running if i != self.excluded] or running
                self.leader = preferred[0]
                self.election_at = None
                self.excluded = None
                self.leaderless_since = None
                self.term += 1
                changed = True
        return changed

    def next_deadline(self) -> Optional[float]:
        """When ``reconcile`` must run next to complete a pending election."""
        return self.election_at

    def last_contact_ms(self, now: float) -> int:
        """``X-Consul-LastContact``: 0 on the leader or with a leader; age of the loss else."""
        if self.leader is not None or self.leaderless_since is None:
            return 0
        return int((now - self.leaderless_since) * 1000)
