"""Consul's HTTP API on top of ``Simulation``: routing, parameters, filters and JSON shapes.

Each handler mirrors its namesake in consul ``agent/*_endpoint.go``: it parses the query,
decodes the body strictly, calls the simulated RPC, filters by ACL and renders the same JSON.
Transport concerns (sockets, faults) live in ``listener.py``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import decode, txn
from .acl import PermissionDenied, Policy
from .agent_local import AgentError, AgentState
from .sessions import new_session_request, session_json
from .sim import ApiError, ReadMeta, Simulation
from .state import (
    CHECK_STATUSES,
    Record,
    check_json,
    node_json,
    node_service_json,
    service_node_json,
)

NOT_FOUND = "Invalid URL path: not a recognized HTTP API endpoint"


@dataclass
class Request:
    """One parsed HTTP request to server ``server``."""

    server: int
    method: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]
    body: bytes = b""
    arg: str = ""

    def param(self, name: str) -> str:
        return (self.query.get(name) or [""])[0]

    @property
    def token(self) -> str:
        """``parseTokenInternal``: ``?token``, then X-Consul-Token, then a Bearer token."""
        if self.param("token"):
            return self.param("token")
        if self.headers.get("x-consul-token"):
            return self.headers["x-consul-token"]
        auth = self.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return ""


@dataclass
class Response:
    """Status, headers and body; ``body`` None means 200 with an empty body."""

    status: int = 200
    body: Optional[bytes] = None
    headers: Dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def _json_response(
    req: Request, obj: Any, headers: Optional[Dict[str, str]] = None, status: int = 200
) -> Response:
    if "pretty" in req.query:
        text = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    out = dict(headers or {})
    out["Content-Type"] = "application/json"
    return Response(status, text.encode("utf-8"), out)


def _node_meta_filter(req: Request) -> Dict[str, str]:
    out = {}
    for item in req.query.get("node-meta", []):
        key, _, value = item.partition(":")
        out[key] = value
    return out


def _meta_matches(meta: Optional[Dict[str, str]], wanted: Dict[str, str]) -> bool:
    return all((meta or {}).get(k) == v for k, v in wanted.items())


def _has_tags(tags: Optional[List[str]], wanted: List[str]) -> bool:
    """``serviceTagFilter``: every wanted tag present, compared case-insensitively."""
    have = {t.lower() for t in tags or []}
    return all(w.lower() in have for w in wanted)


class ConsulAPI:
    """Routes requests to handlers; one instance serves every emulated server."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.routes: List[Tuple[str, Tuple[str, ...], Handler]] = [
            ("/v1/catalog/register", ("PUT",), self.catalog_register),
            ("/v1/catalog/deregister", ("PUT",), self.catalog_deregister),
            ("/v1/catalog/datacenters", ("GET",), self.catalog_datacenters),
            ("/v1/catalog/nodes", ("GET",), self.catalog_nodes),
            ("/v1/catalog/services", ("GET",), self.catalog_services),
            ("/v1/catalog/service/", ("GET",), self.catalog_service),
            ("/v1/catalog/node/", ("GET",), self.catalog_node),
            ("/v1/catalog/node-services/", ("GET",), self.catalog_node_services),
            ("/v1/health/service/", ("GET",), self.health_service),
            ("/v1/health/node/", ("GET",), self.health_node),
            ("/v1/health/checks/", ("GET",), self.health_checks),
            ("/v1/health/state/", ("GET",), self.health_state),
            ("/v1/agent/self", ("GET",), self.agent_self),
            ("/v1/agent/services", ("GET",), self.agent_services),
            ("/v1/agent/checks", ("GET",), self.agent_checks),
            ("/v1/agent/service/register", ("PUT",), self.agent_service_register),
            ("/v1/agent/service/deregister/", ("PUT",), self.agent_service_deregister),
            ("/v1/agent/check/pass/", ("PUT",), self._ttl("passing")),
            ("/v1/agent/check/warn/", ("PUT",), self._ttl("warning")),
            ("/v1/agent/check/fail/", ("PUT",), self._ttl("critical")),
            ("/v1/agent/check/update/", ("PUT",), self.agent_check_update),
            ("/v1/session/create", ("PUT",), self.session_create),
            ("/v1/session/destroy/", ("PUT",), self.session_destroy),
            ("/v1/session/renew/", ("PUT",), self.session_renew),
            ("/v1/session/info/", ("GET",), self.session_info),
            ("/v1/session/node/", ("GET",), self.session_node),
            ("/v1/session/list", ("GET",), self.session_list),
            ("/v1/txn", ("PUT",), self.txn),
            ("/v1/status/leader", ("GET",), self.status_leader),
            ("/v1/status/peers", ("GET",), self.status_peers),
        ]

    # ------------------------------------------------------------------ dispatch

    def match(self, path: str) -> Optional[Tuple[str, Tuple[str, ...], Handler, str]]:
        """Go ``ServeMux`` rules: exact patterns, else the longest trailing-slash prefix."""
        best = None
        for pattern, methods, handler in self.routes:
            if pattern.endswith("/"):
                if path.startswith(pattern) and (best is None or len(pattern) > len(best[0])):
                    best = (pattern, methods, handler, path[len(pattern) :])
            elif path == pattern:
                return pattern, methods, handler, ""
        return best

    @staticmethod
    def endpoint_name(path: str, pattern: Optional[str]) -> str:
        """The stats key of a request: its route pattern, ``:arg`` for the path parameter."""
        if pattern is None:
            return path
        return pattern + ":arg" if pattern.endswith("/") else pattern

    def handle(self, req: Request) -> Response:
        """Serve one request; ApiError becomes Consul's plain-text error answer."""
        found = self.match(req.path)
        if found is None:
            return Response(404, NOT_FOUND.encode())
        pattern, methods, handler, arg = found
        if pattern == "/v1/txn":
            refusal = self.sim.txn_refusal(req.server)
            if refusal:
                # A Consul before 0.7 has no such route: its Index handler answers 404 with
                # an empty body, for any method. A blocking proxy answers what it is told.
                return Response(refusal, b"")
        allow = ",".join(("OPTIONS", *methods))
        if req.method == "OPTIONS":
            return Response(200, None, {"Allow": allow})
        if req.method not in methods:
            return Response(405, f"method {req.method} not allowed".encode(), {"Allow": allow})
        req.arg = arg
        try:
            dc = req.param("dc")
            if dc and dc != self.sim.settings.datacenter:
                raise ApiError(500, "No path to datacenter")
            if req.param("filter"):
                raise ApiError(
                    400,
                    "Failed to create boolean expression evaluator: "
                    "?filter is not implemented by consulsim",
                )
            return handler(req)
        except ApiError as exc:
            return Response(exc.status, exc.text.encode())

    # ------------------------------------------------------------------ helpers

    def _read(
        self,
        req: Request,
        compute: Callable[[Optional[Policy]], Tuple[int, Tuple[Any, bool]]],
        node: Optional[str] = None,
    ) -> Response:
        meta, (data, filtered) = self.sim.read(req.server, req.query, req.token, compute, node)
        return _json_response(req, data, self._meta_headers(req, meta, filtered))

    def _meta_headers(self, req: Request, meta: ReadMeta, filtered: bool) -> Dict[str, str]:
        headers = {
            "X-Consul-Index": str(meta.index),
            "X-Consul-KnownLeader": "true" if meta.known_leader else "false",
            "X-Consul-LastContact": str(meta.last_contact_ms),
            "X-Consul-Effective-Consistency": meta.consistency,
        }
        if self.sim.acl.enabled:
            headers["X-Consul-Default-ACL-Policy"] = self.sim.acl.default_policy
            if filtered and req.token:
                headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return headers

    def _can(self, policy: Optional[Policy], resource: str, name: str) -> bool:
        return self.sim.acl.allowed(policy, resource, name, "read")

    @staticmethod
    def _decode(req: Request, schema: decode.Schema) -> Record:
        try:
            return decode.decode_body(req.body, schema)
        except decode.DecodeError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None

    def _write_body(self, req: Request, schema: decode.Schema) -> Record:
        body = self._decode(req, schema)
        dc = body.get("Datacenter") or self.sim.settings.datacenter
        if dc != self.sim.settings.datacenter:
            raise ApiError(500, "No path to datacenter")
        body["Datacenter"] = dc
        return body

    # ------------------------------------------------------------------ catalog

    def catalog_register(self, req: Request) -> Response:
        body = self._write_body(req, decode.REGISTER_REQUEST)
        self.sim.catalog_register(req.server, body, req.token)
        return _json_response(req, True)

    def catalog_deregister(self, req: Request) -> Response:
        body = self._write_body(req, decode.DEREGISTER_REQUEST)
        self.sim.catalog_deregister(req.server, body, req.token)
        return _json_response(req, True)

    def catalog_datacenters(self, req: Request) -> Response:
        return _json_response(req, [self.sim.settings.datacenter])

    def catalog_nodes(self, req: Request) -> Response:
        store = self.sim.store
        wanted = _node_meta_filter(req)

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            out, filtered = [], False
            for node in store.all_nodes():
                if not _meta_matches(node.get("Meta"), wanted):
                    continue
                if not self._can(policy, "node", node["Node"]):
                    filtered = True
                    continue
                out.append(node_json(node))
            return store.idx.tables["nodes"], (out, filtered)

        return self._read(req, compute)

    def catalog_services(self, req: Request) -> Response:
        store = self.sim.store
        wanted = _node_meta_filter(req)

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            out: Dict[str, List[str]] = {}
            filtered = False
            for node, svc in store.service_rows():
                if not _meta_matches(node.get("Meta"), wanted):
                    continue
                if not self._can(policy, "service", svc["Service"]):
                    filtered = True
                    continue
                tags = out.setdefault(svc["Service"], [])
                for tag in svc.get("Tags") or []:
                    if tag not in tags:
                        tags.append(tag)
            index = store.idx.tables["services"]
            if wanted:
                index = max(index, store.idx.tables["nodes"])
            return index, (dict(sorted(out.items())), filtered)

        return self._read(req, compute)

    def _service_rows(
        self, req: Request, policy: Optional[Policy]
    ) -> Tuple[List[Tuple[Record, Record]], bool]:
        wanted_meta = _node_meta_filter(req)
        wanted_tags = req.query.get("tag", [])
        rows, filtered = [], False
        for node, svc in self.sim.store.service_rows(req.arg):
            if not _meta_matches(node.get("Meta"), wanted_meta):
                continue
            if not _has_tags(svc.get("Tags"), wanted_tags):
                continue
            if not (
                self._can(policy, "node", node["Node"])
                and self._can(policy, "service", svc["Service"])
            ):
                filtered = True
                continue
            rows.append((node, svc))
        return rows, filtered

    def catalog_service(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing service name")

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            rows, filtered = self._service_rows(req, policy)
            out = [service_node_json(node, svc) for node, svc in rows]
            return self.sim.store.service_index(req.arg, False), (out, filtered)

        return self._read(req, compute)

    def _node_and_services(
        self, req: Request, policy: Optional[Policy]
    ) -> Tuple[Optional[Record], List[Record], bool]:
        store = self.sim.store
        node = store.node(req.arg)
        if node is None:
            return None, [], False
        if not self._can(policy, "node", node["Node"]):
            return None, [], True
        services, filtered = [], False
        for svc in store.node_service_rows(req.arg):
            if self._can(policy, "service", svc["Service"]):
                services.append(svc)
            else:
                filtered = True
        return node, services, filtered

    def catalog_node(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing node name")

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            node, services, filtered = self._node_and_services(req, policy)
            index = self.sim.store.node_index(req.arg)
            if node is None:
                return index, (None, filtered)  # unknown node: 200 with body null
            body = {
                "Node": node_json(node),
                "Services": {s["ID"]: node_service_json(s) for s in services},
            }
            return index, (body, filtered)

        return self._read(req, compute, node=req.arg)  # woken by this node's writes only

    def catalog_node_services(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing node name")

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            node, services, filtered = self._node_and_services(req, policy)
            index = self.sim.store.node_index(req.arg)
            if node is None:
                return index, ({"Node": None, "Services": None}, filtered)
            body = {"Node": node_json(node), "Services": [node_service_json(s) for s in services]}
            return index, (body, filtered)

        return self._read(req, compute, node=req.arg)

    # ------------------------------------------------------------------ health

    def health_service(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing service name")
        passing = False
        if "passing" in req.query:
            raw = req.param("passing").lower()
            if raw in ("", "1", "t", "true"):
                passing = True
            elif raw not in ("0", "f", "false"):
                raise ApiError(400, "Invalid value for ?passing")
        store = self.sim.store

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            rows, filtered = self._service_rows(req, policy)
            out = []
            for node, svc in rows:
                checks = store.checks_of(node["Node"], None) + store.checks_of(
                    node["Node"], svc["ID"]
                )
                if passing and any(c["Status"] != "passing" for c in checks):
                    continue
                out.append(
                    {
                        "Node": node_json(node),
                        "Service": node_service_json(svc),
                        "Checks": [check_json(c) for c in checks],
                    }
                )
            return store.service_index(req.arg, True), (out, filtered)

        return self._read(req, compute)

    def _visible_check(self, policy: Optional[Policy], check: Record) -> bool:
        if check.get("ServiceID"):
            return self._can(policy, "service", check["ServiceName"])
        return self._can(policy, "node", check["Node"])

    def _checks_read(self, req: Request, select: Callable[[Record], bool]) -> Response:
        store = self.sim.store

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            out, filtered = [], False
            for check in store.all_checks():
                if not select(check):
                    continue
                if not self._visible_check(policy, check):
                    filtered = True
                    continue
                out.append(check_json(check))
            return store.idx.tables["checks"], (out, filtered)

        return self._read(req, compute)

    def health_node(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing node name")
        name = req.arg.lower()
        return self._checks_read(req, lambda c: c["Node"].lower() == name)

    def health_checks(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing service name")
        name = req.arg.lower()
        return self._checks_read(req, lambda c: (c.get("ServiceName") or "").lower() == name)

    def health_state(self, req: Request) -> Response:
        state = req.arg
        if state != "any" and state not in CHECK_STATUSES:
            raise ApiError(400, "Bad check state")
        return self._checks_read(req, lambda c: state == "any" or c["Status"] == state)

    # ------------------------------------------------------------------ agent

    def _agent_policy(self, req: Request) -> Optional[Policy]:
        with self.sim.cond:
            self.sim.check_up(req.server)
            return self.sim.resolve(req.token)

    def _require(self, policy: Optional[Policy], resource: str, name: str, need: str) -> None:
        try:
            self.sim.acl.require(policy, resource, name, need)
        except PermissionDenied as exc:
            raise ApiError(403, str(exc)) from None

    def agent_self(self, req: Request) -> Response:
        sim = self.sim
        policy = self._agent_policy(req)
        node = sim.node_name(req.server)
        self._require(policy, "agent", node, "read")
        host, port = sim.addresses[req.server].rsplit(":", 1)
        dc = sim.settings.datacenter
        body = {
            "Config": {
                "Datacenter": dc,
                "PrimaryDatacenter": dc,
                "NodeName": node,
                "NodeID": sim.node_ids[req.server],
                "Revision": "consulsim",
                "Server": True,
                "Version": sim.settings.version,
                "BuildDate": "2023-11-01T00:00:00Z",
            },
            "DebugConfig": {"HTTPPort": int(port), "Datacenter": dc, "NodeName": node},
            "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
            "Member": {
                "Name": node,
                "Addr": host,
                "Port": 8301,
                "Tags": {"dc": dc, "role": "consul", "port": "8300", "vsn": "2"},
                "Status": 1,
            },
            "Stats": {
                "consul": {
                    "server": "true",
                    "leader": str(sim.topology.leader == req.server).lower(),
                }
            },
            "Meta": {"consul-network-segment": ""},
        }
        return _json_response(req, body)

    def agent_services(self, req: Request) -> Response:
        policy = self._agent_policy(req)
        with self.sim.cond:
            agent = self.sim.agents[req.server]
            out = {
                sid: agent.service_json(row)
                for sid, row in sorted(agent.services.items())
                if self._can(policy, "service", row["Service"])
            }
            return _json_response(req, out)

    def agent_checks(self, req: Request) -> Response:
        policy = self._agent_policy(req)
        with self.sim.cond:
            agent = self.sim.agents[req.server]
            out = {}
            for cid, local in sorted(agent.checks.items()):
                if self._visible_check(policy, local.row):
                    out[cid] = check_json({**local.row, "CreateIndex": 0, "ModifyIndex": 0})
            return _json_response(req, out)

    def agent_service_register(self, req: Request) -> Response:
        body = self._decode(req, decode.SERVICE_DEFINITION)
        policy = self._agent_policy(req)
        replace = "replace-existing-checks" in req.query and req.param(
            "replace-existing-checks"
        ).lower() in ("", "1", "t", "true")

        def change(agent: AgentState) -> None:
            name = body.get("Name", "")
            if name:
                self._require(policy, "service", name, "write")
                existing = agent.services.get(body.get("ID") or name)
                if existing is not None:
                    self._require(policy, "service", existing["Service"], "write")
            agent.register_service(body, replace, now=time.monotonic())

        self._agent_write(req, change)
        return Response(200, None)

    def agent_service_deregister(self, req: Request) -> Response:
        policy = self._agent_policy(req)

        def change(agent: AgentState) -> None:
            existing = agent.services.get(req.arg)
            if existing is not None:
                self._require(policy, "service", existing["Service"], "write")
            agent.deregister_service(req.arg)

        self._agent_write(req, change)
        return Response(200, None)

    def _ttl(self, status: str) -> Handler:
        def handler(req: Request) -> Response:
            return self._ttl_update(req, status, req.param("note"))

        return handler

    def agent_check_update(self, req: Request) -> Response:
        body = self._decode(req, decode.CHECK_UPDATE)
        status = body.get("Status", "")
        if status not in CHECK_STATUSES:
            raise ApiError(400, f"Invalid check status: '{status}'")
        return self._ttl_update(req, status, body.get("Output", ""))

    def _ttl_update(self, req: Request, status: str, output: str) -> Response:
        policy = self._agent_policy(req)

        def change(agent: AgentState) -> None:
            local = agent.find_check(req.arg)
            if local.row.get("ServiceID"):
                self._require(policy, "service", local.row["ServiceName"], "write")
            else:
                self._require(policy, "node", agent.node, "write")
            agent.update_ttl(req.arg, status, output, now=time.monotonic())

        self._agent_write(req, change)
        return Response(200, None)

    def _agent_write(self, req: Request, change: Callable[[AgentState], None]) -> None:
        try:
            self.sim.agent_write(req.server, change)
        except AgentError as exc:
            raise ApiError(exc.status, str(exc)) from None

    # ------------------------------------------------------------------ sessions

    def session_create(self, req: Request) -> Response:
        """``SessionCreate``: the answering agent's defaults (its own node, ``serfHealth``,
        15 s lock delay, release), the body on top (lenient: Session has its own
        UnmarshalJSON), then ``Session.Apply`` on the leader."""
        body: Record = {}
        if req.body:
            try:
                body = decode.decode_body(req.body, decode.SESSION, strict=False)
                sess = new_session_request(self.sim.node_name(req.server), body, True)
            except decode.DecodeError as exc:
                raise ApiError(400, f"Request decode failed: {exc}") from None
        else:
            sess = new_session_request(self.sim.node_name(req.server), body, False)
        sess.pop("ID", None)
        sid = self.sim.session_create(req.server, sess, req.token)
        return _json_response(req, {"ID": sid})

    def session_destroy(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing session")
        self.sim.session_destroy(req.server, req.arg, req.token)
        return _json_response(req, True)

    def session_renew(self, req: Request) -> Response:
        """``SessionRenew``: resets the leader's timer; 404 for a session it does not know."""
        if not req.arg:
            raise ApiError(400, "Missing session")
        sess = self.sim.session_renew(req.server, req.arg, req.token)
        if sess is None:
            raise ApiError(404, f"Session id '{req.arg}' not found")
        return _json_response(req, [session_json(sess)])

    def _sessions_read(self, req: Request, select: Callable[[Record], bool]) -> Response:
        store = self.sim.store

        def compute(policy: Optional[Policy]) -> Tuple[int, Tuple[Any, bool]]:
            out, filtered = [], False
            for sess in store.all_sessions():
                if not select(sess):
                    continue
                if not self._can(policy, "session", sess["Node"]):
                    filtered = True
                    continue
                out.append(session_json(sess))
            return store.idx.sessions, (out, filtered)

        return self._read(req, compute)

    def session_info(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing session")
        low = req.arg.lower()
        return self._sessions_read(req, lambda s: s["ID"].lower() == low)

    def session_node(self, req: Request) -> Response:
        if not req.arg:
            raise ApiError(400, "Missing node name")
        low = req.arg.lower()
        return self._sessions_read(req, lambda s: s["Node"].lower() == low)

    def session_list(self, req: Request) -> Response:
        return self._sessions_read(req, lambda s: True)

    # ------------------------------------------------------------------ txn

    def txn(self, req: Request) -> Response:
        """``Txn``: size and op-count limits, then ``Txn.Read`` for gets only, else
        ``Txn.Apply``; a conflict is 409 with the same JSON shape."""
        settings = self.sim.settings
        if len(req.body) > settings.txn_max_req_len:
            raise ApiError(
                413,
                f"Request body({len(req.body)} bytes) too large, max size: "
                f"{settings.txn_max_req_len} bytes. See {txn.TXN_MAX_REQ_LEN_DOC}.",
            )
        try:
            api_ops = decode.decode_body_list(req.body, decode.TXN_OP, "api.TxnOps")
        except decode.DecodeError as exc:
            raise ApiError(400, f"Failed to parse body: {exc}") from None
        limit = settings.txn_max_ops
        if len(api_ops) > limit:
            raise ApiError(
                413, f"Transaction contains too many operations ({len(api_ops)} > {limit})"
            )
        ops, writes = txn.convert_ops(api_ops, settings.datacenter)
        if writes == 0:
            status, body, meta = self.sim.txn_read(req.server, req.query, ops, req.token)
            # "Since we don't do blocking, we only add the relevant headers": no Index.
            headers = {
                "X-Consul-KnownLeader": "true" if meta.known_leader else "false",
                "X-Consul-LastContact": str(meta.last_contact_ms),
            }
            return _json_response(req, body, headers, status)
        status, body = self.sim.txn_write(req.server, ops, req.token)
        return _json_response(req, body, None, status)

    # ------------------------------------------------------------------ status

    def status_leader(self, req: Request) -> Response:
        with self.sim.cond:
            leader = self.sim.topology.leader
            address = self.sim.addresses[leader] if leader is not None else ""
        return _json_response(req, address)

    def status_peers(self, req: Request) -> Response:
        return _json_response(req, list(self.sim.addresses))
