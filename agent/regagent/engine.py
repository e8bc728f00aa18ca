"""One sync cycle: read Consul, build the desired state, plan, and (unless dry-run) apply.

`regagent sync` runs one cycle and `regagent run` runs them in a loop; both go through here. The
engine holds its collaborators, handed in by the composition root (`regagent.app`): the
registration backend, the source of service intents (`regagent.discovery.service.Discovery`),
the health checks and a clock. It never asks which Consul mode it has. Each cycle returns one
`CycleReport` that logs, metrics and systemd's `STATUS=` all read.

Between full cycles the watch (`regagent.watch`) hands a look's `Change` to `partial_cycle`:
the same intent source (a quick pass over that look), the same planner and the same
`Registrar.apply`, but against the actual state the last full cycle read (kept up to date with
what was written since) instead of two more Consul reads, and restricted to the discovered
services on the ports whose intents carry new information. Why a partial cycle and not an
early full one: a full cycle costs two reads and a probe of every static service, while a new
exporter needs one write. Why it is safe: the plan is made over the chosen services on both
sides (desired and actual), so nothing else can be written or removed, and its deregistrations
are dropped outright: an incomplete view never deregisters anything. If the kept state was
stale (someone else wrote the node), a write may be redundant or refused; every write is
idempotent and the next full cycle reads Consul again and repairs whatever differs. A failed
write forgets the kept state, so no partial cycle runs until a full cycle has re-read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import (
    TYPE_CHECKING,
    Callable,
    Collection,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Set,
    Tuple,
)

import structlog

from regagent.consul.registrar import ReadMeta, Registrar
from regagent.consul.retry import CYCLE_DEADLINE
from regagent.errors import CycleDeadline, NoClusterLeader, NodeVanished, RegagentError
from regagent.health import Health
from regagent.model import (
    ActualState,
    DesiredState,
    NodeRegistration,
    Result,
    ServiceIntent,
    ServiceRegistration,
    Source,
)
from regagent.plan import Plan, applied, plan, watched
from regagent.report import CycleReport

if TYPE_CHECKING:
    from regagent.discovery.intents import IntentSet
    from regagent.discovery.sensor import Change

log = structlog.get_logger(__name__)

Clock = Callable[[], float]


class IntentSource(Protocol):
    """Where the engine's intents come from (`regagent.discovery.service.Discovery`)."""

    def intents(
        self,
        address: str,
        actual: Optional[ActualState],
        change: Optional[Change] = None,
        *,
        persist: bool = True,
    ) -> Tuple[IntentSet, FrozenSet[int]]:
        """Every intent for the node at `address`, given what Consul holds for it (None when
        unknown), and the ports whose intents carry new information. `change`: a look's, for
        a partial cycle's quick pass. `persist` false: a dry run, which saves no state."""
        ...


@dataclass
class PartialReport:
    """A partial cycle: its `CycleReport`, the ports it looked at and what it held back."""

    report: CycleReport
    ran: bool = False  # False: no kept state (no full cycle read Consul yet, or a write failed)
    ports: FrozenSet[int] = frozenset()
    held: Dict[str, int] = field(default_factory=dict)  # service ID -> port, write postponed


class _Phases:
    """Times a cycle's phases into its report and tells `progress` at each boundary."""

    def __init__(self, report: CycleReport, clock: Clock, progress: Callable[[], None]) -> None:
        self.report = report
        self.clock = clock
        self.progress = progress
        self.started = self.mark = clock()

    def end(self, name: str) -> None:
        now = self.clock()
        # Added up: a cycle that reads again after a refused write has each phase twice.
        self.report.timings[name] = self.report.timings.get(name, 0.0) + now - self.mark
        self.mark = now
        self.progress()


class SyncEngine:
    """Holds what lives across cycles through its collaborators, plus `known`: the actual state
    the last full cycle read from a cluster with a leader, updated by every write since, which
    only `partial_cycle` uses."""

    def __init__(
        self,
        registrar: Registrar,
        source: IntentSource,
        health: Health,
        *,
        clock: Clock = time.monotonic,
        cycle_deadline: float = CYCLE_DEADLINE,
        progress: Callable[[], None] = lambda: None,
        begin: Callable[[], None] = lambda: None,
    ) -> None:
        self.registrar = registrar
        self.source = source
        self.health = health
        self.clock = clock
        self.cycle_deadline = cycle_deadline
        self.known: Optional[ActualState] = None
        self.progress = progress  # told at each phase boundary (the daemon's watchdog)
        self.begin = begin  # told when a full cycle begins (the server pool's early try)

    def cycle(self, dry_run: bool = False) -> CycleReport:
        """Reads Consul, builds every intent, plans and (unless `dry_run`) writes.
        Never raises RegagentError: the caller decides how to report `report.error`."""
        report = CycleReport(dry_run=dry_run)
        phases = _Phases(report, self.clock, self.progress)
        meta = ReadMeta(None, known_leader=False)
        self.begin()
        try:
            report.actual, meta = self.registrar.read()
            report.server = meta.server
        except RegagentError as exc:
            report.error = exc
        phases.end("read")
        intents: List[ServiceIntent] = []
        results: Dict[str, Result] = {}
        address = ""
        try:
            address = self.registrar.node_address(report.actual)
            if report.actual is not None:
                # After a restart, Consul still shows the last good results: start from them.
                self.health.seed(report.actual.checks)
            wanted, _ports = self.source.intents(address, report.actual, persist=not dry_run)
            intents = list(wanted.intents)
            report.sources = {intent.service.id: intent.source for intent in intents}
            results = self.health.evaluate(intents) if self.registrar.runs_checks else {}
            self.health.retain(intent.service.id for intent in intents)
            report.desired = self.registrar.desired(intents, report.actual, address, results)
        except RegagentError as exc:
            report.error = report.error or exc
        phases.end("desired")
        if not dry_run:
            self.known = None  # until this cycle shows what Consul holds now
        if report.error is None and report.actual is not None and report.desired is not None:
            self._plan_and_apply(report, report.actual, phases, leader=meta.known_leader)
        if isinstance(report.error, NodeVanished):
            self._read_again(report, phases, intents, results, address)
        return report

    def _read_again(
        self,
        report: CycleReport,
        phases: _Phases,
        intents: Sequence[ServiceIntent],
        results: Mapping[str, Result],
        address: str,
    ) -> None:
        """The node was deleted between this cycle's read and its write (a snapshot restore,
        an operator's deregistration): read once more and write the node with the rest now,
        from the intents and results already gathered, instead of a cycle later."""
        log.info("cycle_reads_again", reason=str(report.error))
        earlier, written = report.requests, dict(report.writes_by_kind)  # batches that landed
        try:
            report.actual, meta = self.registrar.read()
            report.server = meta.server
            report.desired = self.registrar.desired(intents, report.actual, address, results)
        except RegagentError as exc:
            report.error = exc
            return
        finally:
            phases.end("read")
        self._plan_and_apply(report, report.actual, phases, leader=meta.known_leader)
        report.requests += earlier
        for kind, count in written.items():
            report.writes_by_kind[kind] = report.writes_by_kind.get(kind, 0) + count

    def partial_cycle(
        self, change: Change, hold: Collection[str] = (), also: Collection[int] = ()
    ) -> PartialReport:
        """Writes what changed for the discovered services on the ports whose intents carry
        new information after `change` (a look's), and on the ports in `also`, planned
        against the kept actual state; no Consul read, and no write when nothing differs.

        Services in `hold` are planned but not written (flap bound: the watch's hold-off);
        they come back in `held`. Never raises RegagentError."""
        report = CycleReport()
        known = self.known
        if known is None:
            return PartialReport(report)
        phases = _Phases(report, self.clock, self.progress)
        try:
            address = self.registrar.node_address(known)
            wanted, changed = self.source.intents(address, known, change)
        except RegagentError as exc:
            report.error = exc
            return PartialReport(report, ran=True)
        ports = changed | frozenset(also)
        chosen = {i.service.id: i for i in wanted.intents if _fresh_discovery(i, ports)}
        result = PartialReport(report, ran=True, ports=ports)
        phases.end("desired")
        if not chosen:
            return result
        report.actual = known
        scope = _only(known, chosen)  # the chosen on both sides: nothing else is touched
        try:
            # Each chosen intent carries its status (discovery decided it, through the shared
            # flap guard): no probe to run, no results to hand over.
            report.desired = self.registrar.desired(list(chosen.values()), scope, address, {})
        except RegagentError as exc:
            report.error = exc
            return result
        held = self._plan_and_apply(report, scope, phases, hold=hold)
        result.held = {sid: chosen[sid].service.port for sid in held}
        return result

    def repair(
        self, node: Optional[NodeRegistration], services: Sequence[ServiceRegistration]
    ) -> Optional[CycleReport]:
        """Puts back what regagent last wrote when the node watch (`regagent.consul.node_watch`)
        shows Consul holding something else for the node and its services: someone deregistered
        a service or the node, altered one, or a snapshot restore brought an old state back.
        Planned like a partial cycle (the one planner, the one write path, no Consul read,
        never a deregistration, no node check: those are the full cycle's), against the answer
        and the checks last known; what regagent wants is what it last wrote (`known`), so
        nothing new is decided here. None when there is no kept state (the next full cycle
        repairs it) or nothing differs. Never raises RegagentError."""
        known = self.known
        if known is None or known.node is None:
            return None
        seen = watched(known, node, tuple(services))
        if (seen.node, seen.services) == (known.node, known.services):
            return None  # regagent's own writes, seen back
        owned = {s.id for s in known.services if s.managed}
        report = CycleReport()
        report.actual = seen
        report.desired = DesiredState(
            node=known.node,
            services=tuple(s for s in known.services if s.id in owned),
            checks=tuple(c for c in known.checks if c.service_id in owned),
        )
        phases = _Phases(report, self.clock, self.progress)
        self._plan_and_apply(report, seen, phases, hold=(), node_alone=True)
        return report

    def _plan_and_apply(
        self,
        report: CycleReport,
        against: ActualState,
        phases: _Phases,
        *,
        leader: bool = True,
        hold: Optional[Collection[str]] = None,
        node_alone: bool = False,
    ) -> Set[str]:
        """Both cycles end here: plans `report.desired` against `against`, writes the plan
        unless something stops it, keeps what Consul then holds for partial cycles, and
        returns the services held back.

        `hold` None: a full cycle. Its plan covers every service and may deregister; it writes
        nothing without a cluster leader or past the cycle deadline, and hands even an empty
        plan to the backend (housekeeping). Otherwise a partial cycle: its plan loses the
        writes to services in `hold` and every deregistration, and an empty one goes nowhere."""
        assert report.actual is not None and report.desired is not None
        report.error = self.registrar.ownership_problem(report.actual)
        if report.error is not None:
            return set()
        whole = plan(report.desired, against)
        report.plan = whole if hold is None else _partial(whole, hold, node_alone)
        report.planned_writes = self.registrar.planned_writes(report.plan)
        phases.end("plan")
        for conflict in report.plan.conflicts:
            log.warning("service_skipped", service_id=conflict.service_id, reason=conflict.reason)
        held = _held(whole, hold or ())
        if report.dry_run or (hold is not None and report.plan.empty):
            return held
        if hold is None and not report.plan.empty:
            report.error = self._postponed(report, leader, phases.started)
            if report.error is not None:
                return held
        outcome = self.registrar.apply(report.plan)  # a full cycle's empty plan: housekeeping
        report.writes_by_kind = outcome.writes_by_kind
        report.requests = outcome.requests
        report.server = outcome.server or report.server
        report.error = outcome.error
        # A failed write forgets the kept state: the next full cycle reads Consul again. No
        # partial cycle on the view of a cluster without a leader either: it could not write.
        kept = outcome.error is None and leader
        self.known = applied(report.actual, report.plan) if kept else None
        phases.end("apply")
        return held

    def _postponed(
        self, report: CycleReport, leader: bool, started: float
    ) -> Optional[RegagentError]:
        """Why a full cycle must not write now, or None."""
        if not leader:
            # A write would wait out Consul's rpc_hold_timeout (7s) only to fail: skip it.
            return NoClusterLeader(
                f"the Consul cluster has no leader (says {report.server}); "
                f"{report.planned_writes} write(s) postponed to the next cycle"
            )
        if self.clock() - started > self.cycle_deadline:  # design decision 11
            return CycleDeadline(
                f"the cycle took over {self.cycle_deadline:g}s before writing; "
                f"{report.planned_writes} write(s) postponed to the next cycle"
            )
        return None

    def forget_known(self) -> None:
        """No partial cycle until a full cycle has read Consul again (the watch's pass broke)."""
        self.known = None

    def deregister_owned(self) -> List[str]:
        """This node's regagent-owned registrations removed (decommission, or on shutdown)."""
        return self.registrar.deregister_owned()


def _fresh_discovery(intent: ServiceIntent, ports: Collection[int]) -> bool:
    """A discovered service on a changed port, its status decided by discovery."""
    return (
        intent.source == Source.DISCOVERY
        and intent.status is not None
        and intent.service.port in ports
    )


def _only(actual: ActualState, service_ids: Collection[str]) -> ActualState:
    """`actual` restricted to these services and their checks."""
    return replace(
        actual,
        services=tuple(s for s in actual.services if s.id in service_ids),
        checks=tuple(c for c in actual.checks if c.service_id in service_ids),
    )


def _held(whole: Plan, hold: Collection[str]) -> Set[str]:
    """The services in `hold` that `whole` writes."""
    planned = {w.service.id for w in whole.services} | {w.check.service_id for w in whole.checks}
    return planned & set(hold)


def _partial(whole: Plan, hold: Collection[str], node_alone: bool = False) -> Plan:
    """The plan minus writes to held services and minus any deregistration, ever."""
    services = tuple(w for w in whole.services if w.service.id not in hold)
    checks = tuple(w for w in whole.checks if w.check.service_id not in hold)
    # A node change alone waits for the full cycle (unless `node_alone`: a repair of the
    # node); with a service it rides in the same request.
    node_write = whole.node_write if services or checks or node_alone else None
    return replace(
        whole,
        node_write=node_write,
        services=services,
        checks=checks,
        deregister=(),
        node_checks=(),  # node checks are the full cycle's (their sources read Consul's view)
        node_checks_removed=(),
    )
