"""The sensor: what listens on this host now, and which exporters it is.

One object per process owns everything that looks at the host and remembers what it saw: the
listener reader (`ListenerReader`: one netlink socket, one dump loop), the owners of sockets by
inode (`ProcessResolver`), the results of probes made inside a pass (`ProbeCache`), the
background identification of unconfirmed listeners (`UnconfirmedProbes`) and the keys of the
last reading. It decides nothing about registrations: `regagent.discovery.service` does.

Two ways in:
- `look()`: one reading, compared with the previous one. The `Change` names the ports whose
  sockets differ among those that can matter without knowing the owning process (see
  `could_matter`). The watch looks every `discovery.watch_interval`.
- `identify(known_ports, change)`: a discovery pass. Without a change, a full pass (each sync
  cycle): a fresh reading, every candidate on a known port probed, since that probe is its
  health check. With the change a look returned, a quick pass over that look's own reading:
  listeners probed before answer from the probe cache, so only new ones (and slow starters due
  for a retry) are probed. Either way, candidates on other ports are unconfirmed: identified
  in the background, and taken when ready.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable, Collection, Dict, FrozenSet, Optional, Set

from regagent.config.model import Config
from regagent.discovery.exporters import ExporterTable, load_exporter_table
from regagent.discovery.identify import (
    DiscoveryResult,
    Prober,
    discover_among,
    own_port,
    unreadable,
)
from regagent.discovery.listeners import Listener, ListenerKeys, ListenerReader, Listing
from regagent.discovery.probe import ProbeResult, probe_metrics
from regagent.discovery.probe_cache import ProbeCache
from regagent.discovery.processes import ProcessResolver
from regagent.discovery.unconfirmed import UnconfirmedProbes

Clock = Callable[[], float]


@dataclass(frozen=True)
class Change:
    """What one look saw: the ports whose sockets differ from the previous reading (among
    those that can matter), and the reading, which a quick pass identifies as it is."""

    ports: FrozenSet[int]
    listing: Listing

    @property
    def keys(self) -> ListenerKeys:
        return self.listing.keys


class Sensor:
    """Reads the listeners and identifies exporters among them, for as long as the process
    lives (across reloads: its caches and background identifications are the point)."""

    def __init__(
        self,
        config: Config,
        *,
        read: Optional[Callable[[], Listing]] = None,
        resolver: Optional[ProcessResolver] = None,
        prober: Prober = probe_metrics,
        progress: Callable[[], None] = lambda: None,
        table: Optional[ExporterTable] = None,
        unconfirmed: Optional[UnconfirmedProbes] = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.read: Callable[[], Listing] = read or ListenerReader()
        self.resolver = resolver or ProcessResolver()
        # The probes made inside a pass tell `progress` (the daemon's heartbeat) as each ends.
        self.prober = _telling(progress, prober)
        self.probes = ProbeCache(self.prober, clock)
        # Candidates on ports no kept service uses are identified in the background (by default
        # as a one-shot command does: it waits a bounded time for them); None probes every
        # candidate inside the pass, which is what a few hundred silent listeners stalled.
        self.unconfirmed: Optional[UnconfirmedProbes] = unconfirmed or (
            UnconfirmedProbes.for_one_shot(prober)  # the plain prober: tells nobody
        )
        self._table = table  # read on first use: a daemon with discovery off never needs it
        self._keys: Optional[ListenerKeys] = None  # the last reading; None before the first
        # Ports of services discovery keeps, and of exporters the last complete pass found.
        self._kept: FrozenSet[int] = frozenset()

    @property
    def table(self) -> ExporterTable:
        """The exporter table (`regagent/data/exporters.yaml`), read on first use."""
        if self._table is None:
            self._table = load_exporter_table()
        return self._table

    def configure(self, config: Config) -> None:
        """A reload's configuration; what was seen and probed stays."""
        self.config = config

    def look(self) -> Change:
        """One reading, compared with the previous one (a look's or a pass's). Raises OSError
        when the listeners cannot be read."""
        listing = self.read()
        before = self._keys if self._keys is not None else frozenset()
        self._keys = listing.keys
        if listing.keys == before:
            return Change(frozenset(), listing)  # the usual look: nothing to compare further
        moved = {port for port, _inode in before.symmetric_difference(listing.keys)}
        return Change(frozenset(port for port in moved if self.could_matter(port)), listing)

    def could_matter(self, port: int) -> bool:
        """Whether a change of the listeners on `port` can change a registration without
        knowing the owning process: a candidate by port (a known exporter's default port, a
        configured range) or the port of a service discovery keeps. A listener that only its
        process name makes a candidate waits for the full cycle, because naming a socket's
        process walks every process's descriptors (decision 7)."""
        settings = self.config.discovery
        if port in settings.exclude_ports or port == own_port(self.config):
            return False
        return (
            port in self._kept
            or port in self.table.by_port
            or any(lo <= port <= hi for lo, hi in settings.port_ranges)
        )

    def identify(
        self, known_ports: Collection[int] = (), change: Optional[Change] = None
    ) -> Optional[DiscoveryResult]:
        """A discovery pass, or None when discovery is disabled. Candidates on `known_ports`
        (the ports of services discovery keeps) are probed now; the others are unconfirmed.
        With `change`, a quick pass over the look's reading (see the module docstring)."""
        if not self.config.discovery.enabled:
            return None
        try:
            listing = change.listing if change is not None else self.read()
        except OSError as exc:
            return unreadable(exc)
        listeners = listing.listeners
        self.probes.begin(_inodes_by_port(listeners), quick=change is not None)
        result = discover_among(
            listeners,
            self.config,
            table=self.table,
            resolver=self.resolver,
            prober=self.probes.probe,
            known_ports=known_ports,
            deferred=self.unconfirmed,
        )
        identified = self.unconfirmed.used_ports() if self.unconfirmed else frozenset()
        self._keys = listing.keys
        self._kept = frozenset(known_ports) | {finding.port for finding in result.exporters}
        return replace(result, fresh=self.probes.probed_ports() | identified)

    def next_look(self) -> Optional[float]:
        """When a look is worth making before the watch's next (monotonic), or None: a
        slow-starting listener is due for another probe, or a background identification has
        news (or may have it shortly)."""
        due = [self.probes.next_retry()]
        if self.unconfirmed is not None:
            due.append(self.unconfirmed.next_check())
        return min((t for t in due if t is not None), default=None)


def _telling(progress: Callable[[], None], prober: Prober) -> Prober:
    def probe(address: str, port: int, path: str, timeout: float, max_bytes: int) -> ProbeResult:
        try:
            return prober(address, port, path, timeout, max_bytes)
        finally:
            progress()

    return probe


def _inodes_by_port(listeners: Collection[Listener]) -> Dict[int, FrozenSet[int]]:
    """The probe cache names a listener by its port and the inodes of its sockets."""
    inodes: Dict[int, Set[int]] = {}
    for item in listeners:
        inodes.setdefault(item.port, set()).add(item.inode)
    return {port: frozenset(found) for port, found in inodes.items()}
