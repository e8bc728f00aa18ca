"""One sync cycle: read Consul, build the desired state, plan, and (unless dry-run) apply.

`regagent sync` runs one cycle and `regagent run` runs them in a loop; both go through here. The
engine holds its collaborators, handed in by the composition root (`regagent.app`): the
registration backend, the source of service intents, the health checks and a clock. It never
asks which Consul mode it has. Each cycle returns one `CycleReport` that logs, metrics and
systemd's `STATUS=` all read.

Between full cycles the watch (`regagent.watch`) runs `partial_cycle`: the same desired-state
building, the same planner and the same `Registrar.apply`, but against the actual state the last
full cycle read (kept up to date with what was written since) instead of two more Consul reads,
and restricted to the discovered services on the ports whose listeners changed. Why a partial
cycle and not an early full one: a full cycle costs two reads and a probe of every static
service, while a new exporter needs one write. Why it is safe: the plan is made over the chosen
services on both sides (desired and actual), so nothing else can be written or removed, and its
deregistrations are dropped outright: an incomplete view never deregisters anything. If the
kept state was stale (someone else wrote the node), a write may be redundant or refused; every
write is idempotent and the next full cycle reads Consul again and repairs whatever differs. A
failed write forgets the kept state, so no partial cycle runs until a full cycle has re-read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Collection, Dict, FrozenSet, List, Optional, Tuple

import structlog

from regagent.consul.registrar import Registrar
from regagent.consul.retry import CYCLE_DEADLINE
from regagent.errors import CycleDeadline, NoClusterLeader, RegagentError
from regagent.health.health import Health
from regagent.model import (
    SOURCE_DISCOVERY,
    ActualState,
    CheckState,
    ServiceIntent,
    ServiceRegistration,
)
from regagent.plan import Plan, plan
from regagent.report import CycleReport

log = structlog.get_logger(__name__)

# (node address, what Consul holds for this node if known, persist discovery state?) -> wanted
IntentSource = Callable[[str, Optional[ActualState], bool], List[ServiceIntent]]
# (node address, the kept actual state) -> (every intent, the ports whose listeners changed)
QuickSource = Callable[[str, ActualState], Tuple[List[ServiceIntent], FrozenSet[int]]]
Clock = Callable[[], float]


@dataclass
class PartialReport:
    """A partial cycle: its `CycleReport`, the ports it looked at and what it held back."""

    report: CycleReport
    ran: bool = False  # False: no kept state (no full cycle read Consul yet, or a write failed)
    ports: FrozenSet[int] = frozenset()
    held: Dict[str, int] = field(default_factory=dict)  # service ID -> port, write postponed


class SyncEngine:
    """Holds what lives across cycles through its collaborators, plus the actual state the last
    full cycle read (updated by every write since), which only `partial_cycle` uses."""

    def __init__(
        self,
        registrar: Registrar,
        intents: IntentSource,
        health: Health,
        *,
        clock: Clock = time.monotonic,
        cycle_deadline: float = CYCLE_DEADLINE,
        quick: Optional[QuickSource] = None,
        progress: Callable[[], None] = lambda: None,
        begin: Callable[[], None] = lambda: None,
    ) -> None:
        self.registrar = registrar
        self.intents = intents
        self.health = health
        self.clock = clock
        self.cycle_deadline = cycle_deadline
        self.quick = quick
        self.known: Optional[ActualState] = None
        self.progress = progress  # told at each phase boundary (the daemon's watchdog)
        self.begin = begin  # told when a full cycle begins (the server pool's early try)

    def cycle(self, dry_run: bool = False) -> CycleReport:
        """Never raises RegagentError: the caller decides how to report `report.error`."""
        report = CycleReport(dry_run=dry_run)
        started = self.clock()
        mark = started
        self.begin()

        def phase(name: str) -> None:
            nonlocal mark
            now = self.clock()
            report.timings[name] = now - mark
            mark = now
            self.progress()

        try:
            report.actual = self.registrar.read()
            report.server = self.registrar.server()
        except RegagentError as exc:
            report.error = exc
        phase("read")
        try:
            address = self.registrar.node_address(report.actual, dry_run=dry_run)
            if report.actual is not None:
                # After a restart, Consul still shows the last good results: start from them.
                self.health.seed(report.actual.checks)
            intents = self.intents(address, report.actual, not dry_run)
            report.sources = {intent.service.id: intent.source for intent in intents}
            report.desired = self.registrar.desired(intents, report.actual, address, self.health)
        except RegagentError as exc:
            report.error = report.error or exc
        phase("desired")
        if not dry_run:
            self.known = None  # until this cycle shows what Consul holds now
        if report.error is not None or report.actual is None or report.desired is None:
            return report
        report.error = self.registrar.ownership_problem(report.actual)
        if report.error is not None:
            return report
        report.plan = plan(report.desired, report.actual)
        report.planned_writes = self.registrar.planned_writes(report.plan)
        phase("plan")
        for conflict in report.plan.conflicts:
            log.warning("service_skipped", service_id=conflict.service_id, reason=conflict.reason)
        if dry_run:
            return report
        if report.plan.empty:
            self.known = report.actual
            self.registrar.in_sync()
            return report
        if not report.actual.known_leader:
            # A write would wait out Consul's rpc_hold_timeout (7s) only to fail: skip it.
            report.error = NoClusterLeader(
                f"the Consul cluster has no leader (says {report.server}); "
                f"{report.planned_writes} write(s) postponed to the next cycle"
            )
            return report
        if self.clock() - started > self.cycle_deadline:
            report.error = CycleDeadline(
                f"the cycle took over {self.cycle_deadline:g}s before writing; "
                f"{report.planned_writes} write(s) postponed to the next cycle"
            )
            return report
        outcome = self.registrar.apply(report.plan)
        report.writes_by_kind = outcome.writes_by_kind
        report.requests = outcome.requests
        report.server = outcome.server or report.server
        report.error = outcome.error
        if outcome.error is None:
            self.known = applied(report.actual, report.plan)
        phase("apply")
        return report

    def partial_cycle(
        self, hold: Collection[str] = (), also: Collection[int] = ()
    ) -> PartialReport:
        """Writes what changed for the discovered services on ports whose listeners changed
        (and on the ports in `also`), planned against the kept actual state; no Consul read,
        and no write when nothing differs.

        Services in `hold` are planned but not written (flap bound: the watch's hold-off);
        they come back in `held`. Never raises RegagentError."""
        report = CycleReport()
        known = self.known
        if known is None or self.quick is None or not known.known_leader:
            return PartialReport(report)
        started = self.clock()
        try:
            address = self.registrar.node_address(known, dry_run=False)
            intents, changed = self.quick(address, known)
            ports = frozenset(changed) | frozenset(also)
        except RegagentError as exc:
            report.error = exc
            return PartialReport(report, ran=True)
        chosen = [
            i
            for i in intents
            if i.source == SOURCE_DISCOVERY and i.status is not None and i.service.port in ports
        ]
        result = PartialReport(report, ran=True, ports=ports)
        report.timings["desired"] = self.clock() - started
        if not chosen:
            return result
        ids = {i.service.id for i in chosen}
        # The chosen services on both sides: nothing else can be written or removed.
        scope = replace(
            known,
            services=tuple(s for s in known.services if s.id in ids),
            checks=tuple(c for c in known.checks if c.service_id in ids),
        )
        report.actual = known
        try:
            # Each chosen intent carries its status (discovery decided it, through the shared
            # flap guard), so a scratch Health runs no probe and prunes no shared history.
            report.desired = self.registrar.desired(chosen, scope, address, Health())
        except RegagentError as exc:
            report.error = exc
            return result
        report.error = self.registrar.ownership_problem(known)
        if report.error is not None:
            return result
        full = plan(report.desired, scope)
        report.plan, result.held = _without(
            full, hold, {i.service.id: i.service.port for i in chosen}
        )
        report.planned_writes = self.registrar.planned_writes(report.plan)
        for conflict in report.plan.conflicts:
            log.warning("service_skipped", service_id=conflict.service_id, reason=conflict.reason)
        if report.plan.empty:
            return result
        outcome = self.registrar.apply(report.plan)
        report.writes_by_kind = outcome.writes_by_kind
        report.requests = outcome.requests
        report.server = outcome.server
        report.error = outcome.error
        # Stale kept state is repaired by the next full cycle; until then, no partial ones.
        self.known = applied(known, report.plan) if outcome.error is None else None
        report.timings["apply"] = self.clock() - started - report.timings["desired"]
        return result

    def deregister_owned(self) -> List[str]:
        """This node's regagent-owned registrations removed (decommission, or on shutdown)."""
        return self.registrar.deregister_owned()


def _without(
    full: Plan, hold: Collection[str], ports: Dict[str, int]
) -> Tuple[Plan, Dict[str, int]]:
    """The plan minus writes to held services and minus any deregistration, ever."""
    planned = [w.service.id for w in full.services] + [w.check.service_id for w in full.checks]
    held = {sid: ports.get(sid, 0) for sid in planned if sid in hold}
    services = tuple(w for w in full.services if w.service.id not in hold)
    checks = tuple(w for w in full.checks if w.check.service_id not in hold)
    # A node change alone waits for the full cycle; with a service it rides in the same request.
    node_write = full.node_write if services or checks else None
    kept = replace(full, node_write=node_write, services=services, checks=checks, deregister=())
    return kept, held


def applied(actual: ActualState, done: Plan) -> ActualState:
    """What Consul holds after `done` was written to `actual` (pure; the kept state)."""
    services: Dict[str, ServiceRegistration] = {s.id: s for s in actual.services}
    checks: Dict[str, CheckState] = {c.check_id: c for c in actual.checks}
    for write in done.services:
        services[write.service.id] = write.service
        if write.check is not None:
            checks[write.check.check_id] = write.check
    for check_write in done.checks:
        checks[check_write.check.check_id] = check_write.check
    for gone in done.deregister:
        services.pop(gone.id, None)
        for check_id in [k for k, c in checks.items() if c.service_id == gone.id]:
            del checks[check_id]
    node = done.node if done.node_write is not None else actual.node
    return replace(
        actual,
        node=node,
        services=tuple(sorted(services.values(), key=lambda s: s.id)),
        checks=tuple(sorted(checks.values(), key=lambda c: c.check_id)),
    )
