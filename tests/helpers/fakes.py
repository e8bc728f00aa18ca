"""Fakes of regagent's collaborators, for unit tests of the policies that use them."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import (
    Callable,
    Collection,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from regagent.config.model import Config
from regagent.consul.registrar import ApplyOutcome, ReadMeta
from regagent.desired import desired_state
from regagent.discovery.identify import Prober
from regagent.discovery.intents import IntentSet
from regagent.discovery.listeners import Listener, Listing
from regagent.discovery.probe import Exposition, ProbeResult, probe_metrics
from regagent.discovery.processes import ProcessInfo, ProcessResolver
from regagent.discovery.sensor import Change, Sensor
from regagent.discovery.service import Discovery
from regagent.errors import RegagentError
from regagent.model import ActualState, DesiredState, NodeRegistration, Result, ServiceIntent
from regagent.plan import Plan, applied

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


# -- discovery ---------------------------------------------------------------------------------

NO_CHANGE = Change(frozenset(), Listing.of(()))  # a look that saw nothing new


class FakeIntents:
    """An intent source (the engine's `IntentSource`): fixed intents for full cycles, and for
    a partial cycle what a quick pass would say (`quick`, the ports it names). It records
    whether each full cycle was told to persist its state, and can make a cycle slow (moves
    `clock`)."""

    def __init__(
        self,
        intents: Sequence[ServiceIntent] = (),
        clock: Optional[FakeClock] = None,
        *,
        quick: Sequence[ServiceIntent] = (),
        ports: Collection[int] = (),
    ) -> None:
        self.wanted = list(intents)
        self.quick = list(quick)
        self.ports = frozenset(ports)
        self.clock = clock
        self.delay = 0.0
        self.persist: List[bool] = []
        self.changes: List[Change] = []

    def intents(
        self,
        address: str,
        actual: Optional[ActualState],
        change: Optional[Change] = None,
        *,
        persist: bool = True,
    ) -> Tuple[IntentSet, FrozenSet[int]]:
        if change is not None:
            self.changes.append(change)
            return IntentSet(tuple(self.quick)), self.ports
        self.persist.append(persist)
        if self.clock is not None:
            self.clock.now += self.delay
        return IntentSet(tuple(self.wanted)), frozenset()


class FakeHost:
    """What discovery sees of a host: listeners by port, and which ports serve node_exporter
    metrics (answered by `prober`, which counts its calls)."""

    def __init__(self) -> None:
        self.listening: Dict[int, List[Listener]] = {}
        self.serving: Set[int] = set()
        self.version = "1.5.0"
        self.probes = 0

    def listen(self, port: int, address: str = "0.0.0.0", *, serving: bool = True) -> None:
        inode = 100_000 + port + 1000 * len(self.listening.get(port, []))
        self.listening.setdefault(port, []).append(Listener(address, port, socket.AF_INET, inode))
        if serving:
            self.serving.add(port)

    def close(self, port: int) -> None:
        self.listening.pop(port, None)
        self.serving.discard(port)

    def listeners(self) -> List[Listener]:
        return [lst for group in self.listening.values() for lst in group]

    def reading(self) -> Listing:
        return Listing.of(self.listeners())

    def discovery(self, config: Config, resolver: Optional[ProcessResolver] = None) -> Discovery:
        """Discovery of this host: its listeners, its probe answers, owners from `resolver`."""
        return discovery_for(
            config, self.reading, prober=self.prober, resolver=resolver or FakeResolver()
        )

    def prober(
        self, address: str, port: int, path: str, timeout: float, max_bytes: int
    ) -> ProbeResult:
        self.probes += 1
        url = f"http://{address}:{port}{path}"
        if port not in self.serving:
            return ProbeResult(url, "http", False, "timed out after 2s")
        exposition = Exposition(
            True,
            names=frozenset({"node_exporter_build_info", "node_load1"}),
            build_info={"node_exporter_build_info": {"version": self.version}},
        )
        return ProbeResult(url, "http", True, "", 200, exposition)


class FakeResolver(ProcessResolver):
    """Owners by inode, recording which inodes discovery asked about."""

    def __init__(self, owners: Optional[Mapping[int, ProcessInfo]] = None) -> None:
        super().__init__(proc_root="/nonexistent")
        self.owners = dict(owners or {})
        self.asked: Set[int] = set()

    def resolve(
        self, inodes: Iterable[int], uid_hints: Optional[Mapping[int, int]] = None
    ) -> Dict[int, Optional[ProcessInfo]]:
        wanted = set(inodes)
        self.asked |= wanted
        return {inode: self.owners.get(inode) for inode in wanted}

    def forget_except(self, live_inodes: Collection[int]) -> None:
        pass


def reading_of(list_listeners: Callable[[], Iterable[Listener]]) -> Callable[[], Listing]:
    """A sensor's reader over a function that lists listeners (a filter of the real ones)."""
    return lambda: Listing.of(list_listeners())


def discovery_for(
    config: Config,
    read: Callable[[], Listing],
    *,
    prober: Prober = probe_metrics,
    resolver: Optional[ProcessResolver] = None,
) -> Discovery:
    """Discovery over `read`, with the real prober and process lookup unless given."""
    return Discovery(config, sensor=Sensor(config, read=read, prober=prober, resolver=resolver))


def full_pass(discovery: Discovery, address: str, now: float) -> Tuple[ServiceIntent, ...]:
    """The intents of one full pass (a sync cycle's), the state saved."""
    return discovery.intents(address, None, now=now)[0].intents
