"""One sync cycle: read Consul, build the desired state, plan, and (unless dry-run) apply.

`regagent sync` runs one cycle and `regagent run` runs them in a loop; both go through here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

import structlog

from regagent.config.model import Config
from regagent.consul.agent import (
    agent_deregister_request,
    agent_probe,
    agent_requests,
    describe_check,
    read_agent_actual,
    with_check_meta,
)
from regagent.consul.catalog import (
    SERF_HEALTH,
    deregister_node,
    deregister_request,
    plan_requests,
    read_actual,
)
from regagent.consul.http import WriteRequest, send
from regagent.consul.pool import NoClusterLeader, ServerPool
from regagent.errors import ConsulRefused, ConsulUnreachable, NodeOwnedByAgent, RegagentError
from regagent.health.checks import HealthChecks, Result
from regagent.model import (
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    PASSING,
    ActualState,
    CheckState,
    DesiredState,
    HealthProbe,
    NodeRegistration,
    ServiceIntent,
    ServiceRegistration,
    canonical_service,
    service_check_id,
)
from regagent.node_address import route_source_address
from regagent.plan import Plan, plan

log = structlog.get_logger(__name__)

# (node address, what Consul holds for this node if known, persist discovery state?) -> wanted
IntentSource = Callable[[str, Optional[ActualState], bool], List[ServiceIntent]]

NO_CHECK_OUTPUT = "no health check configured"


def node_name(config: Config) -> str:
    return config.node.name or socket.gethostname()


def node_registration(config: Config, address: str) -> NodeRegistration:
    meta = {**config.node.meta, "external-node": "true", MANAGED_BY_KEY: MANAGED_BY_VALUE}
    return NodeRegistration(node_name(config), address, meta)


def resolve_node_address(config: Config, server: str) -> str:
    if config.node.address != "auto":
        return config.node.address
    try:
        return route_source_address(server)
    except OSError as exc:
        raise ConsulUnreachable(
            f"cannot find a local address routing to {server} ({exc.strerror or exc}); "
            "set node.address in the configuration"
        ) from None


def desired_state(
    node: NodeRegistration, intents: List[ServiceIntent], results: Dict[HealthProbe, Result]
) -> DesiredState:
    """Pure: intents plus probe results to canonical registrations and checks."""
    services: List[ServiceRegistration] = []
    checks: List[CheckState] = []
    for intent in sorted(intents, key=lambda i: i.service.id):
        service = canonical_service(intent.service)
        if intent.status is not None:
            status, output = intent.status
        elif intent.probe is not None:
            status, output = results[intent.probe]
        else:
            status, output = PASSING, NO_CHECK_OUTPUT
        services.append(service)
        checks.append(
            CheckState(
                service_check_id(service.id), service.id, f"{service.name} health", status, output
            )
        )
    return DesiredState(node=node, services=tuple(services), checks=tuple(checks))


@dataclass
class CycleResult:
    desired: Optional[DesiredState] = None
    actual: Optional[ActualState] = None
    plan: Optional[Plan] = None
    writes: int = 0
    server: Optional[str] = None
    error: Optional[RegagentError] = None
    notes: List[str] = field(default_factory=list)


class SyncEngine:
    """Holds what lives across cycles (the server pool); each cycle is otherwise stateless."""

    def __init__(self, config: Config, pool: ServerPool, intents: IntentSource) -> None:
        self.config = config
        self.pool = pool
        self.intents = intents
        self.agent_mode = config.consul.mode == "agent"
        self.probes: Dict[str, Optional[HealthProbe]] = {}  # service ID -> its probe (agent mode)
        self.checks = HealthChecks(config.sync.failures_before_critical)
        self._auto_address: Optional[str] = None

    def build_desired(
        self, address: str, actual: Optional[ActualState] = None, persist: bool = True
    ) -> DesiredState:
        intents = self.intents(address, actual, persist)
        if self.agent_mode:
            return self._agent_desired(intents, actual, address)
        self._seed_flap_guard(intents, actual)
        probes = [i.probe for i in intents if i.status is None and i.probe is not None]
        results = self.checks.run(probes)
        return desired_state(node_registration(self.config, address), intents, results)

    def _agent_desired(
        self, intents: List[ServiceIntent], actual: Optional[ActualState], address: str
    ) -> DesiredState:
        """The agent runs the checks; regagent registers them, described in each service's Meta."""
        interval = self.config.sync.interval
        self.probes = {i.service.id: agent_probe(i) for i in intents}
        described: List[ServiceIntent] = []
        for intent in intents:
            probe = self.probes[intent.service.id]
            described.append(
                replace(
                    intent,
                    service=with_check_meta(intent.service, probe, interval),
                    # Shown by dry runs only: the agent owns the status; the plan compares services.
                    status=("agent", f"run by the Consul agent: {describe_check(probe, interval)}"),
                )
            )
        return desired_state(actual_node_or(actual, self.config, address), described, {})

    def _seed_flap_guard(self, intents: List[ServiceIntent], actual: Optional[ActualState]) -> None:
        """After a restart, Consul still shows the last good results: start from them."""
        shown = {c.service_id: c for c in actual.checks} if actual is not None else {}
        for intent in intents:
            check = shown.get(intent.service.id)
            if intent.probe is not None and check is not None:
                self.checks.guard.remember(intent.probe, (check.status, check.output))

    def cycle(self, dry_run: bool = False) -> CycleResult:
        """Never raises RegagentError: the caller decides how to report `result.error`."""
        result = CycleResult()
        name = node_name(self.config)
        try:
            result.actual = self._read(name)
            result.server = self.pool.current_server.address
        except RegagentError as exc:
            result.error = exc
        try:
            address = self._node_address(result)
            result.desired = self.build_desired(address, result.actual, persist=not dry_run)
        except RegagentError as exc:
            result.error = result.error or exc
        if result.error is not None or result.actual is None or result.desired is None:
            return result
        if self.agent_mode:
            # Check status belongs to the agent that runs the checks: compare services only.
            result.plan = plan(
                replace(result.desired, checks=()), replace(result.actual, checks=())
            )
        else:
            result.error = ownership_problem(name, result.actual)
            if result.error is not None:
                return result
            result.plan = plan(result.desired, result.actual)
        for conflict in result.plan.conflicts:
            log.warning("service_skipped", service_id=conflict.service_id, reason=conflict.reason)
        if dry_run or result.plan.empty:
            return result
        if not result.actual.known_leader:
            # A write would wait out Consul's rpc_hold_timeout (7s) only to fail: skip it.
            result.error = NoClusterLeader(
                f"the Consul cluster has no leader (says {result.server}); "
                f"{result.plan.write_count} write(s) postponed to the next cycle"
            )
            return result
        self.apply(result)
        return result

    def _read(self, name: str) -> ActualState:
        if self.agent_mode:
            return read_agent_actual(self.pool)
        actual = read_actual(self.pool, name)
        # A server cut off from the others still answers stale reads but knows no leader: ask
        # the next ones before concluding that the cluster has none (bounded by the pool size).
        for _ in range(len(self.pool.servers) - 1):
            if actual.known_leader or not self.pool.move_on("no cluster leader"):
                break
            actual = read_actual(self.pool, name)
        return actual

    def _node_address(self, result: CycleResult) -> str:
        """`node.address`, or for `auto` the local end of the route to the server that answered.

        In agent mode the agent's own advertised address (services belong to its node)."""
        agent_node = result.actual.node if self.agent_mode and result.actual else None
        if self.config.node.address == "auto" and agent_node is not None and agent_node.address:
            return agent_node.address
        if self._auto_address is not None:
            return self._auto_address
        answered = not self.agent_mode and result.server
        address = resolve_node_address(self.config, answered or self.config.consul.servers[0])
        if answered and self.config.node.address == "auto":
            # Kept for the process: on a multi-homed host a failover to a server behind another
            # interface must not rewrite the node and every service address (and back again).
            self._auto_address = address
        return address

    def requests(self, plan: Plan) -> List[WriteRequest]:
        if self.agent_mode:
            return agent_requests(plan, self.probes, self.config.sync.interval)
        return plan_requests(plan, self.config.consul.datacenter)

    def apply(self, result: CycleResult) -> None:
        """Sends the plan; a refused write is skipped, a lost cluster stops the apply.

        Everything written is idempotent: the next cycle re-plans and completes the rest.
        """
        assert result.plan is not None
        requests = self.requests(result.plan)
        failures: List[RegagentError] = []
        for request in requests:
            try:
                send(self.pool, request)
            except ConsulRefused as exc:
                failures.append(exc)
                log.error("consul_write_refused", what=request.what, error=str(exc))
                continue
            except RegagentError as exc:
                failures.append(exc)
                break
            result.writes += 1
            log.info("consul_write", what=request.what, server=self.pool.current_server.address)
        result.server = self.pool.current_server.address
        if failures:
            first = failures[0]
            result.error = (
                first
                if len(failures) == 1
                else RegagentError(
                    f"{len(failures)} of {len(requests)} writes failed; first: {first}"
                )
            )


def ownership_problem(name: str, actual: ActualState) -> Optional[RegagentError]:
    """regagent only writes a node it created (decision 2): never a real agent's, never another
    tool's external node."""
    if SERF_HEALTH in actual.node_check_ids:
        return NodeOwnedByAgent(
            f"node {name!r} belongs to a running Consul agent (it has a serfHealth check); "
            "that agent would delete regagent's services. Set node.name to a name of its "
            "own, or use consul.mode: agent to register through that agent"
        )
    ours = actual.node is None or actual.node.meta.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
    # A catalog register without NodeMeta (another tool adding a service) wipes the node's meta:
    # regagent-owned services on the node still prove it is ours.
    if not ours and not any(s.managed for s in actual.services):
        return NodeOwnedByAgent(
            f"node {name!r} already exists in Consul without NodeMeta "
            f"{MANAGED_BY_KEY}={MANAGED_BY_VALUE}, so regagent will not take it over. "
            "Set node.name to a name of its own, or remove that node first"
        )
    return None


def actual_node_or(actual: Optional[ActualState], config: Config, address: str) -> NodeRegistration:
    """Agent mode: the node is the agent's own (never written), else what config says."""
    if actual is not None and actual.node is not None:
        return actual.node
    return node_registration(config, address)


def deregister_owned(config: Config, pool: ServerPool) -> List[str]:
    """Removes this node's regagent-owned services, and the node when nothing else is on it."""
    removed: List[str] = []
    if config.consul.mode == "agent":
        for service in read_agent_actual(pool).services:
            if service.managed:
                send(pool, agent_deregister_request(service.id))
                removed.append(service.id)
        return removed
    name = node_name(config)
    actual = read_actual(pool, name)
    problem = ownership_problem(name, actual)
    if problem is not None:
        raise problem
    for service in actual.services:
        if service.managed:
            send(pool, deregister_request(name, service.id, config.consul.datacenter))
            removed.append(service.id)
    foreign = [s for s in actual.services if not s.managed]
    if actual.node is not None and not foreign and not actual.node_check_ids:
        deregister_node(pool, name, config.consul.datacenter)
        removed.append(f"node {name}")
    return removed
