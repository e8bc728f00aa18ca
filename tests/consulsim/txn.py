"""``PUT /v1/txn`` with Node, Service and Check operations.

Follows consul ``agent/txn_endpoint.go`` (``convertOps``: the Go client's api ops become RPC
ops), ``agent/consul/txn_endpoint.go`` (``Txn.preCheck``: per-op validation and ACLs before
anything reaches Raft; ``FilterTxnResults``) and ``agent/consul/state/txn.go``
(``txnDispatch``: the ops run in order inside one state-store transaction at one Raft index,
later ops see earlier ones, every failing op is reported and nothing is kept). The ops call
the same ``Store.ensure_*``/``delete_*`` functions as catalog register, so a set identical to
what is stored writes nothing and wakes nothing, whichever endpoint wrote it first.

KV operations are decoded (a malformed one is a 400 like in Consul) but refused with
``KV_REFUSED`` as a TxnError: the emulator has no KV store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from .acl import ACL, PermissionDenied, Policy
from .catalog_rpc import RPCError, check_pre_apply, node_pre_apply, service_pre_apply
from .state import Record, Store, StoreError, WriteResult, check_json, node_json, node_service_json

MAX_OPS = 128  # maxTxnOps since Consul 1.14 (PR #14599); 64 before
MAX_REQ_LEN = 512 * 1024  # txn_max_req_len default (raft.SuggestedMaxDataSize)
KV_REFUSED = "consulsim: KV operations in /v1/txn are not emulated"
TXN_MAX_REQ_LEN_DOC = "https://www.consul.io/docs/agent/config/config-files#txn_max_req_len"

_KV_WRITES = ("set", "delete", "delete-cas", "delete-tree", "cas", "lock", "unlock")
# convertOps copies only these Definition fields into the RPC check; the rest is dropped.
_DEFINITION_KEPT = (
    "HTTP",
    "TLSServerName",
    "TLSSkipVerify",
    "Header",
    "Method",
    "Body",
    "TCP",
    "GRPC",
    "GRPCUseTLS",
    "OSService",
)
_DURATIONS = (
    ("Interval", "IntervalDuration"),
    ("Timeout", "TimeoutDuration"),
    ("DeregisterCriticalServiceAfter", "DeregisterCriticalServiceAfterDuration"),
)


@dataclass
class Op:
    """One RPC operation: ``kind`` KV/Node/Service/Check, its verb and RPC-shaped body."""

    kind: str
    verb: str
    body: Record
    node: str = ""  # Service ops name their node next to the service


@dataclass
class Outcome:
    """What a write transaction did: the Raft apply, and results or errors (never both)."""

    write: WriteResult
    results: Optional[List[Record]] = None
    errors: Optional[List[Record]] = field(default=None)


# ---------------------------------------------------------------------- HTTP layer


def convert_ops(api_ops: List[Record], datacenter: str) -> Tuple[List[Op], int]:
    """``convertOps``: api ops to RPC ops, and how many of them write.

    An element naming none of KV/Node/Service/Check is dropped (Go's switch has no default),
    so OpIndex counts the remaining ops. The first kind present wins, in Go's case order.
    """
    ops: List[Op] = []
    writes = 0
    for api_op in api_ops:
        if "KV" in api_op:
            kv = api_op["KV"]
            verb = kv.get("Verb", "")
            writes += verb in _KV_WRITES
            ops.append(Op("KV", verb, kv))
        elif "Node" in api_op:
            verb = api_op["Node"].get("Verb", "")
            writes += verb != "get"
            ops.append(Op("Node", verb, _rpc_node(api_op["Node"].get("Node") or {}, datacenter)))
        elif "Service" in api_op:
            verb = api_op["Service"].get("Verb", "")
            writes += verb != "get"
            svc = _rpc_service(api_op["Service"].get("Service") or {})
            ops.append(Op("Service", verb, svc, node=api_op["Service"].get("Node", "")))
        elif "Check" in api_op:
            verb = api_op["Check"].get("Verb", "")
            writes += verb != "get"
            ops.append(Op("Check", verb, _rpc_check(api_op["Check"].get("Check") or {})))
    return ops, writes


def _rpc_node(node: Record, datacenter: str) -> Record:
    return {
        "ID": node.get("ID", ""),
        "Node": node.get("Node", ""),
        "Address": node.get("Address", ""),
        "Datacenter": node.get("Datacenter") or datacenter,  # "default DC if not provided"
        "TaggedAddresses": node.get("TaggedAddresses"),
        "Meta": node.get("Meta"),
        "ModifyIndex": node.get("ModifyIndex", 0),
    }


def _rpc_service(svc: Record) -> Record:
    """The NodeService convertOps builds: TaggedAddresses, SocketPath, Connect and
    Locality of the api AgentService are dropped; omitted Weights arrive as {0, 0}."""
    weights = svc.get("Weights") or {}
    out: Record = {
        "ID": svc.get("ID", ""),
        "Service": svc.get("Service", ""),
        "Kind": svc.get("Kind", ""),
        "Tags": svc.get("Tags"),
        "Address": svc.get("Address", ""),
        "Meta": svc.get("Meta"),
        "Port": svc.get("Port", 0),
        "Weights": {"Passing": weights.get("Passing", 0), "Warning": weights.get("Warning", 0)},
        "EnableTagOverride": bool(svc.get("EnableTagOverride")),
        "ModifyIndex": svc.get("ModifyIndex", 0),
    }
    if svc.get("Proxy") is not None:
        out["Proxy"] = svc["Proxy"]  # Consul copies a subset; stored opaque here
    return out


def _rpc_check(check: Record) -> Record:
    """The HealthCheck convertOps builds: no Type, a Definition with only some fields."""
    given = check.get("Definition") or {}
    definition = {k: given[k] for k in _DEFINITION_KEPT if k in given}
    for name, legacy in _DURATIONS:
        value = given.get(name) or given.get(legacy)
        if value:
            definition[name] = value
    return {
        "Node": check.get("Node", ""),
        "CheckID": check.get("CheckID", ""),
        "Name": check.get("Name", ""),
        "Status": check.get("Status", ""),
        "Notes": check.get("Notes", ""),
        "Output": check.get("Output", ""),
        "ServiceID": check.get("ServiceID", ""),
        "ServiceName": check.get("ServiceName", ""),
        "ServiceTags": check.get("ServiceTags"),
        "ExposedPort": check.get("ExposedPort", 0),
        "Definition": definition,
        "ModifyIndex": check.get("ModifyIndex", 0),
    }


# ---------------------------------------------------------------------- server RPC


def pre_check(acl: ACL, policy: Optional[Policy], ops: List[Op]) -> List[Record]:
    """``Txn.preCheck``: validation and ACLs of every non-get op; fixes ops up in place.

    Errors that catalog register answers as 500/403 (ID without name, bad node ID, ACL
    denial) become TxnErrors here. A service-level check is vetted against the
    ServiceName the client sent, as ``vetCheckTxnOp`` does.
    """
    errors: List[Record] = []
    for i, op in enumerate(ops):
        try:
            if op.kind == "KV":
                raise RPCError(KV_REFUSED)  # kvsPreApply runs for every KV verb, gets too
            if op.verb == "get":
                continue
            if op.kind == "Node":
                node_pre_apply(op.body["Node"], op.body["ID"])
                acl.require(policy, "node", op.body["Node"], "write")
            elif op.kind == "Service":
                op.body = service_pre_apply(op.body)
                if op.body["Service"] != "consul":  # servicePreApply exempts it
                    acl.require(policy, "service", op.body["Service"], "write")
            else:
                op.body = check_pre_apply(op.body)
                if op.body["ServiceID"]:
                    acl.require(policy, "service", op.body["ServiceName"], "write")
                else:
                    acl.require(policy, "node", op.body["Node"], "write")
        except (RPCError, PermissionDenied) as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
    return errors


def apply(store: Store, ops: List[Op]) -> Outcome:
    """FSM apply of a TxnRequest (``TxnRW``): one Raft index, all ops or none."""
    idx = store.begin()
    try:
        results, errors = dispatch(store, idx, ops)
    except BaseException:
        store.abort()
        raise
    if errors:
        return Outcome(store.abort(), errors=errors)
    return Outcome(store.commit(), results=results)


def dispatch(store: Store, idx: int, ops: List[Op]) -> Tuple[List[Record], List[Record]]:
    """``txnDispatch``: run every op, collecting results (sets, cas and gets add one each,
    deletes none) and the errors of every failing op. ``idx`` 0 is a read-only run."""
    results: List[Record] = []
    errors: List[Record] = []
    for i, op in enumerate(ops):
        try:
            result = _HANDLERS[op.kind](store, idx, op)
        except StoreError as exc:
            errors.append({"OpIndex": i, "What": str(exc)})
            continue
        if result is not None:
            results.append(result)
    return results, errors


def filter_results(acl: ACL, policy: Optional[Policy], results: List[Record]) -> List[Record]:
    """``FilterTxnResults``: drop results the token may not read."""

    def visible(result: Record) -> bool:
        if "Node" in result:
            return acl.allowed(policy, "node", result["Node"]["Node"], "read")
        if "Service" in result:
            return acl.allowed(policy, "service", result["Service"]["Service"], "read")
        check = result["Check"]
        if check["ServiceName"]:
            return acl.allowed(policy, "service", check["ServiceName"], "read")
        return acl.allowed(policy, "node", check["Node"], "read")

    return [r for r in results if visible(r)]


def _cas_allows(existing: Optional[Record], index: int) -> bool:
    """ModifyIndex 0 means create-only; otherwise it must equal the stored ModifyIndex."""
    if index == 0:
        return existing is None
    return existing is not None and existing["ModifyIndex"] == index


def _node_op(store: Store, idx: int, op: Op) -> Optional[Record]:
    """``txnNode``."""
    node = op.body
    name = node["Node"]
    verb = op.verb
    if verb == "get":
        row = store.node_by_id(node["ID"]) if node["ID"] else store.node(name)
        if row is None:
            raise StoreError(f'node "{name}" doesn\'t exist')
    elif verb == "set":
        row = store.ensure_node(idx, node)
    elif verb == "cas":
        if not _cas_allows(store.node(name), node["ModifyIndex"]):
            raise StoreError(f'failed to set node "{name}", index is stale')
        row = store.ensure_node(idx, node)
    elif verb in ("delete", "delete-cas"):
        existing = store.node(name)
        if verb == "delete-cas" and (
            existing is None or existing["ModifyIndex"] != node["ModifyIndex"]
        ):
            raise StoreError(f'failed to delete node "{name}", index is stale')
        store.delete_node(idx, name)
        return None
    else:
        raise StoreError(f'unknown Node verb "{verb}"')
    return {"Node": node_json(row)}


def _service_op(store: Store, idx: int, op: Op) -> Optional[Record]:
    """``txnService``; results are NodeService JSON with nil Tags/Meta kept as null."""
    svc = op.body
    node, sid = op.node, svc.get("ID", "")
    existing = store.services.get((node.lower(), sid.lower()))
    verb = op.verb
    if verb == "get":
        if existing is None:
            raise StoreError(f'service "{sid}" on node "{node}" doesn\'t exist')
        row = existing
    elif verb == "set":
        row = store.ensure_service(idx, node, svc)
    elif verb == "cas":
        if not _cas_allows(existing, svc["ModifyIndex"]):
            raise StoreError(f'failed to set service "{sid}" on node "{node}", index is stale')
        row = store.ensure_service(idx, node, svc)
    elif verb in ("delete", "delete-cas"):
        if verb == "delete-cas" and (
            existing is None or existing["ModifyIndex"] != svc["ModifyIndex"]
        ):
            raise StoreError(f'failed to delete service "{sid}" on node "{node}", index is stale')
        store.delete_service(idx, node, sid)
        return None
    else:
        raise StoreError(f'unknown Service verb "{verb}"')
    return {"Service": node_service_json(row, nil_as_empty=False)}


def _check_op(store: Store, idx: int, op: Op) -> Optional[Record]:
    """``txnCheck``; results are HealthCheck JSON with nil ServiceTags kept as null."""
    check = op.body
    node, cid = check["Node"], check["CheckID"]
    existing = store.checks.get((node.lower(), cid.lower()))
    verb = op.verb
    if verb == "get":
        if existing is None:
            raise StoreError(f'check "{cid}" on node "{node}" doesn\'t exist')
        row = existing
    elif verb == "set":
        row = store.ensure_check(idx, check)
    elif verb == "cas":
        if not _cas_allows(existing, check["ModifyIndex"]):
            raise StoreError(f'failed to set check "{cid}" on node "{node}", index is stale')
        row = store.ensure_check(idx, check)
    elif verb in ("delete", "delete-cas"):
        if verb == "delete-cas" and (
            existing is None or existing["ModifyIndex"] != check["ModifyIndex"]
        ):
            raise StoreError(f'failed to delete check "{cid}" on node "{node}", index is stale')
        store.delete_check(idx, node, cid)
        return None
    else:
        raise StoreError(f'unknown Check verb "{verb}"')
    return {"Check": check_json(row, nil_as_empty=False)}


_HANDLERS: Dict[str, Callable[[Store, int, Op], Optional[Record]]] = {
    "Node": _node_op,
    "Service": _service_op,
    "Check": _check_op,
}
