"""Probe results per listener, so a quick pass probes only what is new or due for a retry.

This is for the candidates probed inside a pass: those on the port of a service discovery
keeps (the others are identified in the background, `regagent.discovery.unconfirmed`). A full
cycle probes every one of them: the probe is the discovered exporter's health check, due
once per cycle. The watch's quick passes between full cycles reuse the last result for a
listener they have probed before and probe only the rest. A listener is named by its port and
the inodes of its sockets: an inode lives as long as its socket, so a restarted exporter (new
socket) is a new listener and is probed again, while an unchanged one is never probed twice in
a row by a quick pass. A socket whose inode is unknown (0) is never reused: it is probed.

An exporter often binds its port before it can serve `/metrics` (bind, then load). A listener
that has never answered well is therefore probed again a few times over a few seconds
(`RETRY_DELAYS`) before the quick passes take its failure as the answer; the full cycle re-judges
it anyway. Once a listener has answered well it is never retried early: its failures are for the
full cycle's flap protection to count (design decision 5), not for a quick pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Mapping, Optional, Set, Tuple

from regagent.discovery.identify import Prober
from regagent.discovery.probe import ProbeResult

# Seconds after each failed probe of a listener that never answered well: retried at about
# +0.5, +1.5, +3.5 and +7.5 s after its first probe, then judged until the next full cycle.
RETRY_DELAYS: Tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

# (probe address, port, metrics path, inodes of the port's sockets)
ProbeKey = Tuple[str, int, str, FrozenSet[int]]
Clock = Callable[[], float]


@dataclass
class _Entry:
    result: ProbeResult
    attempts: int
    ever_ok: bool
    retry_at: Optional[float]  # monotonic; None: nothing due before the next full pass


class ProbeCache:
    """Wraps a prober: probes always in a full pass, only when new or due in a quick one."""

    def __init__(
        self,
        prober: Prober,
        clock: Clock = time.monotonic,
        retry_delays: Tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self.prober = prober
        self.clock = clock
        self.retry_delays = retry_delays
        self._entries: Dict[ProbeKey, _Entry] = {}
        self._inodes: Mapping[int, FrozenSet[int]] = {}
        self._quick = False
        self._probed: Set[int] = set()
        self._lock = threading.Lock()  # probes run on a small thread pool
        self._next_retry: Optional[float] = None

    def begin(self, inodes_by_port: Mapping[int, FrozenSet[int]], *, quick: bool) -> None:
        """Starts a pass over these listeners; entries of listeners now gone are dropped."""
        with self._lock:
            self._inodes = dict(inodes_by_port)
            self._quick = quick
            self._probed = set()
            for key in [k for k in self._entries if self._inodes.get(k[1]) != k[3]]:
                del self._entries[key]
            self._update_next_retry()

    def probed_ports(self) -> FrozenSet[int]:
        """Ports actually probed in this pass (not answered from the cache)."""
        with self._lock:
            return frozenset(self._probed)

    def next_retry(self) -> Optional[float]:
        """When the earliest early retry is due (monotonic), or None. Asked at every look of
        the watch, so kept up to date by the passes rather than searched for."""
        return self._next_retry

    def _update_next_retry(self) -> None:
        due = [e.retry_at for e in self._entries.values() if e.retry_at is not None]
        self._next_retry = min(due) if due else None

    def retry_ports(self, now: float) -> FrozenSet[int]:
        """Ports with a retry due at `now`."""
        with self._lock:
            return frozenset(
                key[1]
                for key, e in self._entries.items()
                if e.retry_at is not None and e.retry_at <= now
            )

    def probe(
        self, address: str, port: int, path: str, timeout: float, max_bytes: int
    ) -> ProbeResult:
        """A `Prober`: the cached result in a quick pass when there is one and nothing is due."""
        with self._lock:
            inodes = self._inodes.get(port, frozenset())
            key: ProbeKey = (address, port, path, inodes)
            entry = self._entries.get(key)
            if self._quick and entry is not None and _known(inodes):
                due = entry.retry_at is not None and entry.retry_at <= self.clock()
                if not due:
                    return entry.result
        result = self.prober(address, port, path, timeout, max_bytes)
        with self._lock:
            self._probed.add(port)
            self._remember(key, self._entries.get(key), result)
        return result

    def _remember(self, key: ProbeKey, entry: Optional[_Entry], result: ProbeResult) -> None:
        attempts = 1 if entry is None else entry.attempts + 1
        ever_ok = result.ok or (entry is not None and entry.ever_ok)
        retry_at: Optional[float] = None
        if not ever_ok and attempts <= len(self.retry_delays):
            retry_at = self.clock() + self.retry_delays[attempts - 1]
        self._entries[key] = _Entry(result, attempts, ever_ok, retry_at)
        self._update_next_retry()


def _known(inodes: FrozenSet[int]) -> bool:
    return bool(inodes) and 0 not in inodes
