"""The emulated cluster: one lock around the shared catalog, topology, agents and ACLs.

``Simulation`` provides what a Consul server does between HTTP parsing and the state store:
forwarding writes and default reads to the leader (waiting up to ``rpc_hold`` for one),
serving ``?stale`` reads locally, blocking queries, the leader's serf reconciliation of the
servers' ``serfHealth`` checks, and each agent's anti-entropy sync. A background ticker runs
elections, TTL expiry and periodic anti-entropy.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple, TypeVar

from . import txn
from .acl import ACL, PermissionDenied, Policy
from .agent_local import AgentState
from .catalog_rpc import RPCError, prepare_register, vet_deregister, vet_register
from .decode import DecodeError, parse_go_duration
from .sessions import SessionError, SessionTimers, ttl_seconds, validate_apply
from .state import (
    Record,
    Store,
    StoreError,
    StoreSnapshot,
    WriteResult,
    check_same,
    service_same,
)
from .stats import Stats
from .topology import Topology
from .wakeups import NodeWakeups

T = TypeVar("T")

SERF_CHECK = "serfHealth"
CONSUL_SERVICE = "consul"


class ApiError(Exception):
    """An HTTP error answer: status code and Consul's plain-text body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class ServerDown(Exception):
    """The server handling the request was stopped meanwhile: drop the connection."""


@dataclass
class Settings:
    """Cluster parameters; durations in seconds. Defaults are Consul's own."""

    servers: int = 3
    bind: str = "127.0.0.1"
    datacenter: str = "dc1"
    wait_cap: float = 600.0
    default_wait: float = 300.0
    stagger_divisor: int = 16
    election_delay: float = 2.0
    rpc_hold: float = 7.0
    ae_interval: float = 60.0
    version: str = "1.17.0"
    txn_max_ops: int = txn.MAX_OPS
    txn_max_req_len: int = txn.MAX_REQ_LEN
    session_ttl_min: float = 10.0  # Consul's session_ttl_min
    session_checks: bool = True  # False: a server older than the session check type


@dataclass
class ReadMeta:
    """Response metadata of a catalog/health read."""

    index: int
    known_leader: bool
    last_contact_ms: int
    consistency: str


class Simulation:
    """All cluster state behind one re-entrant lock and condition variable.

    Blocked reads of one node's catalog entry wait on that node's own condition (same lock)
    instead, so a write wakes only the readers whose answer it may change.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.node_wakeups = NodeWakeups(self.lock)
        self._seen_extinction = 0  # the node extinction index node readers were last woken for
        self.store = Store(settings.datacenter)
        self.topology = Topology(settings.servers, settings.election_delay)
        self.acl = ACL()
        self.stats = Stats(settings.servers)
        self.addresses: List[str] = []
        self.agents: List[AgentState] = []
        self.node_ids: List[str] = []
        self.timers = SessionTimers()
        self._timers_term: Optional[int] = None  # the term whose leader started the timers
        self.store.session_checks = settings.session_checks
        self.snapshots: List[StoreSnapshot] = []
        # Bumped by a snapshot restore: blocked reads return at once (the store is abandoned).
        self.abandoned = 0
        self._closing = False
        self._next_ae = 0.0
        self._ticker: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ setup

    def node_name(self, i: int) -> str:
        return f"consul-server-{i + 1}"

    def bootstrap(self, addresses: List[str]) -> None:
        """Register the server nodes, their ``consul`` service and ``serfHealth`` checks."""
        with self.cond:
            self.addresses = list(addresses)
            for i, address in enumerate(addresses):
                host = address.rsplit(":", 1)[0]
                node_id = str(uuid.UUID(int=random.getrandbits(128), version=4))
                self.node_ids.append(node_id)
                self.agents.append(AgentState(self.node_name(i), host, self.settings.datacenter))
                self.store.register(
                    prepare_register(
                        {
                            "ID": node_id,
                            "Node": self.node_name(i),
                            "Address": host,
                            "Datacenter": self.settings.datacenter,
                            "TaggedAddresses": self._server_tagged(host),
                            "NodeMeta": {"consul-network-segment": ""},
                            "Service": {
                                "ID": CONSUL_SERVICE,
                                "Service": CONSUL_SERVICE,
                                "Port": 8300,
                            },
                            "Checks": [self._serf_check(i, "passing")],
                        }
                    )
                )
            self._next_ae = time.monotonic() + self.settings.ae_interval
            # The cluster's own bootstrap entries are not traffic a test should count.
            self.store.writes_applied = self.store.writes_changed = 0
        self._ticker = threading.Thread(
            target=self._tick_loop, name="consulsim-ticker", daemon=True
        )
        self._ticker.start()

    def close(self) -> None:
        """Stop the ticker and release every waiting request."""
        with self.cond:
            self._closing = True
            self.wake_everyone()

    @staticmethod
    def _server_tagged(host: str) -> Dict[str, str]:
        return {"lan": host, "lan_ipv4": host, "wan": host, "wan_ipv4": host}

    def _server_node_fields(self, i: int) -> Record:
        node = self.store.node(self.node_name(i))
        assert node is not None
        return {
            "ID": node.get("ID", ""),
            "Node": node["Node"],
            "Address": node.get("Address", ""),
            "Datacenter": node.get("Datacenter", ""),
            "TaggedAddresses": node.get("TaggedAddresses"),
            "NodeMeta": node.get("Meta"),
        }

    def _serf_check(self, i: int, status: str) -> Record:
        alive = status == "passing"
        return {
            "Node": self.node_name(i),
            "CheckID": SERF_CHECK,
            "Name": "Serf Health Status",
            "Status": status,
            "Output": "Agent alive and reachable" if alive else "Agent not live or unreachable",
        }

    # ------------------------------------------------------------------ leader and RPC

    def _reconcile(self) -> None:
        now = time.monotonic()
        if self.topology.reconcile(now):
            if self.topology.leader is not None:
                self._reconcile_members()
            self.wake_everyone()
        self._sync_timers(now)

    def _sync_timers(self, now: float) -> None:
        """Session timers belong to the leader: none without one, and a new leader starts a
        fresh 2 x TTL for every session (``initializeSessionTimers``)."""
        if self.topology.leader is None:
            self.timers.clear_all()
            self._timers_term = None
        elif self._timers_term != self.topology.term:
            self.timers.clear_all()
            for sess in self.store.all_sessions():
                self.timers.reset(sess["ID"], ttl_seconds(sess), now)
            self._timers_term = self.topology.term

    def _await_leader(self, server: int) -> int:
        """Wait up to ``rpc_hold`` for a leader, as a follower's RPC forwarding does."""
        deadline = time.monotonic() + self.settings.rpc_hold
        while True:
            self.check_up(server)
            self._reconcile()
            leader = self.topology.leader
            if leader is not None:
                return leader
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError(500, "No cluster leader")
            self.cond.wait(remaining)

    @property
    def closing(self) -> bool:
        return self._closing

    def check_up(self, server: int) -> None:
        """Raise ServerDown when ``server`` was stopped (or the emulator is closing)."""
        if self._closing or not self.topology.up(server):
            raise ServerDown()

    def rpc(self, server: int, call: Callable[[], T]) -> T:
        """Run ``call`` on the leader; a follower relays its errors with Consul's prefix."""
        with self.cond:
            leader = self._await_leader(server)
            try:
                return call()
            except (RPCError, StoreError, SessionError, PermissionDenied) as exc:
                status = getattr(exc, "status", 500)
                if isinstance(exc, PermissionDenied):
                    status = 403
                text = str(exc)
                if server != leader:
                    text = f"rpc error making call: {text}"
                raise ApiError(status, text) from None

    def resolve(self, token: str) -> Optional[Policy]:
        """Resolve a token locally (agent endpoints and stale reads)."""
        try:
            return self.acl.resolve(token)
        except PermissionDenied as exc:
            raise ApiError(403, str(exc)) from None

    # ------------------------------------------------------------------ writes

    def wake_everyone(self) -> None:
        """Wake every waiter, node readers included: servers, leader or the store changed."""
        self.cond.notify_all()
        self.node_wakeups.wake_all()

    def _applied(self, result: WriteResult) -> WriteResult:
        """After a Raft apply: wake the blocked reads whose index it may have moved."""
        if result.changed:
            self.cond.notify_all()
        moved = self.store.take_moved_nodes()
        extinction = self.store.idx.node_extinction
        if extinction != self._seen_extinction:
            # An unknown node answers the node extinction index: its readers wake too.
            self._seen_extinction = extinction
            moved.update(k for k in self.node_wakeups.watched() if k not in self.store.nodes)
        self.node_wakeups.wake(moved)
        return result

    def catalog_register(self, server: int, body: Record, token: str) -> WriteResult:
        """``Catalog.Register`` through server ``server``."""

        def call() -> WriteResult:
            policy = self.acl.resolve(token)
            req = prepare_register(_without_session_names(body) if self._old_server() else body)
            vet_register(self.acl, policy, self.store, req)
            return self._applied(self.store.register(req))

        return self.rpc(server, call)

    def _old_server(self) -> bool:
        return not self.store.session_checks

    # ------------------------------------------------------------------ sessions

    def session_create(self, server: int, sess: Record, token: str) -> str:
        """``Session.Apply`` (create) through server ``server``; returns the new ID."""

        def call() -> str:
            policy = self.acl.resolve(token)
            if not sess.get("Node"):
                raise SessionError("Must provide Node")
            self.acl.require(policy, "session", sess["Node"], "write")
            validate_apply(sess, int(self.settings.session_ttl_min * 1e9))
            row = {**sess, "ID": self._new_session_id()}
            idx = self.store.begin()
            try:
                self.store.create_session(idx, row)
            except StoreError:
                self.store.abort()
                raise
            self._applied(self.store.commit())
            self.timers.reset(row["ID"], ttl_seconds(row), time.monotonic())
            return str(row["ID"])

        return self.rpc(server, call)

    def _new_session_id(self) -> str:
        while True:
            sid = str(uuid.uuid4())
            if self.store.session(sid) is None:
                return sid

    def session_destroy(self, server: int, session_id: str, token: str) -> None:
        """``Session.Apply`` (destroy): an unknown ID is answered before Raft, writing nothing."""

        def call() -> None:
            policy = self.acl.resolve(token)
            existing = self.store.session(session_id)
            if existing is None:
                return
            self.acl.require(policy, "session", existing["Node"], "write")
            idx = self.store.begin()
            self.store.destroy_session(idx, session_id)
            self._applied(self.store.commit())
            self.timers.clear(session_id)

        self.rpc(server, call)

    def session_renew(self, server: int, session_id: str, token: str) -> Optional[Record]:
        """``Session.Renew`` on the leader: resets its timer, writes nothing to Raft; None for an
        unknown session."""

        def call() -> Optional[Record]:
            policy = self.acl.resolve(token)
            sess = self.store.session(session_id)
            if sess is None:
                return None
            self.acl.require(policy, "session", sess["Node"], "write")
            self.timers.reset(sess["ID"], ttl_seconds(sess), time.monotonic())
            return sess

        return self.rpc(server, call)

    def _expire_sessions(self, now: float) -> None:
        """The leader's timers that fired: one Raft apply each (``invalidateSession``)."""
        if self.topology.leader is None:
            return
        for sid in self.timers.expired(now):
            self.timers.clear(sid)
            idx = self.store.begin()
            self.store.destroy_session(idx, sid)
            self._applied(self.store.commit())

    def set_session_checks(self, enabled: bool) -> None:
        """Serve the session check type (Consul PR #22227) or behave like an older server."""
        with self.cond:
            self.store.session_checks = enabled
            self.settings.session_checks = enabled

    # ------------------------------------------------------------------ snapshots

    def snapshot_save(self) -> int:
        """``consul snapshot save``: keep a copy of the replicated state; returns its number."""
        with self.cond:
            self.snapshots.append(self.store.save())
            return len(self.snapshots) - 1

    def snapshot_restore(self, number: int) -> None:
        """``consul snapshot restore``: the state (and every index) goes back to the snapshot,
        blocked reads are released at once, and the leader restarts its session timers."""
        with self.cond:
            if not 0 <= number < len(self.snapshots):
                raise ValueError(f"no snapshot {number}")
            self.store.restore(self.snapshots[number])
            self._timers_term = None
            self._sync_timers(time.monotonic())
            self.abandoned += 1
            self.store.take_moved_nodes()
            self._seen_extinction = self.store.idx.node_extinction
            self.wake_everyone()

    def catalog_deregister(self, server: int, body: Record, token: str) -> WriteResult:
        """``Catalog.Deregister`` through server ``server``."""

        def call() -> WriteResult:
            policy = self.acl.resolve(token)
            if not body.get("Node"):
                raise RPCError("Must provide node")
            vet_deregister(self.acl, policy, self.store, body)
            return self._applied(self.store.deregister(body))

        return self.rpc(server, call)

    # ------------------------------------------------------------------ transactions

    def txn_write(self, server: int, ops: List[txn.Op], token: str) -> Tuple[int, Record]:
        """``Txn.Apply`` through server ``server``: (200 or 409, TxnResponse JSON).

        Pre-check failures never reach Raft; a transaction the state store refuses still
        consumes a Raft index and changes nothing, like a refused catalog register.
        """

        def call() -> Tuple[int, Record]:
            policy = self.acl.resolve(token)
            errors = txn.pre_check(self.acl, policy, ops)
            if errors:
                return self._txn_answer("write", ops, None, errors)
            outcome = txn.apply(self.store, ops)
            self._applied(outcome.write)
            results = None
            if outcome.results is not None:
                results = txn.filter_results(self.acl, policy, outcome.results)
            return self._txn_answer("write", ops, results, outcome.errors)

        return self.rpc(server, call)

    def txn_read(
        self, server: int, query: Dict[str, List[str]], ops: List[txn.Op], token: str
    ) -> Tuple[int, Record, ReadMeta]:
        """``Txn.Read``: a transaction of gets only, without Raft and without blocking.

        Default and ``?consistent`` go through the leader, ``?stale`` is served locally.
        The body is a ``TxnReadResponse``, whose embedded ``QueryMeta`` fields (Index,
        LastContact in ns, KnownLeader, ...) JSON-encode next to Results and Errors.
        """
        stale, consistent = "stale" in query, "consistent" in query
        if stale and consistent:
            raise ApiError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        with self.cond:
            forwarded = False
            leader: Optional[int] = None
            if not stale:
                leader = self._await_leader(server)
                forwarded = leader != server
            try:
                policy = self.acl.resolve(token)
            except PermissionDenied as exc:
                prefix = "rpc error making call: " if forwarded else ""
                raise ApiError(403, prefix + str(exc)) from None
            errors = txn.pre_check(self.acl, policy, ops)
            results: Optional[List[Record]] = None
            filtered = False
            if not errors:
                found, errors = txn.dispatch(self.store, 0, ops)
                if not errors:
                    results = txn.filter_results(self.acl, policy, found)
                    # maskResultsFilteredByACLs: never reported to the anonymous token
                    filtered = bool(token) and len(results) != len(found)
            known = self.topology.leader is not None
            contact = (
                0
                if forwarded or server == leader
                else self.topology.last_contact_ms(time.monotonic())
            )
            status, body = self._txn_answer("read", ops, results, errors)
            body.update(
                {
                    "Index": 0,
                    "LastContact": contact * 1_000_000,
                    "KnownLeader": known,
                    "ConsistencyLevel": "",
                    "NotModified": False,
                    "Backend": 0,
                    "ResultsFilteredByACLs": filtered,
                }
            )
            consistency = "stale" if stale else ("consistent" if consistent else "leader")
            return status, body, ReadMeta(0, known, contact, consistency)

    def _txn_answer(
        self,
        kind: str,
        ops: List[txn.Op],
        results: Optional[List[Record]],
        errors: Optional[List[Record]],
    ) -> Tuple[int, Record]:
        self.stats.record_txn(kind, len(ops), conflict=bool(errors))
        if errors:
            return 409, {"Results": None, "Errors": errors}
        return 200, {"Results": results if results is not None else [], "Errors": None}

    def txn_refusal(self, server: int) -> int:
        """The status server ``server`` answers /v1/txn with instead of serving it; 0 serves."""
        with self.cond:
            return self.topology.faults[server].txn_refusal

    # ------------------------------------------------------------------ reads

    def read(
        self,
        server: int,
        query: Dict[str, List[str]],
        token: str,
        compute: Callable[[Optional[Policy]], Tuple[int, T]],
        node: Optional[str] = None,
    ) -> Tuple[ReadMeta, T]:
        """A catalog/health read with consistency modes and blocking (``index``/``wait``).

        ``node``: the read answers that node's entry and index, so while blocked it waits for
        that node's wake-ups only (and the ones every waiter gets)."""
        stale = "stale" in query
        consistent = "consistent" in query
        if stale and consistent:
            raise ApiError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        min_index, wait = _parse_wait(query)
        with self.cond:
            forwarded = False
            leader: Optional[int] = None
            if not stale:
                leader = self._await_leader(server)
                forwarded = leader != server
            try:
                policy = self.acl.resolve(token)
            except PermissionDenied as exc:
                prefix = "rpc error making call: " if forwarded else ""
                raise ApiError(403, prefix + str(exc)) from None
            index, data = compute(policy)
            if min_index > 0 and not self.topology.faults[server].no_block:
                timeout = min(
                    wait if wait > 0 else self.settings.default_wait, self.settings.wait_cap
                )
                if self.settings.stagger_divisor > 0:
                    timeout += random.uniform(0, timeout / self.settings.stagger_divisor)
                deadline = time.monotonic() + timeout
                abandoned = self.abandoned
                with self._waiting_on(node) as cond:
                    while index <= min_index:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        if cond.wait(remaining):
                            self.stats.blocked_reads_woken += 1
                        self.check_up(server)
                        index, data = compute(policy)
                        if self.abandoned != abandoned:
                            break  # a snapshot restore abandoned the state store: answer now
            now = time.monotonic()
            known = self.topology.leader is not None
            meta = ReadMeta(
                index=max(index, 1),
                known_leader=known,
                last_contact_ms=0
                if forwarded or server == leader
                else self.topology.last_contact_ms(now),
                consistency="stale" if stale else ("consistent" if consistent else "leader"),
            )
            return meta, data

    def _waiting_on(self, node: Optional[str]) -> ContextManager[threading.Condition]:
        if node is None:
            return contextlib.nullcontext(self.cond)
        return self.node_wakeups.watching(node.lower())

    # ------------------------------------------------------------------ agents

    def agent_write(self, server: int, change: Callable[[AgentState], T]) -> T:
        """Change server ``server``'s local state, then sync it if a leader is there."""
        with self.cond:
            self.check_up(server)
            result = change(self.agents[server])
            self._sync_agent(server)
            return result

    def _sync_agent(self, server: int) -> None:
        """Anti-entropy for one agent: make the catalog entries of its node match local state.

        Like Consul's ``updateSyncState``/``SyncChanges`` it writes only differences, so an
        in-sync agent costs no Raft entries; entries on its node that it does not know are
        deleted (the reason regagent must never reuse a real agent's node name).
        """
        if self.topology.leader is None or not self.topology.up(server):
            return
        agent = self.agents[server]
        node_key = agent.node.lower()
        node_fields = self._server_node_fields(server)
        for (nk, _), row in list(self.store.services.items()):
            if nk != node_key or row["ID"] == CONSUL_SERVICE:
                continue
            if row["ID"] not in agent.services:
                self._applied(self.store.deregister({"Node": agent.node, "ServiceID": row["ID"]}))
        for (nk, _), row in list(self.store.checks.items()):
            if nk != node_key or row["CheckID"] == SERF_CHECK:
                continue
            if row["CheckID"] not in agent.checks:
                self._applied(
                    self.store.deregister({"Node": agent.node, "CheckID": row["CheckID"]})
                )
        for sid, local in agent.services.items():
            stored = self.store.services.get((node_key, sid.lower()))
            wanted = dict(local)
            wanted["Node"] = agent.node
            checks = [dict(c) for c in agent.checks_for(sid)]
            in_sync = stored is not None and service_same(stored, wanted)
            for check in checks:
                check["ServiceTags"] = local.get("Tags")
                old = self.store.checks.get((node_key, check["CheckID"].lower()))
                in_sync = in_sync and old is not None and check_same(old, check)
            if not in_sync:
                req = {
                    **node_fields,
                    "SkipNodeUpdate": True,
                    "Service": dict(local),
                    "Checks": checks,
                }
                self._applied(self.store.register(prepare_register(req)))

    def _sync_all_agents(self) -> None:
        for i in range(self.settings.servers):
            self._sync_agent(i)

    # ------------------------------------------------------------------ faults

    def stop_server(self, i: int) -> None:
        """The server process dies: its port refuses, the leader marks it failed."""
        with self.cond:
            self.topology.faults[i].up = False
            self._reconcile()
            if self.topology.leader is not None:
                self._reconcile_members()
            self.wake_everyone()

    def start_server(self, i: int) -> None:
        """The server comes back with its agent state (its data_dir survived)."""
        with self.cond:
            self.topology.faults[i].up = True
            self._reconcile()
            if self.topology.leader is not None:
                self._reconcile_members()
                self._sync_agent(i)
            self.wake_everyone()

    def drop_leader(self) -> Optional[int]:
        """Make the leader step down; returns the old leader's index."""
        with self.cond:
            now = time.monotonic()
            old = self.topology.drop_leader(now)
            self._sync_timers(now)
            self.wake_everyone()
            return old

    def _reconcile_members(self) -> None:
        """Leader's serf reconciliation: ``serfHealth`` passing for live servers, else critical."""
        for i in range(self.settings.servers):
            status = "passing" if self.topology.up(i) else "critical"
            check = self.store.checks.get((self.node_name(i).lower(), SERF_CHECK.lower()))
            if check is not None and check["Status"] == status:
                continue
            req = {
                **self._server_node_fields(i),
                "SkipNodeUpdate": True,
                "Checks": [self._serf_check(i, status)],
            }
            self._applied(self.store.register(prepare_register(req)))

    # ------------------------------------------------------------------ ticker

    def _tick_loop(self) -> None:
        with self.cond:
            while not self._closing:
                now = time.monotonic()
                self._reconcile()
                for i, agent in enumerate(self.agents):
                    if self.topology.up(i) and agent.expire_ttls(now):
                        self._sync_agent(i)
                if now >= self._next_ae:
                    self._sync_all_agents()
                    self._next_ae = now + self.settings.ae_interval
                self._expire_sessions(now)
                deadlines = [self._next_ae]
                timer = self.timers.next_deadline()
                if timer is not None:
                    deadlines.append(timer)
                election = self.topology.next_deadline()
                if election is not None:
                    deadlines.append(election)
                deadlines.extend(t for t in (a.next_expiry() for a in self.agents) if t is not None)
                self.cond.wait(max(0.01, min(deadlines) - time.monotonic()))

    # ------------------------------------------------------------------ stats

    def snapshot_stats(self) -> Dict[str, Any]:
        """The stats view served by the control port."""
        with self.cond:
            return self.stats.snapshot(self)

    def reset_stats(self) -> None:
        with self.cond:
            self.stats.reset()
            self.store.writes_applied = 0
            self.store.writes_changed = 0


def _without_session_names(body: Record) -> Record:
    """What an older server's decoder keeps: its HealthCheckDefinition has no SessionName and
    decodes leniently, so the field is dropped without an error (the check's Type stays)."""
    out = dict(body)
    for key in ("Check", "Checks"):
        value = out.get(key)
        checks = [value] if key == "Check" else value
        cleaned = []
        for check in checks or []:
            kept = check
            if check is not None and "SessionName" in (check.get("Definition") or {}):
                definition = {k: v for k, v in check["Definition"].items() if k != "SessionName"}
                kept = {**check, "Definition": definition}
            cleaned.append(kept)
        if value is not None:
            out[key] = cleaned[0] if key == "Check" else cleaned
    return out


def _parse_wait(query: Dict[str, List[str]]) -> Tuple[int, float]:
    """``parseWait``: ``?wait`` is a Go duration, ``?index`` an unsigned integer."""
    wait = 0.0
    index = 0
    raw_wait = (query.get("wait") or [""])[0]
    if raw_wait:
        try:
            wait = parse_go_duration(raw_wait) / 1e9
        except DecodeError:
            raise ApiError(400, "Invalid wait time") from None
    raw_index = (query.get("index") or [""])[0]
    if raw_index:
        if not raw_index.isascii() or not raw_index.isdigit():
            raise ApiError(400, "Invalid index")
        index = int(raw_index)
    return index, wait
