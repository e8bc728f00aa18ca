"""The replicated catalog: nodes, services, checks, and Consul's index bookkeeping.

One ``Store`` stands for the Raft-replicated state that all emulated servers share. It follows
the state store's rules (consul ``agent/consul/state/catalog.go``): every accepted write
advances the Raft counter, but a row and the indexes behind it (table, per-service, per-node,
service extinction) move only when the ``IsSame`` comparisons say something changed. That is
what lets regagent's "writes only on change" be tested, and what decides whether a blocking
query wakes.

Not thread-safe by itself: the cluster holds its lock around every call.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from .decode import format_go_duration

Record = Dict[str, Any]

CHECK_STATUSES = ("passing", "warning", "critical")
# A check of this Type follows the session named by Definition.SessionName (Consul PR #22227).
SESSION_CHECK_TYPE = "session"
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_DEFAULT_WEIGHTS = {"Passing": 1, "Warning": 1}


class StoreError(Exception):
    """A write the server refuses; ``str()`` is Consul's error text (served as 500)."""


@dataclass
class Indexes:
    """Index table: Raft counter, per-table, per-service and per-node indexes."""

    raft: int = 0
    tables: Dict[str, int] = field(default_factory=lambda: {"nodes": 0, "services": 0, "checks": 0})
    service: Dict[str, int] = field(default_factory=dict)
    node: Dict[str, int] = field(default_factory=dict)
    service_extinction: int = 0
    node_extinction: int = 0
    sessions: int = 0  # the sessions table index (kept apart: the stats' "tables" are catalog)

    def bump(self, idx: int, *tables: str) -> None:
        for table in tables:
            self.tables[table] = max(self.tables[table], idx)

    def copy(self) -> Indexes:
        """An independent copy, to put back when a Raft apply is aborted."""
        return Indexes(
            self.raft,
            dict(self.tables),
            dict(self.service),
            dict(self.node),
            self.service_extinction,
            self.node_extinction,
            self.sessions,
        )


@dataclass
class StoreSnapshot:
    """The replicated tables and their indexes at one moment (``Store.save``)."""

    nodes: Dict[str, Record]
    services: Dict[Tuple[str, str], Record]
    checks: Dict[Tuple[str, str], Record]
    sessions: Dict[str, Record]
    indexes: Indexes


@dataclass
class WriteResult:
    """What one Raft apply did: its index and whether any row changed."""

    index: int
    changed: bool


def validate_meta(meta: Optional[Dict[str, str]]) -> Optional[str]:
    """Consul's ``validateMetadata`` for service meta; returns the error text or None."""
    if not meta:
        return None
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        reason = None
        if key == "":
            reason = "Key cannot be blank"
        elif not _META_KEY.match(key):
            reason = "Key contains invalid characters"
        elif len(key) > 128:
            reason = "Key is too long (limit: 128 characters)"
        elif key.startswith("consul-"):
            reason = "Key prefix 'consul-' is reserved for internal use"
        elif len(value) > 512:
            reason = "Value is too long (limit: 512 characters)"
        if reason:
            return f"Couldn't load metadata pair('{key}', '{value}'): {reason}"
    return None


def valid_weights(weights: Optional[Dict[str, int]]) -> Dict[str, int]:
    """``ToServiceNode``: missing or invalid weights become the default {1, 1}."""
    if not weights or weights.get("Passing", 0) < 1 or weights.get("Warning", 0) < 0:
        return dict(_DEFAULT_WEIGHTS)
    return {"Passing": weights.get("Passing", 0), "Warning": weights.get("Warning", 0)}


def session_check_ids(sess: Record) -> List[str]:
    """``Session.CheckIDs``: NodeChecks, ServiceChecks' IDs and the deprecated Checks, merged."""
    ids: List[str] = list(sess.get("NodeChecks") or [])
    ids += [c.get("ID", "") for c in sess.get("ServiceChecks") or []]
    ids += [c for c in sess.get("Checks") or [] if c not in ids]
    return ids


def check_type(definition: Record) -> str:
    """``CheckType.Type()`` derived from a check Definition (``http``, ``ttl``, ...)."""
    interval = definition.get("Interval", 0) > 0
    if definition.get("GRPC") and interval:
        return "grpc"
    if definition.get("HTTP") and interval:
        return "http"
    if definition.get("TTL", 0) > 0:
        return "ttl"
    for key, name in (("TCP", "tcp"), ("UDP", "udp")):
        if definition.get(key) and interval:
            return name
    if definition.get("AliasNode") or definition.get("AliasService"):
        return "alias"
    if definition.get("ScriptArgs"):
        return "docker" if definition.get("DockerContainerID") else "script"
    if definition.get("H2PING") and interval:
        return "h2ping"
    if definition.get("OSService") and interval:
        return "os_service"
    return ""


def _norm_definition(definition: Optional[Record]) -> Record:
    """Definition as Go's DeepEqual sees it: zero scalars dropped, nil vs empty kept."""
    return {
        k: v
        for k, v in (definition or {}).items()
        if v is not None and not (isinstance(v, (str, int, bool)) and not v)
    }


def definition_json(definition: Optional[Record]) -> Record:
    """Definition rendered like ``HealthCheckDefinition.MarshalJSON`` (omitempty, durations)."""
    out: Record = {}
    for key, value in (definition or {}).items():
        if not value:
            continue
        if key in ("Interval", "Timeout", "DeregisterCriticalServiceAfter", "TTL"):
            out[key] = format_go_duration(value)
        else:
            out[key] = value
    return out


_RAFT_FIELDS = ("CreateIndex", "ModifyIndex")
_NODE_FIELDS = ("ID", "Address", "Datacenter", "TaggedAddresses", "Meta")
_SERVICE_FIELDS = (
    "Kind",
    "ID",
    "Service",
    "Tags",
    "Address",
    "TaggedAddresses",
    "Meta",
    "Port",
    "SocketPath",
    "Weights",
    "EnableTagOverride",
    "Proxy",
    "Connect",
    "Locality",
    "Node",
)
_CHECK_FIELDS = (
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "ServiceName",
    "ServiceTags",
    "PeerName",
)


def _opaque(value: Any) -> Any:
    """Proxy/Connect are value structs in Go: absent and all-zero compare equal."""
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v not in (None, "", 0, False, {}, [])}
    return value or {}


def service_same(old: Record, new: Record) -> bool:
    """``NodeService.IsSame`` / ``ServiceNode.IsSameService`` after default weights."""
    for name in _SERVICE_FIELDS:
        a, b = old.get(name), new.get(name)
        if name in ("Proxy", "Connect"):
            a, b = _opaque(a), _opaque(b)
        elif name in ("Port",):
            a, b = a or 0, b or 0
        elif name in ("Kind", "Address", "SocketPath"):
            a, b = a or "", b or ""
        elif name == "EnableTagOverride":
            a, b = bool(a), bool(b)
        if a != b:
            return False
    return True


def check_same(old: Record, new: Record) -> bool:
    """``HealthCheck.IsSame``: Type, Interval and Timeout are deliberately not compared."""
    if old["Node"].lower() != new["Node"].lower():
        return False
    for name in _CHECK_FIELDS:
        a, b = old.get(name), new.get(name)
        if name != "ServiceTags":
            a, b = a or "", b or ""
        if a != b:
            return False
    return _norm_definition(old.get("Definition")) == _norm_definition(new.get("Definition"))


def node_same(old: Record, new: Record) -> bool:
    """``Node.IsSame`` (and ``ChangesNode``): names compare case-insensitively."""
    if old["Node"].lower() != new["Node"].lower():
        return False
    return all(
        (old.get(k) or "") == (new.get(k) or "") for k in ("ID", "Address", "Datacenter")
    ) and all(old.get(k) == new.get(k) for k in ("TaggedAddresses", "Meta"))


def node_from_request(req: Record) -> Record:
    """The ``structs.Node`` a RegisterRequest describes."""
    return {
        "ID": req.get("ID", ""),
        "Node": req["Node"],
        "Address": req.get("Address", ""),
        "Datacenter": req.get("Datacenter", ""),
        "TaggedAddresses": req.get("TaggedAddresses"),
        "Meta": req.get("NodeMeta"),
    }


@dataclass
class _Journal:
    """Undo log of one Raft apply: rows as they were, and the index table before it."""

    index: int
    indexes: Indexes
    rows: List[Tuple[Dict[Any, Record], Any, Optional[Record]]] = field(default_factory=list)
    changed: bool = False


class Store:
    """Catalog tables keyed case-insensitively, plus the index table.

    Every write runs between ``begin()`` and ``commit()``/``abort()``, like one memdb write
    transaction of the FSM: rows change in place as the apply proceeds (so a later operation
    of a ``/v1/txn`` sees an earlier one), and ``abort()`` puts back every row and index the
    apply touched. The Raft index it consumed stays consumed, as in Consul.
    """

    def __init__(self, datacenter: str) -> None:
        self.datacenter = datacenter
        self.nodes: Dict[str, Record] = {}
        self.services: Dict[Tuple[str, str], Record] = {}
        self.checks: Dict[Tuple[str, str], Record] = {}
        self.sessions: Dict[str, Record] = {}
        # False: an "older server" without the session check type (Consul PR #22227).
        self.session_checks = True
        self.idx = Indexes()
        self.writes_applied = 0
        self.writes_changed = 0
        self._journal: Optional[_Journal] = None
        # Nodes whose node.<name> index was set or dropped since the cluster last looked
        # (``take_moved_nodes``): only their blocked node reads need waking.
        self._moved_nodes: Set[str] = set()

    # ------------------------------------------------------------------ raft

    def next_index(self) -> int:
        """Append one entry to the (emulated) Raft log; every accepted write does this."""
        self.idx.raft += 1
        self.writes_applied += 1
        return self.idx.raft

    def begin(self) -> int:
        """Start one Raft apply: consume an index and open the undo log; returns the index."""
        assert self._journal is None, "nested Raft apply"
        idx = self.next_index()
        self._journal = _Journal(idx, self.idx.copy())
        return idx

    def commit(self) -> WriteResult:
        """Keep what the apply wrote; count it as a changing write if a row moved."""
        journal = self._take_journal()
        if journal.changed:
            self.writes_changed += 1
        return WriteResult(journal.index, journal.changed)

    def abort(self) -> WriteResult:
        """Undo every row and index change of the apply (its Raft index stays used)."""
        journal = self._take_journal()
        for table, key, old in reversed(journal.rows):
            if old is None:
                table.pop(key, None)
            else:
                table[key] = old
        raft = self.idx.raft
        self.idx = journal.indexes
        self.idx.raft = raft
        return WriteResult(journal.index, False)

    def _take_journal(self) -> _Journal:
        journal, self._journal = self._journal, None
        assert journal is not None, "no Raft apply in progress"
        return journal

    def _put(self, table: Dict[Any, Record], key: Any, row: Record) -> None:
        assert self._journal is not None, "writes happen inside begin()/commit()"
        self._journal.rows.append((table, key, table.get(key)))
        self._journal.changed = True
        table[key] = row

    def _drop(self, table: Dict[Any, Record], key: Any) -> Optional[Record]:
        assert self._journal is not None, "writes happen inside begin()/commit()"
        row = table.pop(key, None)
        if row is not None:
            self._journal.rows.append((table, key, row))
            self._journal.changed = True
        return row

    # ------------------------------------------------------------------ helpers

    def _services_on(self, node_key: str) -> List[Record]:
        return [svc for (nk, _), svc in self.services.items() if nk == node_key]

    def _service_exists(self, name: str) -> bool:
        low = name.lower()
        return any(svc["Service"].lower() == low for svc in self.services.values())

    def _bump_service(self, idx: int, name: str) -> None:
        self.idx.service[name.lower()] = max(self.idx.service.get(name.lower(), 0), idx)

    def _bump_node_services(self, idx: int, node_key: str) -> None:
        for svc in self._services_on(node_key):
            self._bump_service(idx, svc["Service"])

    def _bump_node(self, idx: int, node_key: str) -> None:
        self.idx.node[node_key] = max(self.idx.node.get(node_key, 0), idx)
        self._moved_nodes.add(node_key)

    def take_moved_nodes(self) -> Set[str]:
        """The node keys whose index moved since the last call (an aborted apply may leave
        one in that did not: waking its readers for nothing is harmless)."""
        moved, self._moved_nodes = self._moved_nodes, set()
        return moved

    def _service_gone(self, idx: int, name: str) -> None:
        """After a service row is removed: bump its index, or mark it extinct."""
        if self._service_exists(name):
            self._bump_service(idx, name)
        else:
            self.idx.service.pop(name.lower(), None)
            self.idx.service_extinction = idx

    # ------------------------------------------------------------------ one object each

    def ensure_node(self, idx: int, node: Record) -> Record:
        """``ensureNodeTxn``: write the node unless ``Node.IsSame`` holds; returns the row.

        The node is replaced as a whole: a request without Meta stores a nil Meta.
        """
        key = node["Node"].lower()
        existing = self.nodes.get(key)
        if existing is not None and node_same(existing, node):
            return existing
        row = {name: node.get(name) for name in ("ID", "Address", "Datacenter")}
        row = {k: v or "" for k, v in row.items()}
        row.update(
            {
                "Node": node["Node"],
                "TaggedAddresses": copy.deepcopy(node.get("TaggedAddresses")),
                "Meta": copy.deepcopy(node.get("Meta")),
                "CreateIndex": existing["CreateIndex"] if existing else idx,
                "ModifyIndex": idx,
            }
        )
        self._put(self.nodes, key, row)
        self.idx.bump(idx, "nodes")
        self._bump_node(idx, key)
        self._bump_node_services(idx, key)
        return row

    def ensure_service(self, idx: int, node: str, service: Record) -> Record:
        """``ensureServiceTxn``: Meta is validated, the node must exist, and the row is
        written unless ``IsSameService`` holds after default weights; returns the row."""
        sid = service.get("ID", "")
        problem = validate_meta(service.get("Meta"))
        if problem:
            raise StoreError(f"Invalid Service Meta for node {node} and serviceID {sid}: {problem}")
        node_key = node.lower()
        if node_key not in self.nodes:
            raise StoreError("Missing node registration")
        row = {k: copy.deepcopy(v) for k, v in service.items() if k not in _RAFT_FIELDS}
        row["Node"] = node
        row["Weights"] = valid_weights(service.get("Weights"))
        old = self.services.get((node_key, sid.lower()))
        if old is not None and service_same(old, row):
            return old
        row["CreateIndex"] = old["CreateIndex"] if old else idx
        row["ModifyIndex"] = idx
        self._put(self.services, (node_key, sid.lower()), row)
        self.idx.bump(idx, "services", "nodes")
        self._bump_node(idx, node_key)
        self._bump_service(idx, row["Service"])
        if old is not None and old["Service"] != row["Service"]:
            self._service_gone(idx, old["Service"])
        return row

    def ensure_check(self, idx: int, check: Record) -> Record:
        """``ensureCheckTxn``: empty Status becomes critical, the node (and the service of a
        service check) must exist, ServiceName/ServiceTags come from the stored service, and
        the row is written unless ``HealthCheck.IsSame`` holds; returns the row."""
        row = {k: copy.deepcopy(v) for k, v in check.items() if k not in _RAFT_FIELDS}
        if not row.get("Status"):
            row["Status"] = "critical"  # ensureCheckTxn: an empty Status resets to critical
        node_key = row["Node"].lower()
        if node_key not in self.nodes:
            raise StoreError("Missing node registration")
        sid = row.get("ServiceID") or ""
        if sid:
            owner = self.services.get((node_key, sid.lower()))
            if owner is None:
                raise StoreError("Missing service registration")
            row["ServiceName"] = owner["Service"]
            row["ServiceTags"] = copy.deepcopy(owner.get("Tags"))
        key = (node_key, row["CheckID"].lower())
        old = self.checks.get(key)
        if row["Status"] == "critical":
            # ensureCheckTxn deletes the sessions mapped to a critical check before it looks at
            # IsSame, so even a no-op critical write invalidates them.
            self._invalidate_sessions_of_check(idx, node_key, row["CheckID"])
        if old is not None and check_same(old, row):
            return old
        row["CreateIndex"] = old["CreateIndex"] if old else idx
        row["ModifyIndex"] = idx
        self._put(self.checks, key, row)
        # catalogInsertCheck moves only the checks indexes (and the services' below): never the
        # per-node index behind /v1/catalog/node, which shows no checks.
        self.idx.bump(idx, "checks")
        if sid:
            self._bump_service(idx, row["ServiceName"])
        else:
            self._bump_node_services(idx, node_key)
        return row

    def delete_check(self, idx: int, node: str, check_id: str) -> bool:
        """``deleteCheckTxn``: True when a row was removed; an absent check is a no-op."""
        node_key = node.lower()
        row = self._drop(self.checks, (node_key, check_id.lower()))
        if row is None:
            return False
        self._invalidate_sessions_of_check(idx, node_key, row["CheckID"])
        self.idx.bump(idx, "checks")
        if row.get("ServiceID"):
            self._bump_service(idx, row["ServiceName"])
        else:
            self._bump_node_services(idx, node_key)
        return True

    def delete_service(self, idx: int, node: str, service_id: str) -> bool:
        """``deleteServiceTxn``: removes the service and its checks; absent is a no-op."""
        node_key = node.lower()
        row = self._drop(self.services, (node_key, service_id.lower()))
        if row is None:
            return False
        for key, check in list(self.checks.items()):
            if key[0] == node_key and (check.get("ServiceID") or "").lower() == service_id.lower():
                # deleteServiceTxn deletes them through deleteCheckTxn: "This will invalidate
                # sessions as necessary."
                self._drop(self.checks, key)
                self._invalidate_sessions_of_check(idx, node_key, check["CheckID"])
                self.idx.bump(idx, "checks")
        self.idx.bump(idx, "services", "nodes")
        self._bump_node(idx, node_key)
        self._service_gone(idx, row["Service"])
        return True

    def delete_node(self, idx: int, node: str) -> bool:
        """``deleteNodeTxn``: removes the node, its services and checks; absent is a no-op."""
        node_key = node.lower()
        if node_key not in self.nodes:
            return False
        for svc in self._services_on(node_key):
            self.delete_service(idx, node_key, svc["ID"])
        for key in [k for k in self.checks if k[0] == node_key]:
            row = self._drop(self.checks, key)
            if row is not None:
                self._invalidate_sessions_of_check(idx, node_key, row["CheckID"])
            self.idx.bump(idx, "checks")
        self._drop(self.nodes, node_key)
        # The node.<name> index entry goes with the node; the node extinction index is what a
        # read of the now unknown node answers, so a blocking reader of it wakes.
        self.idx.node.pop(node_key, None)
        self._moved_nodes.add(node_key)
        self.idx.node_extinction = idx
        self.idx.bump(idx, "nodes")
        # "Invalidate any sessions for this node."
        for sess in [r for r in self.sessions.values() if r["Node"].lower() == node_key]:
            self._delete_session(idx, sess)
        return True

    # ------------------------------------------------------------------ sessions

    def create_session(self, idx: int, sess: Record) -> Record:
        """``sessionCreateTxn``: the node must exist, and every check the session names must
        exist on it and not be critical; then the session is stored (Raft state) and, on a
        server with session checks, the node's ``session`` checks of that name turn passing.

        A critical ``session`` check of the session's own name does not refuse the session:
        consul-esm lists that very check in its session's NodeChecks while it starts critical
        (inferred, see the README's "Sessions" section).
        """
        node_key = sess["Node"].lower()
        if node_key not in self.nodes:
            raise StoreError("Missing node registration")
        for check_id in session_check_ids(sess):
            check = self.checks.get((node_key, check_id.lower()))
            if check is None:
                raise StoreError(f"Missing check '{check_id}' registration")
            if check["Status"] == "critical" and not self._follows(check, sess):
                raise StoreError(f"Check '{check_id}' is in critical state")
        row = copy.deepcopy(sess)
        row["CreateIndex"] = row["ModifyIndex"] = idx
        self._put(self.sessions, row["ID"].lower(), row)
        self.idx.sessions = max(self.idx.sessions, idx)
        self._set_session_checks(idx, row, "passing")
        return row

    def destroy_session(self, idx: int, session_id: str) -> bool:
        """``deleteSessionTxn`` through a destroy or a TTL expiry; an absent session is a no-op."""
        sess = self.sessions.get(session_id.lower())
        if sess is None:
            return False
        self._delete_session(idx, sess)
        return True

    def session(self, session_id: str) -> Optional[Record]:
        return self.sessions.get(session_id.lower())

    def all_sessions(self) -> List[Record]:
        """Sessions in ID order, like the ``sessions`` table."""
        return [self.sessions[k] for k in sorted(self.sessions)]

    def _follows(self, check: Record, sess: Record) -> bool:
        """A ``session`` check on the session's node naming this session (PR #22227)."""
        return (
            self.session_checks
            and check.get("Type") == SESSION_CHECK_TYPE
            and check["Node"].lower() == sess["Node"].lower()
            and (check.get("Definition") or {}).get("SessionName") == sess.get("Name")
            and bool(sess.get("Name"))
        )

    def _set_session_checks(self, idx: int, sess: Record, status: str) -> None:
        """Turn the node's ``session`` checks of this session's name to ``status``, through the
        ordinary check write (so indexes move and blocking health readers wake)."""
        if not self.session_checks:
            return
        node_key = sess["Node"].lower()
        for key in sorted(self.checks):
            check = self.checks.get(key)
            if check is None or key[0] != node_key or not self._follows(check, sess):
                continue
            if check["Status"] != status:
                self.ensure_check(idx, {**check, "Status": status})

    def _delete_session(self, idx: int, sess: Record) -> None:
        """Remove a session (it releases no KV here: the emulator has no KV) and mark its
        ``session`` checks critical."""
        if self._drop(self.sessions, sess["ID"].lower()) is None:
            return
        self.idx.sessions = max(self.idx.sessions, idx)
        if self.nodes.get(sess["Node"].lower()) is not None:
            self._set_session_checks(idx, sess, "critical")

    def _invalidate_sessions_of_check(self, idx: int, node_key: str, check_id: str) -> None:
        """Sessions that name this check (``session_checks`` table) are invalidated."""
        low = check_id.lower()
        for sess in list(self.sessions.values()):
            if sess["Node"].lower() != node_key:
                continue
            if low in (c.lower() for c in session_check_ids(sess)):
                self._delete_session(idx, sess)

    # ------------------------------------------------------------------ catalog RPCs

    def changes_node(self, req: Record) -> bool:
        """``RegisterRequest.ChangesNode``: a new node, or different node fields."""
        existing = self.nodes.get(req["Node"].lower())
        if existing is None:
            return True
        return not req.get("SkipNodeUpdate") and not node_same(existing, node_from_request(req))

    def register(self, req: Record) -> WriteResult:
        """FSM apply of a (pre-validated) RegisterRequest: ``ensureRegistrationTxn`` over
        the same per-object functions ``/v1/txn`` uses; atomic, raises StoreError."""
        idx = self.begin()
        try:
            self._register(idx, req)
        except StoreError:
            self.abort()
            raise
        return self.commit()

    def _register(self, idx: int, req: Record) -> None:
        node = req["Node"]
        node_key = node.lower()
        existed = node_key in self.nodes
        if self.changes_node(req):
            self.ensure_node(
                idx,
                {**node_from_request(req), "Datacenter": req.get("Datacenter", self.datacenter)},
            )
        if req.get("Service") is not None:
            self.ensure_service(idx, node, req["Service"])
        for check in req.get("Checks") or []:
            sid = check.get("ServiceID") or ""
            if sid and not existed and (node_key, sid.lower()) not in self.services:
                raise StoreError(
                    f"Unknown service ID '{sid}' for check ID '{check.get('CheckID', '')}'"
                )
            try:
                self.ensure_check(idx, check)
            except StoreError as exc:
                raise StoreError(f'failed inserting check on node "{node}": {exc}') from None

    def deregister(self, req: Record) -> WriteResult:
        """FSM apply of a DeregisterRequest; a missing target is a silent no-op."""
        idx = self.begin()
        if req.get("ServiceID"):
            self.delete_service(idx, req["Node"], req["ServiceID"])
        elif req.get("CheckID"):
            self.delete_check(idx, req["Node"], req["CheckID"])
        else:
            self.delete_node(idx, req["Node"])
        return self.commit()

    # ------------------------------------------------------------------ reads

    def service_index(self, name: str, with_checks: bool) -> int:
        """``maxIndexAndWatchChForService``: per-service index, else extinction, else tables."""
        exists = self._service_exists(name)
        if not exists and self.idx.service_extinction:
            return self.idx.service_extinction
        if name.lower() in self.idx.service:
            return self.idx.service[name.lower()]
        tables = ["nodes", "services"] + (["checks"] if with_checks else [])
        return max(self.idx.tables[t] for t in tables)

    def node_index(self, node: str) -> int:
        """``nodeServices`` since Consul PR #12399: the node's own ``node.<name>`` index, which
        node and service writes on that node move and check writes do not. An unknown node
        answers the node extinction index (names shorter than ``minUUIDLookupLen`` = 2: 0)."""
        if node.lower() not in self.nodes:
            if len(node) < 2:
                return 0  # served as 1: X-Consul-Index is never 0
            return self.idx.node_extinction
        return self.idx.node.get(node.lower(), 0)

    def node(self, name: str) -> Optional[Record]:
        return self.nodes.get(name.lower())

    def node_by_id(self, node_id: str) -> Optional[Record]:
        """``getNodeIDTxn``: IDs are UUIDs, compared case-insensitively."""
        low = node_id.lower()
        return next((n for n in self.nodes.values() if (n.get("ID") or "").lower() == low), None)

    def all_nodes(self) -> List[Record]:
        return [self.nodes[k] for k in sorted(self.nodes)]

    def service_rows(self, name: Optional[str] = None) -> List[Tuple[Record, Record]]:
        """(node, service) pairs, optionally for one service name, in Consul's ID order."""
        out = []
        for key in sorted(self.services):
            svc = self.services[key]
            if name is None or svc["Service"].lower() == name.lower():
                out.append((self.nodes[key[0]], svc))
        return out

    def node_service_rows(self, node: str) -> List[Record]:
        return [self.services[k] for k in sorted(self.services) if k[0] == node.lower()]

    def checks_of(self, node: str, service_id: Optional[str]) -> List[Record]:
        """Node-level checks (``service_id`` None or "") or one service's checks, sorted."""
        out = []
        for key in sorted(self.checks):
            row = self.checks[key]
            if key[0] != node.lower():
                continue
            if (row.get("ServiceID") or "").lower() == (service_id or "").lower():
                out.append(row)
        return out

    def all_checks(self) -> Iterable[Record]:
        return [self.checks[k] for k in sorted(self.checks)]

    def snapshot(self) -> Dict[str, Any]:
        """Indexes for the stats view."""
        return {
            "raft": self.idx.raft,
            "tables": dict(self.idx.tables),
            "service": dict(sorted(self.idx.service.items())),
            "node": dict(sorted(self.idx.node.items())),
            "service_extinction": self.idx.service_extinction,
            "node_extinction": self.idx.node_extinction,
            "sessions": self.idx.sessions,
        }

    def save(self) -> StoreSnapshot:
        """A copy of the replicated state, as ``consul snapshot save`` takes it."""
        return StoreSnapshot(
            copy.deepcopy(self.nodes),
            copy.deepcopy(self.services),
            copy.deepcopy(self.checks),
            copy.deepcopy(self.sessions),
            self.idx.copy(),
        )

    def restore(self, snap: StoreSnapshot) -> None:
        """``consul snapshot restore``: the tables and their indexes become the snapshot's (so
        every index may go backwards); the Raft log goes on from where it is."""
        assert self._journal is None, "restore inside a Raft apply"
        raft = self.idx.raft
        self.nodes = copy.deepcopy(snap.nodes)
        self.services = copy.deepcopy(snap.services)
        self.checks = copy.deepcopy(snap.checks)
        self.sessions = copy.deepcopy(snap.sessions)
        self.idx = snap.indexes.copy()
        self.idx.raft = raft


# ---------------------------------------------------------------------- JSON shapes


def node_json(node: Record) -> Record:
    """``structs.Node`` as the HTTP API renders it."""
    return {
        "ID": node.get("ID", ""),
        "Node": node["Node"],
        "Address": node.get("Address", ""),
        "Datacenter": node.get("Datacenter", ""),
        "TaggedAddresses": node.get("TaggedAddresses"),
        "Meta": node.get("Meta"),
        "CreateIndex": node["CreateIndex"],
        "ModifyIndex": node["ModifyIndex"],
    }


def _tags(tags: Optional[List[str]], nil_as_empty: bool) -> Optional[List[str]]:
    if tags is None:
        return [] if nil_as_empty else None
    return list(tags)


_ZERO_PROXY = {"Mode": "", "MeshGateway": {}, "Expose": {}}


def node_service_json(svc: Record, *, nil_as_empty: bool = True) -> Record:
    """``structs.NodeService`` JSON. Meta is rendered as stored (nil stays null); nil Tags
    become [] as the catalog/health handlers rewrite them ("Use empty list instead of nil"),
    unless ``nil_as_empty`` is False (``/v1/txn`` results carry no such rewrite)."""
    out: Record = {}
    if svc.get("Kind"):
        out["Kind"] = svc["Kind"]
    out.update(
        {
            "ID": svc["ID"],
            "Service": svc["Service"],
            "Tags": _tags(svc.get("Tags"), nil_as_empty),
            "Address": svc.get("Address", ""),
        }
    )
    if svc.get("TaggedAddresses"):
        out["TaggedAddresses"] = svc["TaggedAddresses"]
    out["Meta"] = svc.get("Meta")
    if svc.get("Port"):
        out["Port"] = svc["Port"]
    if svc.get("SocketPath"):
        out["SocketPath"] = svc["SocketPath"]
    out.update(
        {
            "Weights": svc["Weights"],
            "EnableTagOverride": bool(svc.get("EnableTagOverride")),
            "Proxy": {**_ZERO_PROXY, **(svc.get("Proxy") or {})},
            "Connect": svc.get("Connect") or {},
            "PeerName": "",
            "CreateIndex": svc["CreateIndex"],
            "ModifyIndex": svc["ModifyIndex"],
        }
    )
    del out["PeerName"]  # omitempty, and always empty here
    return out


def service_node_json(node: Record, svc: Record) -> Record:
    """``structs.ServiceNode`` (``/v1/catalog/service``): node fields plus Service* fields."""
    out = {
        "ID": node.get("ID", ""),
        "Node": node["Node"],
        "Address": node.get("Address", ""),
        "Datacenter": node.get("Datacenter", ""),
        "TaggedAddresses": node.get("TaggedAddresses"),
        "NodeMeta": node.get("Meta"),
        "ServiceKind": svc.get("Kind", ""),
        "ServiceID": svc["ID"],
        "ServiceName": svc["Service"],
        "ServiceTags": list(svc.get("Tags") or []),
        "ServiceAddress": svc.get("Address", ""),
        "ServiceWeights": svc["Weights"],
        # ServiceNode.PartialClone (state.parseServiceNodes) copies Meta into a fresh map
        # and Tags into a fresh slice: never null here, whatever is stored.
        "ServiceMeta": dict(svc.get("Meta") or {}),
        "ServicePort": svc.get("Port", 0),
        "ServiceEnableTagOverride": bool(svc.get("EnableTagOverride")),
        "ServiceProxy": {**_ZERO_PROXY, **(svc.get("Proxy") or {})},
        "ServiceConnect": svc.get("Connect") or {},
        "CreateIndex": svc["CreateIndex"],
        "ModifyIndex": svc["ModifyIndex"],
    }
    if svc.get("TaggedAddresses"):
        out["ServiceTaggedAddresses"] = svc["TaggedAddresses"]
    return out


def check_json(check: Record, *, nil_as_empty: bool = True) -> Record:
    """``structs.HealthCheck`` JSON; nil ServiceTags become [] as the health handlers
    rewrite them, unless ``nil_as_empty`` is False (``/v1/txn`` results)."""
    out: Record = {
        "Node": check["Node"],
        "CheckID": check["CheckID"],
        "Name": check.get("Name", ""),
        "Status": check["Status"],
        "Notes": check.get("Notes", ""),
        "Output": check.get("Output", ""),
        "ServiceID": check.get("ServiceID", ""),
        "ServiceName": check.get("ServiceName", ""),
        "ServiceTags": _tags(check.get("ServiceTags"), nil_as_empty),
        "Type": check.get("Type", ""),
    }
    for key in ("Interval", "Timeout"):
        if check.get(key):
            out[key] = check[key]
    out["ExposedPort"] = check.get("ExposedPort", 0)
    out["Definition"] = definition_json(check.get("Definition"))
    out["CreateIndex"] = check["CreateIndex"]
    out["ModifyIndex"] = check["ModifyIndex"]
    return out


def aggregated_status(checks: List[Record]) -> str:
    """``HealthChecks.AggregatedStatus``: maintenance > critical > warning > passing."""
    seen = set()
    for check in checks:
        cid = check["CheckID"]
        if cid == "_node_maintenance" or cid.startswith("_service_maintenance:"):
            seen.add("maintenance")
            continue
        if check["Status"] not in CHECK_STATUSES:
            return ""
        seen.add(check["Status"])
    for status in ("maintenance", "critical", "warning"):
        if status in seen:
            return status
    return "passing"
