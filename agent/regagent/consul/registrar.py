"""The `Registrar` protocol: one Consul registration backend per mode, chosen once.

`catalog` (the default) registers this host as an external node through the catalog API, and
regagent runs the checks; `agent` registers through a local Consul agent, which owns the node
and runs the checks. The engine holds one `Registrar` and never asks which (patroni's `dcs/`).

What any backend promises:
- No state between calls that the engine relies on: the plan carries what sending it needs (a
  check's service name, the check definition an agent runs), so `apply` is correct after any
  `desired`, or none.
- How a plan is sent (which requests, in which order, batched or not) is its own business.
- Failures are `RegagentError`s whose message a person can act on.

Timing, as patroni's `AbstractDCS` groups its methods:
- No network, returns at once (the watch's partial cycles call them too, between full cycles):
  `runs_checks`, `node_address`, `ownership_problem`, `desired`, `planned_writes`.
- Network, every request bounded by the server pool (`consul.connect_timeout` +
  `consul.read_timeout` per server, each configured server tried at most once per request):
  `read` (catalog mode: two requests, asked again of each other server at most once while
  none knows a leader), `apply` (one request per write or transaction; none for an empty plan
  unless housekeeping is due), `deregister_owned` (a read, then one write per service). The
  engine checks its cycle deadline between `read` and `apply`, not inside them.
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

    runs_checks: bool
    """True: Consul runs no check for this backend, so the engine runs the intents' probes and
    hands their results to `desired`. False: Consul (a local agent) runs them."""

    def read(self) -> Tuple[ActualState, ReadMeta]:
        """What Consul holds for this node (every service, owned or not, with their checks),
        the server that answered and whether the cluster knows a leader. Network; raises
        RegagentError when no server answers usefully."""

    def node_address(self, actual: Optional[ActualState]) -> str:
        """The address services without one of their own register at: `node.address`, or for
        `auto` one found from `actual` (None: the read failed) or from the local route to a
        server. No network; raises NoLocalRoute."""

    def ownership_problem(self, actual: ActualState) -> Optional[RegagentError]:
        """Why regagent must not write this node (a real agent's, another tool's, another
        host's), or None (design decisions 2 and 10). Pure."""

    def desired(
        self,
        intents: Sequence[ServiceIntent],
        actual: Optional[ActualState],
        node_address: str,
        results: Mapping[str, Result],
    ) -> DesiredState:
        """The canonical desired state for `intents` (all of them in a full cycle, the changed
        discovered ones in a partial cycle): with checks from `results` (by service ID) when
        `runs_checks`, else with the check definitions Consul is to run. Pure."""

    def planned_writes(self, plan: Plan) -> int:
        """The writes sending `plan` takes, counted as `ApplyOutcome.writes_by_kind` counts
        them (for "N write(s) postponed"); built from the plan, not from request bodies."""

    def apply(self, plan: Plan) -> ApplyOutcome:
        """Makes Consul hold what `plan` says. A refused write is skipped and the others still
        go; a lost cluster stops the rest. Never raises RegagentError: the outcome carries the
        first failure (of several: retold with their count, its type kept).

        The full cycle also hands over an empty plan (Consul already holds what is desired):
        nothing to send, but what follows a successful apply runs too (catalog mode retires
        a renamed host's old node). Network."""

    def deregister_owned(self) -> List[str]:
        """Removes this node's regagent-owned services (and its node, if regagent's and left
        empty) and says what was removed. Network; raises RegagentError, including an
        ownership problem."""
