"""Discovery as the sync engine's intent source: a pass, its state file, and its reports.

`regagent.discovery.sensor` senses the host and `regagent.discovery.intents` decides (pure);
`Discovery` runs a pass between them and keeps what lives across passes:
- the state file (`discovered.json`, `regagent.discovery.seen`): read before each pass, what
  Consul still holds for this node adopted when it lacks an entry, rewritten when it changed;
- the cap on new exporters, `discovery.max_new_per_cycle`, which holds per full cycle: the
  watch's quick passes between two full cycles share it;
- the flap hold of discovered exporters, through the shared `Health`: a failed probe of a known
  exporter does not turn it critical until it failed `sync.failures_before_critical` times in
  a row (decision 5); a vanished listener is critical at once;
- the reports said once per process (a listener left out and why, an exporter vanished).

One object per process (the composition root hands it the configuration again on a reload).
The engine asks it for every intent of a cycle: the configured services, the discovered
exporters and regagent's own endpoint. Between cycles the watch hands a look's `Change`
through the engine's partial cycle, and a quick pass says which ports carry new information.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Collection, FrozenSet, Iterable, Mapping, Optional, Set, Tuple

import structlog

from regagent.config.model import Config
from regagent.discovery.identify import DiscoveryResult
from regagent.discovery.intents import IntentSet, adopt_registered, build_intents, with_self
from regagent.discovery.seen import SeenService, load_state, save_state, state_path, worth_saving
from regagent.discovery.sensor import Change, Sensor
from regagent.health import Health
from regagent.model import CRITICAL, ActualState, ServiceIntent, Source
from regagent.statedir import Warnings

log = structlog.get_logger(__name__)


class Discovery:
    """Every intent of this host, pass after pass, with the state file, the cap on new
    exporters, flap protection and once-only reports."""

    def __init__(
        self,
        config: Config,
        *,
        sensor: Optional[Sensor] = None,
        health: Optional[Health] = None,
        beside_daemon: Callable[[], bool] = lambda: False,
    ) -> None:
        self.config = config
        self.sensor = sensor or Sensor(config)
        # Shared with the engine's checks in a daemon; its own for discovery used alone.
        self.health = health or Health(config.sync.failures_before_critical)
        # True for a one-shot command while the daemon runs: the state file is then the
        # daemon's, neither read nor written; what Consul holds for the node is adopted.
        self.beside_daemon = beside_daemon
        self.warnings = Warnings()  # state file problems, said once for the object's life
        self._reported: Set[Tuple[int, str, str]] = set()
        self._vanished: Set[str] = set()
        self._adopted: Set[str] = set()
        self._new_since_full = 0  # new exporters added since the last full pass

    def reconfigure(
        self, config: Config, *, beside_daemon: Optional[Callable[[], bool]] = None
    ) -> None:
        """A reload's configuration (and the new identity's way to tell whether the daemon
        runs); caches, background identifications and reports stay."""
        self.config = config
        self.sensor.configure(config)
        if beside_daemon is not None:
            self.beside_daemon = beside_daemon

    def intents(
        self,
        address: str,
        actual: Optional[ActualState],
        change: Optional[Change] = None,
        *,
        persist: bool = True,
        now: Optional[float] = None,
    ) -> Tuple[IntentSet, FrozenSet[int]]:
        """Every intent of this host (configured, discovered, regagent's own endpoint), and
        the ports whose intents carry new information.

        Without `change`, a full pass (a sync cycle). With it, a quick pass (the watch's
        partial cycle): the ports are those of the change, plus those probed afresh or
        identified in the background, minus known exporters that fail their probe, since a
        failure is for the full cycle's flap protection to count. `persist` false (a dry run)
        leaves the state file as it is."""
        own_state = not self.beside_daemon()
        _result, wanted, ports = self._pass(
            address, actual, change, now, persist=persist and own_state, own_state=own_state
        )
        return with_self(wanted, self.config, address), ports

    def examine(
        self, address: str, now: Optional[float] = None
    ) -> Tuple[Optional[DiscoveryResult], IntentSet]:
        """What `regagent discover` shows: a full pass and what it found; the state file is read
        (vanished exporters still kept are shown) but never written."""
        result, wanted, _ports = self._pass(address, None, None, now, persist=False)
        return result, wanted

    def forget(self, service_ids: Iterable[str]) -> None:
        """Drops services from the state file after `regagent deregister`: otherwise the next
        sync would bring a vanished exporter back, critical, for `deregister_after`."""
        path = state_path(self.config.sync.state_dir)
        stored = load_state(path, self.warnings)
        gone = set(service_ids)
        kept = {sid: entry for sid, entry in stored.items() if sid not in gone}
        if len(kept) != len(stored):
            save_state(path, kept, self.warnings)
            log.info("discovery_state_forgotten", service_ids=sorted(set(stored) & gone))

    def _pass(
        self,
        address: str,
        actual: Optional[ActualState],
        change: Optional[Change],
        now: Optional[float],
        *,
        persist: bool,
        own_state: bool = True,
    ) -> Tuple[Optional[DiscoveryResult], IntentSet, FrozenSet[int]]:
        """Reads the state file, senses, builds the intents, holds failures, reports, saves."""
        config = self.config
        moment = time.time() if now is None else now
        path = state_path(config.sync.state_dir)
        enabled = config.discovery.enabled
        stored = load_state(path, self.warnings) if enabled and own_state else {}
        previous = adopt_registered(stored, actual, moment, config) if enabled else {}
        result = self.sensor.identify({entry.port for entry in previous.values()}, change)
        if own_state:
            self._said_adopted(set(previous) - set(stored))
        wanted = self._rationed(address, result, moment, previous, full=change is None)
        ports: FrozenSet[int] = frozenset()
        if result is not None and result.complete:
            ports = result.fresh | (change.ports if change is not None else frozenset())
        if result is not None:
            if change is not None:
                # A known exporter still listening but failing its probe is for the full
                # cycle's flap protection to judge, not for a pass a second after the last.
                ports -= {
                    i.service.port for i in wanted.intents if i.service.id in wanted.not_serving
                }
            wanted = self._hold_failures(wanted, result, ports if change is not None else None)
        self._report(wanted, previous)  # a dry run is where an operator wants to see these
        if persist and result is not None and result.complete and worth_saving(stored, wanted.seen):
            save_state(path, wanted.seen, self.warnings)
        return result, wanted, ports

    def _rationed(
        self,
        address: str,
        result: Optional[DiscoveryResult],
        now: float,
        previous: Mapping[str, SeenService],
        *,
        full: bool,
    ) -> IntentSet:
        """The intents, new exporters capped per full cycle: the quick passes between two full
        cycles share the cap, so looking every second does not make it ten a second."""
        if full:
            self._new_since_full = 0
        budget = max(0, self.config.discovery.max_new_per_cycle - self._new_since_full)
        wanted = build_intents(
            self.config,
            address,
            result,
            now,
            previous=previous,
            table=None if result is None else self.sensor.table,  # None: discovery is off
            max_new=budget,
        )
        self._new_since_full += sum(1 for sid in wanted.by_port.values() if sid not in previous)
        return wanted

    def _said_adopted(self, service_ids: Set[str]) -> None:
        """Registered in Consul, missing from the state file: said once per process (an
        unwritable state directory would repeat it every cycle)."""
        for sid in sorted(service_ids - self._adopted):
            self._adopted.add(sid)
            log.warning(
                "discovery_state_adopted",
                service_id=sid,
                reason="registered in Consul but missing from the discovery state file",
            )

    def _hold_failures(
        self,
        wanted: IntentSet,
        result: DiscoveryResult,
        only: Optional[Collection[int]] = None,
    ) -> IntentSet:
        """A known exporter whose probe failed stays passing with its last good output until
        `failures_before_critical` probes in a row failed; a vanished listener (nothing listens
        on its port) is critical at once, as nothing will answer Prometheus either.

        `only`: the ports a quick pass judges; the others were not probed again, and counting
        their cached result twice would shorten the hold."""
        not_serving = set(wanted.not_serving)
        reasons = {finding.port: finding.reason for finding in result.findings}
        intents = tuple(
            self._held(i, not_serving, reasons) if only is None or i.service.port in only else i
            for i in wanted.intents
        )
        self.health.retain(intent.service.id for intent in intents)
        return replace(wanted, intents=intents)

    def _held(
        self, intent: ServiceIntent, not_serving: Set[str], reasons: Mapping[int, str]
    ) -> ServiceIntent:
        sid = intent.service.id
        if intent.source != Source.DISCOVERY or intent.status is None:
            return intent
        if sid not in not_serving:
            if intent.status[0] == CRITICAL:
                self.health.forget(sid)
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
            failures=self.health.failures(sid),
            failures_before_critical=self.health.failures_before_critical,
        )
        return replace(intent, status=status)

    def _report(self, wanted: IntentSet, previous: Mapping[str, SeenService]) -> None:
        for item in wanted.skipped:
            key = (item.port, item.endpoints, item.reason)
            if key not in self._reported:
                self._reported.add(key)
                # Loopback-only and held back are likely a mistake or a flood (Prometheus
                # cannot scrape the one, the other waits); the other reasons are choices.
                report = log.warning if item.warn else log.info
                report(
                    "exporter_not_registered",
                    listener=item.endpoints,
                    exporter=item.exporter,
                    reason=item.reason,
                )
        for service_id in wanted.by_port.values():
            if service_id not in previous:
                log.info("exporter_discovered", service_id=service_id)
            self._vanished.discard(service_id)
        for intent in wanted.intents:
            sid = intent.service.id
            if intent.status is None or intent.status[0] != CRITICAL:
                continue
            if sid not in self._vanished:
                self._vanished.add(sid)
                log.warning("exporter_vanished", service_id=sid, output=intent.status[1])
        for service_id in wanted.expired:
            self._vanished.discard(service_id)
            log.info(
                "exporter_expired", service_id=service_id, reason="sync.deregister_after passed"
            )
