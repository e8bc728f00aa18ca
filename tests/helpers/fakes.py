"""Fakes of regagent's collaborators, for unit tests of the policies that use them."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Mapping, Optional, Sequence, Tuple

from regagent.consul.registrar import ApplyOutcome, ReadMeta
from regagent.desired import desired_state
from regagent.engine import applied
from regagent.errors import RegagentError
from regagent.model import ActualState, DesiredState, NodeRegistration, Result, ServiceIntent
from regagent.plan import Plan

NODE = NodeRegistration("host", "192.0.2.1", {"managed-by": "regagent"})


class FakeClock:
    """A monotonic clock that moves only when a test moves it (`clock.now += 5`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeRegistrar:
    """The Registrar protocol over an in-memory node. A test sets what a read finds, whether
    the cluster knows a leader, why the node is not regagent's (`refusal`), how a send fails
    (`failure`) and whether Consul runs the checks (`runs_checks` False: like agent mode). The
    fake counts reads and records every plan it is asked to send (an empty one only counts as
    `housekeeping`); what it sent becomes what the next read finds."""

    actual: ActualState
    node: NodeRegistration = NODE
    known_leader: bool = True
    refusal: Optional[RegagentError] = None
    failure: Optional[RegagentError] = None
    sent: List[Plan] = field(default_factory=list)
    reads: int = 0
    housekeeping: int = 0
    runs_checks: bool = True

    def read(self) -> Tuple[ActualState, ReadMeta]:
        self.reads += 1
        return self.actual, ReadMeta("fake", self.known_leader)

    def node_address(self, actual: Optional[ActualState]) -> str:
        return self.node.address

    def ownership_problem(self, actual: ActualState) -> Optional[RegagentError]:
        return self.refusal

    def desired(
        self,
        intents: Sequence[ServiceIntent],
        actual: Optional[ActualState],
        node_address: str,
        results: Mapping[str, Result],
    ) -> DesiredState:
        # Like agent mode when Consul runs the checks: definitions, no results.
        return desired_state(self.node, intents, results, with_checks=self.runs_checks)

    def planned_writes(self, plan: Plan) -> int:
        return len(plan.services) + len(plan.checks) + len(plan.deregister)

    def apply(self, plan: Plan) -> ApplyOutcome:
        if plan.empty:
            self.housekeeping += 1
            return ApplyOutcome(server="fake")
        self.sent.append(plan)
        if self.failure is not None:
            return ApplyOutcome(error=self.failure, server="fake")
        self.actual = applied(self.actual, plan)
        return ApplyOutcome(writes_by_kind={"write": self.planned_writes(plan)}, server="fake")

    def deregister_owned(self) -> List[str]:
        owned = [s.id for s in self.actual.services if s.managed]
        self.actual = replace(
            self.actual,
            services=tuple(s for s in self.actual.services if not s.managed),
            checks=tuple(c for c in self.actual.checks if c.service_id not in owned),
        )
        return owned
