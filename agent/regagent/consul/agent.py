"""Agent mode (`consul.mode: agent`): for hosts that run their own Consul agent.

Services go through the local agent's API, which owns them and the node, runs their checks and
keeps the catalog in sync by anti-entropy (design decision 1). regagent still writes only what
differs; check status is the agent's business, so the desired state has no checks and the plan
compares services only. The check definition is described in each service's Meta
(`regagent-check`), because the agent does not echo definitions back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from regagent.consul.catalog import parse_service
from regagent.consul.http import WriteRequest, get_json, parsed, send, send_all
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import ApplyOutcome, ReadMeta
from regagent.desired import desired_state
from regagent.errors import RegagentError
from regagent.identity import NodeIdentity
from regagent.model import (
    ActualState,
    CheckState,
    DesiredState,
    HealthProbe,
    NodeRegistration,
    Result,
    ServiceIntent,
    ServiceRegistration,
    Source,
    service_check_id,
    url_host,
)
from regagent.plan import Plan
from regagent.rules import go_duration

T = TypeVar("T")


def _parse_self(data: Any) -> NodeRegistration:
    member = data.get("Member") or {}
    return NodeRegistration(str(data["Config"]["NodeName"]), str(member.get("Addr") or ""), {})


def _parse_services(data: Any) -> Tuple[ServiceRegistration, ...]:
    return tuple(parse_service(raw) for _, raw in sorted((data or {}).items()))


def _parse_checks(data: Any) -> Tuple[CheckState, ...]:
    return tuple(
        CheckState(
            raw["CheckID"],
            raw["ServiceID"],
            raw.get("Name", ""),
            raw.get("Status", ""),
            raw.get("Output", ""),
        )
        for _, raw in sorted((data or {}).items())
        if raw.get("ServiceID")
    )


def _read(pool: ServerPool, what: str, path: str, parse: Callable[[Any], T]) -> T:
    """A GET parsed inside the pool's call: a malformed answer counts against the agent."""

    return pool.call(what, lambda c: parsed(get_json(c, path, dict).data, parse, path))


def read_agent_actual(pool: ServerPool) -> ActualState:
    """The local agent's node name, services and checks (agent-local: no index, no leader)."""
    node = _read(pool, "read agent", "/v1/agent/self", _parse_self)
    services = _read(pool, "read agent services", "/v1/agent/services", _parse_services)
    checks = _read(pool, "read agent checks", "/v1/agent/checks", _parse_checks)
    return ActualState(node=node, services=services, checks=checks)


CHECK_META_KEY = "regagent-check"


def agent_probe(intent: ServiceIntent) -> Optional[HealthProbe]:
    """What the agent should run: the intent's probe; for a discovered exporter without one (it
    vanished) a GET of its metrics URL, so the agent reports it critical; else nothing
    (a static service with `check: {type: none}`)."""
    if intent.probe is not None or intent.source != Source.DISCOVERY:
        return intent.probe
    service = intent.service
    if "metrics_path" not in service.meta or not service.address:
        return None
    url = (
        f"{service.meta.get('scheme', 'http')}://{url_host(service.address)}:{service.port}"
        f"{service.meta['metrics_path']}"
    )
    return HealthProbe("http", url)


def describe_check(probe: Optional[HealthProbe], interval: float) -> str:
    """Stable one-line description of the check definition, kept in the service's Meta: the
    agent does not echo definitions back, so a changed definition must change the service."""
    if probe is None:
        return "none"
    return f"{probe.kind} {probe.target} every {go_duration(interval)}"


def with_check_meta(
    service: ServiceRegistration, probe: Optional[HealthProbe], interval: float
) -> ServiceRegistration:
    meta = {**service.meta, CHECK_META_KEY: describe_check(probe, interval)}
    return replace(service, meta=meta)


def check_definition(
    service: ServiceRegistration, probe: Optional[HealthProbe], interval: float
) -> Optional[Dict[str, Any]]:
    if probe is None:
        return None
    check: Dict[str, Any] = {
        "CheckID": service_check_id(service.id),
        "Name": f"{service.name} health",
        "Interval": go_duration(interval),
        "Timeout": go_duration(probe.timeout),
    }
    check["HTTP" if probe.kind == "http" else "TCP"] = probe.target
    return check


def agent_register_body(
    service: ServiceRegistration, check: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "ID": service.id,
        "Name": service.name,
        "Tags": list(service.tags),
        "Address": service.address,
        "Port": service.port,
        "Meta": dict(service.meta),
    }
    if check is not None:
        body["Check"] = check
    return body


def agent_requests(plan: Plan, interval: float) -> List[WriteRequest]:
    """The agent API requests that carry out `plan` (services only; no node, no statuses),
    each service with the check definition the plan gives it."""
    requests = [
        WriteRequest(
            "/v1/agent/service/register",
            agent_register_body(
                write.service, check_definition(write.service, write.probe, interval)
            ),
            f"service {write.service.id}",
            "register" if write.is_new else "update",
        )
        for write in plan.services
    ]
    requests += [agent_deregister_request(s.id) for s in plan.deregister]
    return requests


def agent_deregister_request(service_id: str) -> WriteRequest:
    # Unencoded: the transport percent-encodes the path once (`BoundedHTTPClient.target`), as
    # Consul decodes it once (`strings.TrimPrefix(req.URL.Path, ...)`).
    path = f"/v1/agent/service/deregister/{service_id}"
    return WriteRequest(path, {}, f"deregister {service_id}", "deregister")


class AgentRegistrar:
    """The agent backend: services on the local agent's node, checks run by the agent."""

    runs_checks = False  # the agent runs the check definitions regagent registers

    def __init__(
        self,
        pool: ServerPool,
        identity: NodeIdentity,
        node_meta: Mapping[str, str],
        interval: float,
    ) -> None:
        self.pool = pool  # one "server": the local agent
        self.identity = identity
        self.node_meta = dict(node_meta)
        self.interval = interval

    def read(self) -> Tuple[ActualState, ReadMeta]:
        actual = read_agent_actual(self.pool)  # agent-local: no index, no leader to know
        return actual, ReadMeta(self.pool.current_server.address)

    def node_address(self, actual: Optional[ActualState]) -> str:
        """The agent's advertised address (its node owns the services) unless configured."""
        node = actual.node if actual is not None else None
        if self.identity.auto and node is not None and node.address:
            return node.address
        return self.identity.address(self.pool.servers[0].address, keep=False)

    def ownership_problem(self, actual: ActualState) -> Optional[RegagentError]:
        return None  # the agent's own node: regagent only ever touches its own services

    def desired(
        self,
        intents: Sequence[ServiceIntent],
        actual: Optional[ActualState],
        node_address: str,
        results: Mapping[str, Result],
    ) -> DesiredState:
        # Each intent's probe becomes what the agent runs; its description goes into Meta.
        probes = [(intent, agent_probe(intent)) for intent in intents]
        described = [
            replace(
                intent,
                probe=probe,
                service=with_check_meta(intent.service, probe, self.interval),
            )
            for intent, probe in probes
        ]
        node = actual.node if actual is not None and actual.node is not None else None
        if node is None:
            node = NodeRegistration(self.identity.name, node_address, self.node_meta)
        return desired_state(node, described, {}, with_checks=False)

    def planned_writes(self, plan: Plan) -> int:
        return len(plan.services) + len(plan.deregister)  # as agent_requests, without bodies

    def apply(self, plan: Plan) -> ApplyOutcome:
        return send_all(self.pool, agent_requests(plan, self.interval))

    def deregister_owned(self) -> List[str]:
        removed: List[str] = []
        for service in read_agent_actual(self.pool).services:
            if service.managed:
                send(self.pool, agent_deregister_request(service.id))
                removed.append(service.id)
        return removed
