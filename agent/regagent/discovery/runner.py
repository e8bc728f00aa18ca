"""One discovery cycle with its side effects: sockets, probes, the state file and the log.

`regagent.discovery.intents.build_intents` decides; this module feeds it and persists the
result. The composition root (`regagent.app`) makes one runner per process and hands its
`intents` method to the sync engine. A runner lives as long as the daemon (and across reloads)
so that its caches (socket owners by inode, listeners already reported) save work and log noise
across cycles; a failed probe of a known exporter goes through the shared `Health` guard, so one
failure does not turn it critical (decision 5).

Candidates on the ports of services discovery keeps (the state file, or adopted from Consul)
are probed inside the pass: that probe is their health check. The others are unconfirmed and
identified in the background (`regagent.discovery.unconfirmed`): a pass takes what is ready, so
no listener, however silent, holds a cycle.

Between full cycles the watch (`regagent.watch`) asks for a quick pass (`quick_intents`): the
same discovery and the same `build_intents`, but probe results of listeners already probed are
reused (`ProbeCache`), so only new listeners (and slow starters due for a retry) are probed, and
it says which ports changed since the previous pass (or had an exporter identified in the
background since), so the engine writes only those services.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import (
    Callable,
    Collection,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
)

import structlog

from regagent.config.model import Config
from regagent.discovery.exporters import ExporterTable, load_exporter_table
from regagent.discovery.identify import DiscoveryResult, Prober, discover, own_port
from regagent.discovery.intents import (
    DesiredServices,
    adopt_registered,
    build_intents,
)
from regagent.discovery.listeners import Listener, ListenerKeys, listening_sockets
from regagent.discovery.probe import probe_metrics
from regagent.discovery.probe_cache import ProbeCache
from regagent.discovery.processes import ProcessResolver
from regagent.discovery.seen import (
    SeenService,
    load_state,
    save_state,
    state_path,
    worth_saving,
)
from regagent.discovery.unconfirmed import UnconfirmedProbes
from regagent.health.health import Health
from regagent.model import CRITICAL, SOURCE_DISCOVERY, ActualState, ServiceIntent
from regagent.statedir import Warnings

log = structlog.get_logger(__name__)


class DiscoveryRunner:
    """Discovery plus desired-state building, with caches, once-only reports and flap
    protection."""

    def __init__(
        self,
        *,
        resolver: Optional[ProcessResolver] = None,
        list_listeners: Callable[[], List[Listener]] = listening_sockets,
        prober: Prober = probe_metrics,
        table: Optional[ExporterTable] = None,
        health: Optional[Health] = None,
        clock: Callable[[], float] = time.monotonic,
        unconfirmed: Optional[UnconfirmedProbes] = None,
    ) -> None:
        self.resolver = resolver or ProcessResolver()
        self.list_listeners = list_listeners
        self.prober = prober
        self.probes = ProbeCache(prober, clock)
        # Candidates on ports no kept service uses are identified in the background (by default
        # as a one-shot command does: it waits a bounded time for them); None probes every
        # candidate inside the pass, which is what a few hundred silent listeners stalled.
        self.unconfirmed: Optional[UnconfirmedProbes] = unconfirmed or (
            UnconfirmedProbes.for_one_shot(prober)
        )
        # What the last pass saw; None before the first one (the watch compares against it).
        self.last_keys: Optional[ListenerKeys] = None
        self._quick = False
        self._seen_keys: Optional[ListenerKeys] = None
        # Ports whose listeners changed (or were probed afresh) in the last pass.
        self.changed: FrozenSet[int] = frozenset()
        self._known_ports: FrozenSet[int] = frozenset()  # ports of the services discovery knows
        self.table = table or load_exporter_table()
        self._reported: Set[Tuple[int, str, str]] = set()
        self._vanished: Set[str] = set()
        self._adopted: Set[str] = set()
        self._new_since_full = 0  # new exporters added since the last full cycle
        self.warnings = Warnings()  # state file problems, said once for the runner's life
        # Shared with the engine's checks in a daemon; its own for a runner used alone.
        self.health = health or Health()

    def discover(
        self, config: Config, known_ports: Collection[int] = ()
    ) -> Optional[DiscoveryResult]:
        """Findings for this host, or None when discovery is disabled. Candidates on
        `known_ports` are probed now (their probe is their health check); the others are
        unconfirmed and identified in the background (`self.unconfirmed`)."""
        if not config.discovery.enabled:
            return None
        return discover(
            config,
            table=self.table,
            resolver=self.resolver,
            list_listeners=self._listeners,
            prober=self.probes.probe,
            known_ports=known_ports,
            deferred=self.unconfirmed,
        )

    def _keys_listed(self) -> Optional[ListenerKeys]:
        """The listeners the pass just made listed, or None if it listed none."""
        return self._seen_keys

    def _listeners(self) -> List[Listener]:
        """The listeners, told to the probe cache first (it keys results by their inodes)."""
        found = self.list_listeners()
        inodes: Dict[int, Set[int]] = {}
        for item in found:
            inodes.setdefault(item.port, set()).add(item.inode)
        self.probes.begin({p: frozenset(i) for p, i in inodes.items()}, quick=self._quick)
        self._seen_keys = frozenset((item.port, item.inode) for item in found)
        return found

    def run(
        self,
        config: Config,
        node_address: str,
        now: float,
        persist: bool = True,
        actual: Optional[ActualState] = None,
        *,
        quick: bool = False,
        own_state: bool = True,
    ) -> Tuple[Optional[DiscoveryResult], DesiredServices]:
        """Discover, build intents against the stored state, store the new state if `persist`.

        `quick`: reuse probe results (see `quick_intents`); flap protection then judges only
        the ports in `self.changed`. `own_state` false: the state file is another process's
        (a one-shot command beside the daemon): neither read nor written; what Consul holds
        for this node is adopted instead."""
        self.health.configure(config.sync.failures_before_critical)
        before = self.last_keys
        path = state_path(config.sync.state_dir)
        enabled = config.discovery.enabled
        persist = persist and own_state
        stored = load_state(path, self.warnings) if enabled and own_state else {}
        previous = adopt_registered(stored, actual, now, config) if enabled else {}
        self._quick = quick
        self._seen_keys = None
        try:
            result = self.discover(config, {entry.port for entry in previous.values()})
        finally:
            self._quick = False
        self.changed = frozenset()
        seen = self._keys_listed()
        if result is not None and result.complete and seen is not None:
            identified = self.unconfirmed.used_ports() if self.unconfirmed else frozenset()
            self.changed = _changed_ports(before, seen) | self.probes.probed_ports() | identified
            self.last_keys = seen
        for sid in sorted(set(previous) - set(stored) - self._adopted if own_state else ()):
            self._adopted.add(sid)  # once per process: an unwritable state dir repeats it
            log.warning(
                "discovery_state_adopted",
                service_id=sid,
                reason="registered in Consul but missing from the discovery state file",
            )
        # The cap on new exporters holds per full cycle: the quick passes between two full
        # cycles share it, so looking every second does not make it ten a second.
        if not quick:
            self._new_since_full = 0
        budget = max(0, config.discovery.max_new_per_cycle - self._new_since_full)
        desired = build_intents(
            config, node_address, result, now, previous=previous, table=self.table, max_new=budget
        )
        self._new_since_full += sum(1 for sid in desired.by_port.values() if sid not in previous)
        if result is not None:
            if quick:
                # A known exporter still listening but failing its probe is for the full
                # cycle's flap protection to judge, not for a pass a second after the last.
                self.changed -= {
                    i.service.port for i in desired.intents if i.service.id in desired.not_serving
                }
            desired = self._hold_failures(desired, result, self.changed if quick else None)
        self._report(desired, previous)  # a dry run is where an operator wants to see these
        if result is not None and result.complete:
            self._known_ports = frozenset(entry.port for entry in desired.seen.values())
        if (
            persist
            and result is not None
            and result.complete
            and worth_saving(stored, desired.seen)
        ):
            save_state(path, desired.seen, self.warnings)
        return result, desired

    def forget(self, config: Config, service_ids: Iterable[str]) -> None:
        """Drops services from the state file after `regagent deregister`: otherwise the next
        sync would bring a vanished exporter back, critical, for `deregister_after`."""
        path = state_path(config.sync.state_dir)
        stored = load_state(path, self.warnings)
        gone = set(service_ids)
        kept = {sid: entry for sid, entry in stored.items() if sid not in gone}
        if len(kept) != len(stored):
            save_state(path, kept, self.warnings)
            log.info("discovery_state_forgotten", service_ids=sorted(set(stored) & gone))

    def cycle(self, config: Config, node_address: str, now: float) -> Tuple[ServiceIntent, ...]:
        """The intents for one sync cycle (state persisted)."""
        return self.run(config, node_address, now)[1].intents

    def intents(
        self,
        config: Config,
        node_address: str,
        actual: Optional[ActualState],
        persist: bool,
        now: Optional[float] = None,
        *,
        own_state: bool = True,
    ) -> List[ServiceIntent]:
        """What the sync engine asks each cycle: discover, build intents, persist the state
        unless `persist` is false (a dry run leaves the state file untouched) or the state
        file is not this process's (`own_state`, see `run`)."""
        moment = time.time() if now is None else now
        desired = self.run(config, node_address, moment, persist, actual, own_state=own_state)
        return list(desired[1].intents)

    def quick_intents(
        self,
        config: Config,
        node_address: str,
        actual: Optional[ActualState],
        now: Optional[float] = None,
    ) -> Tuple[List[ServiceIntent], FrozenSet[int]]:
        """A pass between full cycles: every intent (probe results of known listeners reused,
        new listeners and due retries probed) and the ports whose listeners changed since the
        previous pass; state persisted. Only intents on those ports are new information."""
        moment = time.time() if now is None else now
        desired = self.run(config, node_address, moment, True, actual, quick=True)[1]
        return list(desired.intents), self.changed

    def could_matter(self, config: Config, port: int) -> bool:
        """Whether a change of the listeners on `port` can change a registration without
        knowing the owning process: a candidate by port (a known exporter's default port, a
        configured range) or the port of a service discovery knows. The watch reacts to those
        only; a listener that only its process name makes a candidate waits for the full cycle,
        because naming a socket's process walks every process's descriptors (decision 7)."""
        settings = config.discovery
        if port in settings.exclude_ports or port == own_port(config):
            return False
        return (
            port in self._known_ports
            or port in self.table.by_port
            or any(lo <= port <= hi for lo, hi in settings.port_ranges)
        )

    def next_retry(self) -> Optional[float]:
        """When a pass is worth making again (monotonic), or None: a slow-starting known
        listener is due for another probe, or a background identification has news (or may
        have it shortly)."""
        due = [self.probes.next_retry()]
        if self.unconfirmed is not None:
            due.append(self.unconfirmed.next_check())
        return min((t for t in due if t is not None), default=None)

    def _hold_failures(
        self,
        desired: DesiredServices,
        result: DiscoveryResult,
        only: Optional[Collection[int]] = None,
    ) -> DesiredServices:
        """A known exporter whose probe failed stays passing with its last good output until
        `failures_before_critical` probes in a row failed; a vanished listener (nothing listens
        on its port) is critical at once, as nothing will answer Prometheus either.

        `only`: the ports a quick pass judges; the others were not probed again, and counting
        their cached result twice would shorten the hold."""
        not_serving = set(desired.not_serving)
        reasons = {finding.port: finding.reason for finding in result.findings}
        intents = tuple(
            self._held(i, not_serving, reasons) if only is None or i.service.port in only else i
            for i in desired.intents
        )
        self.health.guard.retain(intent.service.id for intent in intents)
        return replace(desired, intents=intents)

    def _held(
        self, intent: ServiceIntent, not_serving: Set[str], reasons: Mapping[int, str]
    ) -> ServiceIntent:
        sid = intent.service.id
        if intent.source != SOURCE_DISCOVERY or intent.status is None:
            return intent
        if sid not in not_serving:
            if intent.status[0] == CRITICAL:
                self.health.guard.forget(sid)
            else:
                self.health.hold(sid, intent.status)
            return intent
        status = self.health.hold(sid, intent.status)
        if status == intent.status:
            return intent
        log.info(
            "exporter_probe_failed",
            service_id=sid,
            reason=reasons.get(intent.service.port, ""),
            failures=self.health.guard.failures(sid),
            failures_before_critical=self.health.guard.failures_before_critical,
        )
        return replace(intent, status=status)

    def _report(self, desired: DesiredServices, previous: Mapping[str, SeenService]) -> None:
        for item in desired.skipped:
            key = (item.port, item.endpoints, item.reason)
            if key not in self._reported:
                self._reported.add(key)
                # Loopback-only is a likely misconfiguration (Prometheus cannot scrape it);
                # the other reasons are choices made in the configuration.
                report = log.warning if item.warn else log.info  # issue 14: + held back
                report(
                    "exporter_not_registered",
                    listener=item.endpoints,
                    exporter=item.exporter,
                    reason=item.reason,
                )
        for service_id in desired.by_port.values():
            if service_id not in previous:
                log.info("exporter_discovered", service_id=service_id)
            self._vanished.discard(service_id)
        for intent in desired.intents:
            sid = intent.service.id
            if intent.status is None or intent.status[0] != CRITICAL:
                continue
            if sid not in self._vanished:
                self._vanished.add(sid)
                log.warning("exporter_vanished", service_id=sid, output=intent.status[1])
        for service_id in desired.expired:
            self._vanished.discard(service_id)
            log.info(
                "exporter_expired", service_id=service_id, reason="sync.deregister_after passed"
            )


def _changed_ports(before: Optional[ListenerKeys], now: ListenerKeys) -> FrozenSet[int]:
    """Ports whose set of socket inodes differs (a listener came, went or was replaced)."""
    if before is None:
        return frozenset(port for port, _inode in now)
    return frozenset(port for port, _inode in before.symmetric_difference(now))
