"""Server-side ``Catalog.Register`` / ``Catalog.Deregister``: validation and ACL vetting.

These run "on the leader" (consul ``agent/consul/catalog_endpoint.go``): the checks here come
after forwarding, so a follower relays their errors with the ``rpc error making call:`` prefix.
The state-store rules themselves live in ``state.py``.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from .acl import ACL, Policy
from .state import Store, check_type

Record = Dict[str, Any]
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class RPCError(Exception):
    """An error returned by a server RPC; ``status`` is what the HTTP layer will answer."""

    def __init__(self, text: str, status: int = 500) -> None:
        super().__init__(text)
        self.status = status


def node_pre_apply(node: str, node_id: str) -> None:
    """``nodePreApply``: a node name is required and an ID must be a UUID."""
    if not node:
        raise RPCError("Must provide node")
    if node_id:
        if len(node_id) != 36:
            raise RPCError("Bad node ID: uuid string is wrong length")
        if not _UUID.match(node_id):
            raise RPCError("Bad node ID: uuid is improperly formatted")


def service_pre_apply(service: Record) -> Record:
    """``servicePreApply`` minus ACLs: ID defaults to the name, an ID needs a name, and the
    address may not be 0.0.0.0/::. Returns the fixed-up copy."""
    service = dict(service)
    if not service.get("ID") and service.get("Service"):
        service["ID"] = service["Service"]
    if service.get("ID") and not service.get("Service"):
        raise RPCError("Must provide service name (Service.Service) when service ID is provided")
    if service.get("Address") in ("0.0.0.0", "::", "[::]"):
        raise RPCError("Invalid service address")
    service.setdefault("ID", "")
    service.setdefault("Service", "")
    return service


def check_pre_apply(check: Record) -> Record:
    """``checkPreApply``: an empty CheckID is set to the Name. Returns the fixed-up copy."""
    check = dict(check)
    if not check.get("CheckID") and check.get("Name"):
        check["CheckID"] = check["Name"]
    check.setdefault("CheckID", "")
    return check


def prepare_register(req: Record) -> Record:
    """``nodePreApply``, ``servicePreApply`` and check fix-ups, in Consul's order."""
    node = req.get("Node", "")
    node_pre_apply(node, req.get("ID", ""))
    if not req.get("Address") and not req.get("SkipNodeUpdate"):
        raise RPCError("Must provide address if SkipNodeUpdate is not set")
    if req.get("Service") is not None:
        req = {**req, "Service": service_pre_apply(req["Service"])}
    checks = [dict(c) for c in (req.get("Checks") or []) if c is not None]
    if req.get("Check") is not None:
        checks.append(dict(req["Check"]))  # the single Check is moved into Checks
    checks = [check_pre_apply(c) for c in checks]
    for check in checks:
        if not check.get("Node"):
            check["Node"] = node
        if not check.get("Type"):
            check["Type"] = check_type(check.get("Definition") or {})
        if check["Node"] != node:
            # Consul checks this only with ACLs on (vetRegisterWithACL) and otherwise writes
            # the check to that other node; the emulator always refuses, which is simpler and
            # no client of ours relies on cross-node checks.
            raise RPCError(
                f"Node '{check['Node']}' for check '{check['CheckID']}' doesn't match "
                f"register request node '{node}'"
            )
    out = {k: v for k, v in req.items() if k != "Check"}
    out["Checks"] = checks
    return out


def vet_register(acl: ACL, policy: Optional[Policy], store: Store, req: Record) -> None:
    """``vetRegisterWithACL``: node:write only when the node changes, service:write always."""
    if policy is None:
        return
    node_key = req["Node"].lower()
    existing = store.node(req["Node"])
    if store.changes_node(req):
        acl.require(policy, "node", req["Node"], "write")
    service = req.get("Service")
    if service is not None:
        acl.require(policy, "service", service["Service"], "write")
        other = store.services.get((node_key, service["ID"].lower()))
        if existing is not None and other is not None:
            acl.require(policy, "service", other["Service"], "write")
    for check in req["Checks"]:
        sid = check.get("ServiceID", "")
        if not sid:
            acl.require(policy, "node", req["Node"], "write")
            continue
        if service is not None and service["ID"] == sid:
            continue
        other = store.services.get((node_key, sid.lower())) if existing else None
        if other is None:
            raise RPCError(f"Unknown service ID '{sid}' for check ID '{check['CheckID']}'")
        acl.require(policy, "service", other["Service"], "write")


def vet_deregister(acl: ACL, policy: Optional[Policy], store: Store, req: Record) -> None:
    """``vetDeregisterWithACL``: node:write allows all, else service:write on the target."""
    if policy is None or acl.allowed(policy, "node", req["Node"], "write"):
        return
    node_key = req["Node"].lower()
    if req.get("ServiceID"):
        svc = store.services.get((node_key, req["ServiceID"].lower()))
        if svc is None:
            raise RPCError(f"Unknown service ID '{req['ServiceID']}'")
        acl.require(policy, "service", svc["Service"], "write")
    elif req.get("CheckID"):
        check = store.checks.get((node_key, req["CheckID"].lower()))
        if check is None:
            raise RPCError(f"Unknown check ID '{req['CheckID']}'")
        if check.get("ServiceID"):
            acl.require(policy, "service", check["ServiceName"], "write")
        else:
            acl.require(policy, "node", req["Node"], "write")
    else:
        acl.require(policy, "node", req["Node"], "write")
