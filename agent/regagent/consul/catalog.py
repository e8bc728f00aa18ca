"""Catalog mode (the default): this host is an external node, registered through the catalog API.

Consul never runs checks written through the catalog, so the engine runs them (`runs_checks`)
and this backend writes their status. Request bodies are built by pure functions with sorted
keys, so an identical desired state yields byte-identical requests (Consul then changes no
index, decision 3).
"""

from __future__ import annotations

from dataclasses import replace
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    FrozenSet,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

import structlog

from regagent.consul.http import WriteRequest, parsed, send, stale_get
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import ApplyOutcome, ReadMeta
from regagent.consul.sessions import destroy_session, node_sessions
from regagent.consul.txn import (
    TxnSender,
    Unit,
    check_delete_op,
    check_op,
    node_op,
    service_op,
    single_requests,
)
from regagent.desired import desired_state
from regagent.errors import (
    NodeOwnedByAgent,
    NodeOwnedByOther,
    NodeOwnedByOtherHost,
    NodeVanished,
    RegagentError,
)
from regagent.identity import HOST_ID_KEY, NodeIdentity
from regagent.model import (
    MANAGED_BY_KEY,
    MANAGED_BY_VALUE,
    ActualState,
    CheckState,
    DesiredState,
    NodeCheck,
    NodeRegistration,
    Result,
    ServiceIntent,
    ServiceRegistration,
)
from regagent.nodechecks import SERF_HEALTH, NodeCheckSource, merged
from regagent.plan import NodeCheckWrite, Plan, applied, watched

if TYPE_CHECKING:
    from regagent.consul.node_watch import NodeWatch, Watched

log = structlog.get_logger(__name__)


def parse_node(data: Any) -> Tuple[Optional[NodeRegistration], Tuple[ServiceRegistration, ...]]:
    """`/v1/catalog/node/:node` (null for an unknown node) to node and services."""
    if not data or not data.get("Node"):
        return None, ()
    raw_node = data["Node"]
    node = NodeRegistration(
        raw_node["Node"], raw_node.get("Address", ""), dict(raw_node.get("Meta") or {})
    )
    services = tuple(
        parse_service(raw)
        for raw in sorted((data.get("Services") or {}).values(), key=lambda s: str(s["ID"]))
    )
    return node, services


def parse_service(raw: Any) -> ServiceRegistration:
    """A NodeService / AgentService JSON object (the same fields in both APIs)."""
    return ServiceRegistration(
        id=raw["ID"],
        name=raw["Service"],
        port=int(raw.get("Port") or 0),
        address=raw.get("Address") or "",
        tags=tuple(raw.get("Tags") or ()),
        meta=dict(raw.get("Meta") or {}),
    )


def parse_checks(data: Any) -> Tuple[Tuple[CheckState, ...], Tuple[str, ...]]:
    """`/v1/health/node/:node` to (service checks, node-level check IDs)."""
    service_checks, node_checks = parse_all_checks(data)
    return service_checks, tuple(c.check_id for c in node_checks)


# The Definition fields regagent writes to node checks and compares: Consul renders the whole
# HealthCheckDefinition (zero values omitted), and regagent sets only these.
NODE_CHECK_DEFINITION_KEYS = ("SessionName",)


def parse_node_check(raw: Any) -> NodeCheck:
    definition = raw.get("Definition") or {}
    return NodeCheck(
        check_id=raw["CheckID"],
        name=raw.get("Name", ""),
        status=raw.get("Status", ""),
        output=raw.get("Output", ""),
        notes=raw.get("Notes") or "",
        type=raw.get("Type") or "",
        definition={k: str(definition[k]) for k in NODE_CHECK_DEFINITION_KEYS if definition.get(k)},
    )


def parse_all_checks(data: Any) -> Tuple[Tuple[CheckState, ...], Tuple[NodeCheck, ...]]:
    """`/v1/health/node/:node` to (service checks, node-level checks)."""
    service_checks: List[CheckState] = []
    node_checks: List[NodeCheck] = []
    for raw in data or ():
        if raw.get("ServiceID"):
            service_checks.append(
                CheckState(
                    check_id=raw["CheckID"],
                    service_id=raw["ServiceID"],
                    name=raw.get("Name", ""),
                    status=raw.get("Status", ""),
                    output=raw.get("Output", ""),
                )
            )
        else:
            node_checks.append(parse_node_check(raw))
    return tuple(service_checks), tuple(node_checks)


NodeAnswer = Tuple[Optional[NodeRegistration], Tuple[ServiceRegistration, ...]]
CheckAnswer = Tuple[Tuple[CheckState, ...], Tuple[NodeCheck, ...]]


def read_actual(pool: ServerPool, node_name: str) -> ActualState:
    """This node's registrations: exactly two stale reads, each hedged."""
    return read_with_leader(pool, node_name)[0]


def read_with_leader(pool: ServerPool, node_name: str) -> Tuple[ActualState, bool]:
    """`read_actual`, and whether both answers knew a cluster leader."""
    # Unencoded: the transport percent-encodes the path once (`BoundedHTTPClient.target`).
    node_path = f"/v1/catalog/node/{node_name}"

    def read_node(c: Any) -> Tuple[NodeAnswer, bool]:
        answer = stale_get(c, node_path, dict)
        return parsed(answer.data, parse_node, node_path), answer.known_leader

    (node, services), node_leader = pool.call("read node services", read_node, hedge=True)
    (checks, node_checks), check_leader = read_checks(pool, node_name)
    actual = ActualState(
        node=node,
        services=services,
        checks=checks,
        node_check_ids=tuple(c.check_id for c in node_checks),
        node_checks=node_checks,
    )
    return actual, node_leader and check_leader


def read_checks(pool: ServerPool, node_name: str) -> Tuple[CheckAnswer, bool]:
    """The node's checks (one stale read, hedged), and whether the answer knew a leader."""
    check_path = f"/v1/health/node/{node_name}"  # unencoded, as in `read_with_leader`

    def read(c: Any) -> Tuple[CheckAnswer, bool]:
        answer = stale_get(c, check_path, list)
        return parsed(answer.data, parse_all_checks, check_path), answer.known_leader

    return pool.call("read node checks", read, hedge=True)


def touches_node(plan: Plan) -> bool:
    """Whether sending `plan` moves the node's index in Consul (a node or service write, a
    deregistration); check writes do not (`regagent.consul.node_watch`)."""
    return bool(plan.node_write is not None or plan.services or plan.deregister)


def watched_actual(answer: Watched, checks: CheckAnswer) -> ActualState:
    """The node and services of the watch's answer with the checks last read (and written),
    as `regagent.plan.watched` keeps them."""
    return watched(_checks_only(checks), answer.node, answer.services)


def _checks_only(checks: CheckAnswer) -> ActualState:
    service_checks, node_checks = checks
    return ActualState(
        node=None,
        services=(),
        checks=service_checks,
        node_check_ids=tuple(c.check_id for c in node_checks),
        node_checks=node_checks,
    )


def node_fields(node: NodeRegistration, datacenter: Optional[str]) -> Dict[str, Any]:
    body: Dict[str, Any] = {"Node": node.name, "Address": node.address, "NodeMeta": dict(node.meta)}
    if datacenter:
        body["Datacenter"] = datacenter
    return body


def service_body(service: ServiceRegistration) -> Dict[str, Any]:
    return {
        "ID": service.id,
        "Service": service.name,
        "Tags": list(service.tags),
        "Address": service.address,
        "Port": service.port,
        "Meta": dict(service.meta),  # always a dict: nil vs {} counts as a change in Consul
    }


def check_body(check: CheckState) -> Dict[str, Any]:
    # Status is always sent: an empty Status resets the check to critical.
    # No Definition: Consul never runs catalog checks, and consul-esm leaves these alone.
    return {
        "CheckID": check.check_id,
        "Name": check.name,
        "ServiceID": check.service_id,
        "Status": check.status,
        "Output": check.output,
    }


def node_check_body(check: NodeCheck) -> Dict[str, Any]:
    """A node-level check: no ServiceID; Type and Definition only when set (a session check),
    Status always (an empty Status resets the check to critical)."""
    body: Dict[str, Any] = {
        "CheckID": check.check_id,
        "Name": check.name,
        "Status": check.status,
        "Output": check.output,
        "Notes": check.notes,
    }
    if check.type:
        body["Type"] = check.type
    if check.definition:
        body["Definition"] = dict(check.definition)
    return body


def node_check_unit(write: NodeCheckWrite, node: NodeRegistration, dc: Optional[str]) -> Unit:
    """A node check's write. One with a Type or Definition goes as a single catalog register
    even where /v1/txn is served: a transaction's check op keeps only some Definition fields
    (Consul's convertOps; `SessionName` is not among them) and does not carry Type."""
    check = write.check
    body = node_check_body(check)
    request = WriteRequest(
        "/v1/catalog/register",
        {**node_fields(node, dc), "Check": body},
        f"node check {check.check_id}",
        "node_check",
    )
    single_only = bool(check.type or check.definition)
    ops = () if single_only else (check_op(node.name, body),)
    return Unit(f"node check {check.check_id}", "node_check", ops, request)


def node_check_removal_unit(check: NodeCheck, node: str, dc: Optional[str]) -> Unit:
    body: Dict[str, Any] = {"Node": node, "CheckID": check.check_id}
    if dc:
        body["Datacenter"] = dc
    return Unit(
        f"remove node check {check.check_id}",
        "deregister",
        (check_delete_op(node, check.check_id),),
        WriteRequest(
            "/v1/catalog/deregister", body, f"remove node check {check.check_id}", "deregister"
        ),
    )


def register_body(
    node: NodeRegistration,
    datacenter: Optional[str],
    service: Optional[ServiceRegistration] = None,
    check: Optional[CheckState] = None,
) -> Dict[str, Any]:
    body = node_fields(node, datacenter)
    if service is not None:
        body["Service"] = service_body(service)
    if check is not None:
        body["Check"] = check_body(check)
    return body


def plan_units(plan: Plan, datacenter: Optional[str]) -> List[Unit]:
    """The plan as logical writes, in a safe order, each with its txn ops and its single
    catalog request (`regagent.consul.txn`)."""
    node = plan.node
    name = node.name
    units: List[Unit] = []
    if plan.node_write is not None:
        units.append(
            Unit(
                f"node {name}",
                "node",
                (node_op(name, node.address, node.meta, datacenter),),
                WriteRequest(
                    "/v1/catalog/register", register_body(node, datacenter), "node", "node"
                ),
            )
        )
    for write in plan.services:
        service = write.service
        ops = []
        if write.old is not None and write.old.name != service.name:
            # Never rename under an existing ID (Consul 2.0.x refuses it): delete, re-create.
            ops.append(service_op(name, "delete", {"ID": service.id, "Service": write.old.name}))
        ops.append(service_op(name, "set", service_body(service)))
        if write.check is not None:
            ops.append(check_op(name, txn_check_body(write.check, service.name)))
        units.append(
            Unit(
                f"service {service.id}",
                "register" if write.is_new else "update",
                tuple(ops),
                WriteRequest(
                    "/v1/catalog/register",
                    register_body(node, datacenter, service, write.check),
                    f"service {service.id}",
                    "register" if write.is_new else "update",
                ),
            )
        )
    for check_write in plan.checks:
        check = check_write.check
        units.append(
            Unit(
                f"check {check.check_id} of service {check.service_id}",
                "status",
                (check_op(name, txn_check_body(check, check_write.service_name)),),
                WriteRequest(
                    "/v1/catalog/register",
                    register_body(node, datacenter, check=check),
                    f"check {check.check_id}",
                    "status",
                ),
            )
        )
    for gone in plan.deregister:
        units.append(
            Unit(
                f"deregister service {gone.id}",
                "deregister",
                (service_op(name, "delete", {"ID": gone.id, "Service": gone.name}),),
                deregister_request(name, gone.id, datacenter),
            )
        )
    units += [node_check_unit(w, node, datacenter) for w in plan.node_checks]
    units += [node_check_removal_unit(c, name, datacenter) for c in plan.node_checks_removed]
    return units


def txn_check_body(check: CheckState, service_name: str) -> Dict[str, Any]:
    """A check as a txn `set`: Status always (empty resets to critical), ServiceName always
    (the ACL pre-check uses what the client sends), no Definition (see check_body)."""
    return {**check_body(check), "ServiceName": service_name}


def plan_requests(plan: Plan, datacenter: Optional[str]) -> List[WriteRequest]:
    """The exact single catalog requests that carry out `plan`, in a safe order (the layout
    for a cluster without /v1/txn)."""
    return single_requests(plan_units(plan, datacenter))


def logical_writes(plan: Plan) -> int:
    """The writes the report counts for `plan`, whichever request layout carries them (as
    `txn.counted`, without building a body): one per service, check, node check or
    deregistration; the node's own write only when none of those carries the node."""
    writes = (
        len(plan.services)
        + len(plan.checks)
        + len(plan.deregister)
        + len(plan.node_checks)
        + len(plan.node_checks_removed)
    )
    return writes or (1 if plan.node_write is not None else 0)


def deregister_request(node: str, service_id: str, datacenter: Optional[str]) -> WriteRequest:
    body: Dict[str, Any] = {"Node": node, "ServiceID": service_id}
    if datacenter:
        body["Datacenter"] = datacenter
    return WriteRequest("/v1/catalog/deregister", body, f"deregister {service_id}", "deregister")


def deregister_node(pool: ServerPool, node_name: str, datacenter: Optional[str]) -> None:
    body: Dict[str, Any] = {"Node": node_name}
    if datacenter:
        body["Datacenter"] = datacenter
    send(pool, WriteRequest("/v1/catalog/deregister", body, "deregister node", "deregister"))


def ownership_problem(
    name: str, actual: ActualState, host_id: Optional[str] = None
) -> Optional[RegagentError]:
    """regagent only writes a node it created (decision 2): never a real agent's, never another
    tool's external node, never the node of another host that has the same name (decision 10)."""
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
        return NodeOwnedByOther(
            f"node {name!r} already exists in Consul without NodeMeta "
            f"{MANAGED_BY_KEY}={MANAGED_BY_VALUE}, so regagent will not take it over. "
            "Set node.name to a name of its own, or remove that node first"
        )
    theirs = actual.node.meta.get(HOST_ID_KEY) if actual.node is not None else None
    if host_id is not None and theirs and theirs != host_id:
        return NodeOwnedByOtherHost(
            f"node {name!r} is registered by regagent on another host (NodeMeta {HOST_ID_KEY}="
            f"{theirs}, this host is {host_id}): two hosts use the same node name, e.g. a cloned "
            "image or the host name 'localhost'. Give this host a name of its own "
            "(set its host name, or node.name in the configuration); regagent writes nothing "
            "to that node meanwhile"
        )
    return None


class SessionSwitch(Protocol):
    """The dead-man's switch's hooks into `apply` (`regagent.consul.deadman.SessionKeeper`)."""

    def arm(self, check: NodeCheck) -> NodeCheck:
        """Before `check` is written to an existing node: the check to send instead (the
        switch's own check as Consul shows it once its session is live; others unchanged)."""
        ...

    def node_written(self) -> None:
        """After a successful apply: the node exists."""
        ...


SESSION_NAME_PREFIX = "regagent:"  # sessions regagent creates are named regagent:<node>:<id>


class CatalogRegistrar:
    """The catalog backend: an external node per host, checks run by regagent."""

    runs_checks = True  # Consul never runs a check written through the catalog

    def __init__(
        self,
        pool: ServerPool,
        identity: NodeIdentity,
        node_meta: Mapping[str, str],
        datacenter: Optional[str],
        *,
        node_checks: Sequence[NodeCheckSource] = (),
        switch: Optional[SessionSwitch] = None,
        watch: Optional[NodeWatch] = None,
    ) -> None:
        self.switch = switch
        # The daemon's blocking query on the node (None: one-shot commands, watch_wait 0).
        self.watch = watch
        # The node's checks as last read and written since, and when they were read: served
        # to cycles while the watch is fresh, for at most `watch.checks_max_age`.
        self._checks: Optional[CheckAnswer] = None
        self._checks_read = float("-inf")
        self._vanished = False  # the last write found the node gone
        self.pool = pool
        self.identity = identity
        self.node_meta = dict(node_meta)
        self.datacenter = datacenter
        self.node_check_sources = tuple(node_checks)
        self.sender = TxnSender(pool, datacenter)
        pool.place(identity.name)

    def read(self) -> Tuple[ActualState, ReadMeta]:
        watched = self.watch.fresh() if self.watch is not None else None
        if self._vanished:
            # A write found the node gone: the watch's answer may predate that; ask Consul.
            watched, self._vanished = None, False
        if watched is not None and watched.known_leader:
            return self._read_watched(watched)
        actual, leader = self._read_both()
        # A server cut off from the others still answers stale reads but knows no leader: ask
        # the next ones before concluding that the cluster has none (bounded by the pool size).
        for _ in range(self.pool.policy.leader_searches(len(self.pool.servers))):
            if leader or not self.pool.move_on("no cluster leader"):
                break
            actual, leader = self._read_both()
        return actual, ReadMeta(self.pool.current_server.address, leader)

    def _read_both(self) -> Tuple[ActualState, bool]:
        """The read without the watch: the node and its checks, two requests; the checks are
        kept."""
        actual, leader = read_with_leader(self.pool, self.identity.name)
        self._keep_checks((actual.checks, actual.node_checks))
        return actual, leader

    def _keep_checks(self, checks: Optional[CheckAnswer]) -> None:
        self._checks = checks
        if checks is not None and self.watch is not None:
            self._checks_read = self.watch.clock()

    def _read_watched(self, watched: Watched) -> Tuple[ActualState, ReadMeta]:
        """The watch's answer for the node and services, the kept checks while they are
        young enough (else one read of them): no request at all in the steady state."""
        assert self.watch is not None
        checks = None if self.watch.node_was_gone() else self._checks
        leader = True
        if checks is None or self.watch.clock() - self._checks_read > self.watch.checks_max_age:
            checks, leader = read_checks(self.pool, self.identity.name)
            self._keep_checks(checks)
        server = self.pool.current_server.address
        return watched_actual(watched, checks), ReadMeta(server, leader)

    def node_address(self, actual: Optional[ActualState]) -> str:
        """For `auto`, the route to the server that answered (kept once one did); before any
        answered, the route to the first configured server, not kept."""
        answered = actual is not None
        server = self.pool.current_server.address if answered else self.pool.servers[0].address
        return self.identity.address(server, keep=answered)

    def ownership_problem(self, actual: ActualState) -> Optional[RegagentError]:
        return ownership_problem(self.identity.name, actual, self.identity.host_id)

    def node(self, address: str) -> NodeRegistration:
        meta = {**self.node_meta, "external-node": "true", MANAGED_BY_KEY: MANAGED_BY_VALUE}
        if self.identity.host_id is not None:
            meta[HOST_ID_KEY] = self.identity.host_id
        return NodeRegistration(self.identity.name, address, meta)

    def desired(
        self,
        intents: Sequence[ServiceIntent],
        actual: Optional[ActualState],
        node_address: str,
        results: Mapping[str, Result],
    ) -> DesiredState:
        claim = merged(source.node_checks(actual) for source in self.node_check_sources)
        return desired_state(
            self.node(node_address),
            intents,
            results,
            node_checks=claim.wanted,
            owned_node_checks=claim.owned,
        )

    def owned_node_checks(self) -> FrozenSet[str]:
        """The node check IDs regagent's features manage on this node."""
        return merged(source.node_checks(None) for source in self.node_check_sources).owned

    def planned_writes(self, plan: Plan) -> int:
        return logical_writes(plan)

    def apply(self, plan: Plan) -> ApplyOutcome:
        if self.switch is not None and plan.node_write != () and plan.node_checks:
            # The node exists: the switch may arm its session before its check is written.
            switch = self.switch
            armed = tuple(replace(w, check=switch.arm(w.check)) for w in plan.node_checks)
            plan = replace(plan, node_checks=armed)
        watch = self.watch if touches_node(plan) else None
        if watch is not None:
            watch.writing()
        outcome = self.sender.send(plan_units(plan, self.datacenter))
        if watch is not None:
            watch.wrote(ok=outcome.error is None)
        self._vanished = isinstance(outcome.error, NodeVanished)
        if outcome.error is not None or plan.node_checks or plan.node_checks_removed:
            # Not known what landed; or node checks, whose stored form (a Definition an older
            # Consul drops, a status Consul owns) only a read shows: the next cycle reads them.
            self._checks = None
        elif self._checks is not None:
            self._checks = (applied(_checks_only(self._checks), plan).checks, self._checks[1])
        if outcome.error is None:
            # Also after an empty plan: a local file read, Consul only while a rename is pending.
            self.retire_previous_node()
            if self.switch is not None:
                self.switch.node_written()
        return outcome

    def retire_previous_node(self) -> None:
        """After a rename (a new host name or node.name), the node this host used before would
        stay in Consul forever with passing checks: remove its regagent services, and the node
        if nothing else is on it, when it carries this host's identity. What counts as a
        rename (and not a second configuration) is `regagent.identity.NodeNames`' to say."""
        previous = self.identity.previous_name()  # no I/O once this name is recorded
        if previous is None:
            self.identity.record_name()
            return
        try:
            actual = read_actual(self.pool, previous)
            ours = actual.node is not None and (
                actual.node.meta.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
                and actual.node.meta.get(HOST_ID_KEY) == self.identity.host_id
                and self.identity.host_id is not None
            )
            removed = self._remove_owned(previous, actual) if ours else []
        except RegagentError as exc:  # tried again at the next successful apply
            log.warning("previous_node_not_retired", node=previous, error=str(exc))
            return
        log.warning(
            "node_renamed",
            previous=previous,
            node=self.identity.name,
            removed=removed,
            reason=None
            if ours
            else "already gone"
            if actual.node is None
            else "the old node is not this host's; left alone",
        )
        self.identity.record_name()

    def deregister_owned(self) -> List[str]:
        name = self.identity.name
        actual = read_actual(self.pool, name)
        problem = ownership_problem(name, actual, self.identity.host_id)
        if problem is not None:
            raise problem
        return self._remove_owned(name, actual)

    def _remove_owned(self, name: str, actual: ActualState) -> List[str]:
        """Deregisters the regagent services and node checks of node `name`, and the node when
        nothing else is left on it."""
        removed: List[str] = []
        for service in actual.services:
            if service.managed:
                send(self.pool, deregister_request(name, service.id, self.datacenter))
                removed.append(service.id)
        owned = self.owned_node_checks()
        foreign = [s for s in actual.services if not s.managed]
        foreign_checks = [c for c in actual.node_check_ids if c not in owned]
        if actual.node is not None and not foreign and not foreign_checks:
            deregister_node(self.pool, name, self.datacenter)  # its checks go with it
            removed.append(f"node {name}")
            return removed
        for check_id in (c for c in actual.node_check_ids if c in owned):
            unit = node_check_removal_unit(NodeCheck(check_id, "", ""), name, self.datacenter)
            send(self.pool, unit.single)
            removed.append(f"node check {check_id}")
        # The node stays (someone else's service or check is on it): end regagent's sessions
        # on it, after their checks are gone (a removed node would have ended them itself).
        for session_id, session_name in node_sessions(self.pool, name):
            if session_name.startswith(f"{SESSION_NAME_PREFIX}{name}:"):
                destroy_session(self.pool, session_id, self.datacenter)
                removed.append(f"session {session_name}")
        return removed
