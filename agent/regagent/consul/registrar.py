"""The `Registrar` protocol: one Consul registration backend per mode, chosen once.

`catalog` (the default) registers this host as an external node through the catalog API and
runs the checks itself; `agent` registers through a local Consul agent that owns the node and
runs the checks. The engine holds one `Registrar` and never asks which (patroni's `dcs/`).
How a plan is sent (which requests, in which order, batched or not) is the backend's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from regagent.errors import RegagentError
from regagent.model import ActualState, DesiredState, Result, ServiceIntent
from regagent.plan import Plan


@dataclass(frozen=True)
class ReadMeta:
    """What a read says beside the registrations: who answered, and whether the cluster has a
    leader (a stale read is answered without one; a write would then fail)."""

    server: Optional[str]
    known_leader: bool = True


@dataclass
class ApplyOutcome:
    """What sending a plan did: writes by kind, the server that took them, the first error."""

    planned: int = 0
    requests: int = 0  # write requests that succeeded (a transaction carries many writes)
    writes_by_kind: Dict[str, int] = field(default_factory=dict)
    server: Optional[str] = None
    error: Optional[RegagentError] = None

    @property
    def writes(self) -> int:
        return sum(self.writes_by_kind.values())


class Registrar(Protocol):
    """Reads this node's registrations, judges ownership, builds and sends what differs."""

    def read(self) -> Tuple[ActualState, ReadMeta]:
        """What Consul holds for this node (all services, owned or not, and their checks)."""

    runs_checks: bool
    """True: Consul runs no checks for this backend, so the engine runs the intents' probes and
    hands the results to `desired`; False: Consul (a local agent) runs them."""

    def node_address(self, actual: Optional[ActualState]) -> str:
        """The address services without one of their own register at."""

    def ownership_problem(self, actual: ActualState) -> Optional[RegagentError]:
        """Why regagent must not write this node, or None (design decision 2)."""

    def desired(
        self,
        intents: Sequence[ServiceIntent],
        actual: Optional[ActualState],
        node_address: str,
        results: Mapping[str, Result],
    ) -> DesiredState:
        """The canonical desired state for these intents; `results` are the probes' results by
        service ID when `runs_checks`, else empty."""

    def planned_writes(self, plan: Plan) -> int:
        """How many requests sending `plan` takes."""

    def apply(self, plan: Plan) -> ApplyOutcome:
        """Sends the plan; a refused write is skipped, a lost cluster stops the apply."""

    def in_sync(self) -> None:
        """A full cycle found nothing to write: housekeeping that must not wait for a write
        (a renamed host's old node, when retiring it failed before)."""

    def deregister_owned(self) -> List[str]:
        """Removes this node's regagent-owned services (and an emptied node); what was removed."""
