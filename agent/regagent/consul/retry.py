"""The one retry and timeout policy for talking to Consul (like patroni's `Retry`).

Every number that decides when regagent asks a server again lives here, so that ten thousand
hosts do not act in step: a failed server cools down for a time that doubles with each failure
and is jittered; the daemon's interval is jittered; a cycle has a deadline shorter than the
systemd watchdog, and every call has its own.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from regagent.config.model import Config, ConsulConfig

Rng = Callable[[], float]  # uniform in [0, 1), like random.random

# A cycle must end well before systemd's watchdog would restart a daemon that stopped pinging
# (WatchdogSec=120s in the shipped unit, pinged every 60 s); what is left undone is completed by
# the next cycle.
CYCLE_DEADLINE = 50.0

# A 20-service node's answers are a few KiB; the catalog/node answer of a node with 1,000
# services is well under 1 MiB. 16 MiB is far above anything regagent reads and far below harm.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# The first sync after start waits a random part of this (or of sync.jitter, if smaller): enough
# to spread a fleet-wide restart over seconds, short enough for fast registration (issue 17).
FIRST_SYNC_JITTER_MAX = 5.0


def first_sync_delay(jitter: float, rng: Rng = random.random) -> float:
    """Seconds the daemon waits before its first sync: a random part of
    min(`sync.jitter`, FIRST_SYNC_JITTER_MAX), so a fleet restarted at once does not read and
    write in the same second, while a host still registers within seconds of starting."""
    return max(0.0, min(jitter, FIRST_SYNC_JITTER_MAX)) * rng()


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def start_index(node_name: str, servers: int) -> int:
    """The server this host starts at: stable per node name and uniform over the list, so a
    fleet spreads its reads instead of all using the first server. SHA-256, not `hash()`, which
    Python randomizes per process."""
    return _digest(node_name) % servers if servers > 1 else 0


def server_order(node_name: str, servers: int) -> List[int]:
    """The order this host tries servers in: its start server, then the others in an order
    also drawn from the node name, so the hosts of a lost server spread evenly over the rest
    instead of all moving to the next one in the list."""
    home = start_index(node_name, servers)
    rest = [i for i in range(servers) if i != home]
    return [home, *sorted(rest, key=lambda i: _digest(f"{node_name}#{i}"))]


def jittered(base: float, spread: float, rng: Rng = random.random) -> float:
    """`base` moved by up to `spread` either way, uniformly."""
    return base + spread * (2 * rng() - 1)


@dataclass(frozen=True)
class RetryPolicy:
    """Cool-down of failed servers, the leader search, and the deadlines of calls and cycles."""

    cooldown_initial: float = 5.0
    cooldown_max: float = 300.0
    cooldown_jitter: float = 0.2  # +/- this fraction of the cool-down
    # With every server cooling down, a cycle still asks this many (the one whose cool-down
    # ends first): an outage that heals is noticed within a cycle, not after up to
    # cooldown_max, and a dead cluster costs each host one request per cycle.
    early_tries_per_cycle: int = 1
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    cycle_deadline: float = CYCLE_DEADLINE
    max_answer_bytes: int = MAX_ANSWER_BYTES
    # Hedged reads: after this head start (or 4x the server's usual latency, if longer, up to
    # hedge_max) a read also goes to the next server; the first good answer wins.
    hedge_min: float = 0.3
    hedge_max: float = 1.0
    # Latency: an EWMA per server; a server is slow once its estimate, over at least
    # slow_min_samples answers, is above slow_floor and slow_factor times a peer's.
    latency_alpha: float = 0.3
    slow_floor: float = 0.5
    slow_factor: float = 4.0
    slow_min_samples: int = 3

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        return cls.from_consul(config.consul)

    @classmethod
    def from_consul(cls, consul: ConsulConfig) -> RetryPolicy:
        return cls(
            cooldown_initial=consul.cooldown_initial,
            cooldown_max=consul.cooldown_max,
            connect_timeout=consul.connect_timeout,
            read_timeout=consul.read_timeout,
        )

    @property
    def call_deadline(self) -> float:
        """Overall time one request may take, connect and answer included."""
        return self.connect_timeout + self.read_timeout

    def cooldown(self, failures: int, rng: Rng = random.random) -> float:
        """Seconds a server that failed `failures` times in a row is left alone: doubling from
        `cooldown_initial` up to `cooldown_max`, each jittered by +/- `cooldown_jitter`."""
        base = min(self.cooldown_max, self.cooldown_initial * 2.0 ** max(0, failures - 1))
        return base * (1 + self.cooldown_jitter * (2 * rng() - 1))

    def busy_cooldown(
        self, failures: int, retry_after: Optional[float], rng: Rng = random.random
    ) -> float:
        """A 429/503 cools down like any failure, and at least for the server's Retry-After
        (capped at `cooldown_max`, so a hostile header cannot park a server for a day)."""
        delay = self.cooldown(failures, rng)
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.cooldown_max))
        return delay

    def hedge_delay(self, latency: Optional[float]) -> float:
        """Head start a read gets on one server before it is also sent to the next."""
        if latency is None:
            return self.hedge_min
        return max(self.hedge_min, min(self.hedge_max, 4.0 * latency))

    def latency_estimate(self, previous: Optional[float], sample: float) -> float:
        """The EWMA after one more answer."""
        if previous is None:
            return sample
        return previous + self.latency_alpha * (sample - previous)

    def is_slow(
        self, estimate: Optional[float], samples: int, peers: Sequence[Optional[float]]
    ) -> bool:
        """Whether a server should give way to one of `peers` (the other usable servers'
        estimates, None for never measured): only when markedly slower, in absolute terms and
        relative to a peer, over several answers. The demotion that follows lasts
        `slow_demotion`, so two servers never swap places cycle after cycle."""
        if estimate is None or samples < self.slow_min_samples or estimate < self.slow_floor:
            return False
        return any(peer is None or peer * self.slow_factor <= estimate for peer in peers)

    def slow_demotion(self, rng: Rng = random.random) -> float:
        """How long a slow server is asked last: `cooldown_max`, jittered."""
        return self.cooldown_max * (1 + self.cooldown_jitter * (2 * rng() - 1))

    def leader_searches(self, servers: int) -> int:
        """How many other servers to ask when the one answering knows no leader: all of them
        once, so one cut-off server does not make the whole cluster look leaderless."""
        return max(0, servers - 1)
