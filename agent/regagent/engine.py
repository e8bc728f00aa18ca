"""One sync cycle: read Consul, build the desired state, plan, and (unless dry-run) apply.

`regagent sync` runs one cycle and `regagent run` runs them in a loop; both go through here. The
engine holds its collaborators, handed in by the composition root (`regagent.app`): the
registration backend, the source of service intents, the health checks and a clock. It never
asks which Consul mode it has. Each cycle returns one `CycleReport` that logs, metrics and
systemd's `STATUS=` all read.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional

import structlog

from regagent.consul.registrar import Registrar
from regagent.consul.retry import CYCLE_DEADLINE
from regagent.errors import CycleDeadline, NoClusterLeader, RegagentError
from regagent.health.health import Health
from regagent.model import ActualState, ServiceIntent
from regagent.plan import plan
from regagent.report import CycleReport

log = structlog.get_logger(__name__)

# (node address, what Consul holds for this node if known, persist discovery state?) -> wanted
IntentSource = Callable[[str, Optional[ActualState], bool], List[ServiceIntent]]
Clock = Callable[[], float]


class SyncEngine:
    """Holds what lives across cycles only through its collaborators; a cycle is stateless."""

    def __init__(
        self,
        registrar: Registrar,
        intents: IntentSource,
        health: Health,
        *,
        clock: Clock = time.monotonic,
        cycle_deadline: float = CYCLE_DEADLINE,
        progress: Callable[[], None] = lambda: None,
    ) -> None:
        self.registrar = registrar
        self.intents = intents
        self.health = health
        self.clock = clock
        self.cycle_deadline = cycle_deadline
        self.progress = progress  # told at each phase boundary (the daemon's watchdog)

    def cycle(self, dry_run: bool = False) -> CycleReport:
        """Never raises RegagentError: the caller decides how to report `report.error`."""
        report = CycleReport(dry_run=dry_run)
        started = self.clock()
        mark = started

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
        if dry_run or report.plan.empty:
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
        phase("apply")
        return report

    def deregister_owned(self) -> List[str]:
        """This node's regagent-owned registrations removed (decommission, or on shutdown)."""
        return self.registrar.deregister_owned()
