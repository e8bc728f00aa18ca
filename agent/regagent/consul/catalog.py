"""Catalog-mode I/O: read this node's registrations, send the planner's writes.

Request bodies are built by pure functions with sorted keys, so an identical desired state yields
byte-identical requests (Consul then changes no index, decision 3).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from regagent.consul.http import WriteRequest, send, stale_get
from regagent.consul.pool import ServerPool
from regagent.errors import ConsulUnreachable
from regagent.model import (
    ActualState,
    CheckState,
    NodeRegistration,
    ServiceRegistration,
)
from regagent.plan import Plan

SERF_HEALTH = "serfHealth"


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
    service_checks: List[CheckState] = []
    node_checks: List[str] = []
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
            node_checks.append(raw["CheckID"])
    return tuple(service_checks), tuple(node_checks)


def read_actual(pool: ServerPool, node_name: str) -> ActualState:
    """This node's registrations: exactly two stale reads per cycle."""
    path = quote(node_name, safe="")
    node_answer = pool.call(
        "read node services", lambda c: stale_get(c, f"/v1/catalog/node/{path}", dict)
    )
    check_answer = pool.call(
        "read node checks", lambda c: stale_get(c, f"/v1/health/node/{path}", list)
    )
    try:
        node, services = parse_node(node_answer.data)
        checks, node_checks = parse_checks(check_answer.data)
    except (KeyError, TypeError, ValueError) as exc:
        server = pool.current_server.address
        raise ConsulUnreachable(f"{server} sent a malformed catalog answer ({exc!r})") from None
    return ActualState(
        node=node,
        services=services,
        checks=checks,
        node_check_ids=node_checks,
        known_leader=node_answer.known_leader and check_answer.known_leader,
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


def plan_requests(plan: Plan, datacenter: Optional[str]) -> List[WriteRequest]:
    """The exact catalog requests that carry out `plan`, in a safe order."""
    requests: List[WriteRequest] = []
    if plan.node_write is not None and not plan.services and not plan.checks:
        requests.append(
            WriteRequest("/v1/catalog/register", register_body(plan.node, datacenter), "node")
        )
    for write in plan.services:
        requests.append(
            WriteRequest(
                "/v1/catalog/register",
                register_body(plan.node, datacenter, write.service, write.check),
                f"service {write.service.id}",
            )
        )
    for check_write in plan.checks:
        requests.append(
            WriteRequest(
                "/v1/catalog/register",
                register_body(plan.node, datacenter, check=check_write.check),
                f"check {check_write.check.check_id}",
            )
        )
    requests += [deregister_request(plan.node.name, s.id, datacenter) for s in plan.deregister]
    return requests


def deregister_request(node: str, service_id: str, datacenter: Optional[str]) -> WriteRequest:
    body: Dict[str, Any] = {"Node": node, "ServiceID": service_id}
    if datacenter:
        body["Datacenter"] = datacenter
    return WriteRequest("/v1/catalog/deregister", body, f"deregister {service_id}")


def deregister_node(pool: ServerPool, node_name: str, datacenter: Optional[str]) -> None:
    body: Dict[str, Any] = {"Node": node_name}
    if datacenter:
        body["Datacenter"] = datacenter
    send(pool, WriteRequest("/v1/catalog/deregister", body, "deregister node"))
