"""The one retry and timeout policy for talking to Consul (like patroni's `Retry`).

Every number that decides when regagent asks a server again lives here, so that ten thousand
hosts do not act in step: a failed server cools down for a time that doubles with each failure
and is jittered; the daemon's interval is jittered; a cycle has a deadline shorter than the
systemd watchdog, and every call has its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from regagent.config.model import Config

Rng = Callable[[], float]  # uniform in [0, 1), like random.random

# A cycle must end well before systemd's watchdog would restart a daemon that stopped pinging
# (WatchdogSec=120s in the shipped unit, pinged every 60 s); what is left undone is completed by
# the next cycle.
CYCLE_DEADLINE = 50.0


def jittered(base: float, spread: float, rng: Rng = random.random) -> float:
    """`base` moved by up to `spread` either way, uniformly."""
    return base + spread * (2 * rng() - 1)


@dataclass(frozen=True)
class RetryPolicy:
    """Cool-down of failed servers, the leader search, and the deadlines of calls and cycles."""

    cooldown_initial: float = 5.0
    cooldown_max: float = 300.0
    cooldown_jitter: float = 0.2  # +/- this fraction of the cool-down
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    cycle_deadline: float = CYCLE_DEADLINE

    @classmethod
    def from_config(cls, config: Config) -> RetryPolicy:
        consul = config.consul
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

    def leader_searches(self, servers: int) -> int:
        """How many other servers to ask when the one answering knows no leader: all of them
        once, so one cut-off server does not make the whole cluster look leaderless."""
        return max(0, servers - 1)
