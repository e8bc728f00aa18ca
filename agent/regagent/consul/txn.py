"""Catalog writes as `/v1/txn` transactions: a host's node, services and checks in as few
requests as possible (design decision 14), with single catalog writes as the fallback.

Layout (consul-api.md section 9):
- a plan becomes *units*, one per logical write the cycle report counts (node, register, update,
  status, deregister); a unit's ops always travel in the same transaction (a service and its
  check), and each unit also knows its single catalog request, for the fallback;
- units are packed in plan order into transactions of at most `TXN_MAX_OPS` (64) ops, which every
  Consul since 1.4 accepts (128 only since 1.14); the node's op, when there is one, is first;
- bodies are canonical (sorted keys, ops in plan order): an identical plan gives byte-identical
  requests, and an empty plan gives none, so steady state stays at zero writes;
- `Service` names on every service op (deletes included) and `ServiceName` on every check op
  (Consul's ACL pre-check uses the client-sent name; 2.0.x requires it); a service whose name
  changes is deleted and re-created in the same transaction, never renamed under its ID (2.0.x
  refuses that); no check `Definition` (a txn keeps only some of its fields, and Consul never runs
  catalog checks anyway); `Meta` always a dict and `Tags` always a list (the planner reads
  null and empty alike, so a null in a later read is no change).

A 409 lists every failing op by `OpIndex` (results do not line up with ops, errors do): the error
names the op and its service, the failing units are skipped, and the rest is sent once more, so
one refused service does not hold back the others (as with single writes). A cluster that does not
serve `/v1/txn` (404/405 from an old Consul, a proxy's 403) is found out once per process
(`ServerPool.capabilities`), logged once, and gets single catalog writes from then on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import structlog

from regagent.consul.answers import UnexpectedAnswer, one_line
from regagent.consul.http import (
    WriteRequest,
    canonical_json,
    checked_response,
    first_failure,
    put_raw,
    send_all,
)
from regagent.consul.pool import ServerPool
from regagent.consul.registrar import ApplyOutcome
from regagent.errors import ConsulRefused, NodeVanished, RegagentError

log = structlog.get_logger(__name__)

TXN_MAX_OPS = 64
TXN_PATH = "/v1/txn"
CAPABILITY = "txn"

Op = Dict[str, Any]


@dataclass(frozen=True)
class Unit:
    """One logical write: its txn ops, and its single catalog request for the fallback."""

    what: str
    kind: str
    ops: Tuple[Op, ...]
    single: WriteRequest


@dataclass(frozen=True)
class Transaction:
    """One `PUT /v1/txn`."""

    units: Tuple[Unit, ...]

    @property
    def ops(self) -> List[Op]:
        return [op for unit in self.units for op in unit.ops]

    @property
    def body(self) -> str:
        return canonical_json(self.ops)

    def unit_of(self, op_index: int) -> Optional[Unit]:
        """The unit the op at `op_index` (Consul's `OpIndex`, 0-based) belongs to."""
        position = 0
        for unit in self.units:
            position += len(unit.ops)
            if op_index < position:
                return unit
        return None


def batches(units: Sequence[Unit], max_ops: int = TXN_MAX_OPS) -> List[Transaction]:
    """Units packed in order into transactions of at most `max_ops` ops."""
    out: List[Transaction] = []
    current: List[Unit] = []
    size = 0
    for unit in units:
        if current and size + len(unit.ops) > max_ops:
            out.append(Transaction(tuple(current)))
            current, size = [], 0
        current.append(unit)
        size += len(unit.ops)
    if current:
        out.append(Transaction(tuple(current)))
    return out


@dataclass(frozen=True)
class TxnAnswer:
    """What a server said to one transaction: applied, refused per op (409), or no txn here."""

    status: int
    errors: Tuple[Tuple[int, str], ...] = ()

    @property
    def unsupported(self) -> bool:
        return self.status not in (200, 409)


def _is_acl_refusal(body: str) -> bool:
    # Consul's own 403s: "ACL not found", "Permission denied", "rpc error making call: ...".
    return any(text in body for text in ("ACL", "Permission denied", "rpc error"))


def judge(response: Any) -> TxnAnswer:
    """Inside the pool's call: a malformed answer raises UnexpectedAnswer (that server's fault,
    like a 5xx, 429 or 503); a refusal another server would repeat raises ErrorAnswer; 404, 405
    and a 403 that is not Consul's mean "no /v1/txn here"."""
    code = response.code
    if code in (404, 405) or (code == 403 and not _is_acl_refusal(response.body or "")):
        return TxnAnswer(code)
    if code not in (200, 409):
        checked_response(response)  # raises for 4xx/5xx
        raise UnexpectedAnswer(f"{code} unexpected answer to {TXN_PATH}")
    try:
        data = json.loads(response.body)
    except ValueError:
        raise UnexpectedAnswer(
            f"{TXN_PATH} answer is not JSON (is this a Consul server?)"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("Results") or [], list):
        raise UnexpectedAnswer(f"{TXN_PATH} answered {type(data).__name__}, not a TxnResponse")
    if code == 200:
        return TxnAnswer(200)
    raw_errors = data.get("Errors")
    if not isinstance(raw_errors, list) or not raw_errors:
        raise UnexpectedAnswer(f"{TXN_PATH} answered 409 without a list of errors")
    errors: List[Tuple[int, str]] = []
    for raw in raw_errors:
        if not isinstance(raw, dict) or not isinstance(raw.get("OpIndex", 0), int):
            raise UnexpectedAnswer(f"{TXN_PATH} answered 409 with a malformed error entry")
        errors.append((int(raw.get("OpIndex", 0)), str(raw.get("What", ""))))
    return TxnAnswer(409, tuple(errors))


def _params(datacenter: Optional[str]) -> Optional[List[Tuple[str, str]]]:
    return [("dc", datacenter)] if datacenter else None


def conflict_message(txn: Transaction, errors: Sequence[Tuple[int, str]]) -> str:
    """Every failing op, by number, with its unit (the service it writes) and Consul's words."""
    parts = []
    for index, what in errors[:CONFLICTS_SHOWN]:
        unit = txn.unit_of(index)
        where = unit.what if unit is not None else "unknown op"
        parts.append(f"op {index} ({one_line(where, 100)}): {one_line(str(what), 200)}")
    if len(errors) > CONFLICTS_SHOWN:
        parts.append(f"and {len(errors) - CONFLICTS_SHOWN} more")
    return "transaction refused: " + "; ".join(parts)


CONFLICTS_SHOWN = 5  # failing ops named in one error message (each cut to one line)


class TxnSender:
    """Sends a plan's units as transactions, or as single writes where txn is not served."""

    def __init__(self, pool: ServerPool, datacenter: Optional[str]) -> None:
        self.pool = pool
        self.datacenter = datacenter

    @property
    def txn_available(self) -> bool:
        return self.pool.capabilities.get(CAPABILITY, True)

    def _mark_unsupported(self, status: int) -> None:
        if self.pool.capabilities.get(CAPABILITY, True):
            self.pool.capabilities[CAPABILITY] = False
            log.warning(
                "consul_txn_unavailable",
                server=self.pool.current_server.address,
                status=status,
                fallback="single catalog writes from now on (until regagent restarts)",
            )

    def _put(self, txn: Transaction) -> TxnAnswer:
        body = txn.body
        params = _params(self.datacenter)
        answer: TxnAnswer = self.pool.call(
            f"transaction of {len(txn.ops)} op(s)",
            lambda c: judge(put_raw(c, TXN_PATH, body, params)),
        )
        return answer

    def send(self, units: Sequence[Unit]) -> ApplyOutcome:
        """Sends `units` as described in the module docstring; units without txn ops (a node
        check a transaction cannot carry whole) go as single writes after the transactions,
        unless the cluster was lost on the way."""
        batched = [u for u in units if u.ops]
        singles = [u.single for u in units if not u.ops]
        if singles and all(u.kind == "node" for u in batched):
            batched = []  # every single catalog register carries the node

        outcome = self._send(batched, planned=len(counted(units)))
        if singles and _singles_may_pass(outcome.error):
            failures: List[RegagentError] = [outcome.error] if outcome.error else []
            outcome = _merge(outcome, send_all(self.pool, singles), failures)
        return outcome

    def _send(self, units: Sequence[Unit], planned: int) -> ApplyOutcome:
        outcome = ApplyOutcome(planned=planned)
        if not units:
            return outcome
        if not self.txn_available:
            return _merge(outcome, send_all(self.pool, single_requests(units)))
        failures: List[RegagentError] = []
        pending = batches(units)
        while pending:
            txn = pending.pop(0)
            try:
                answer = self._put(txn)
                if answer.status == 409:
                    refusal = self._refused(txn, answer)
                    failures.append(refusal)
                    refused = [txn.unit_of(i) for i, _ in answer.errors]
                    rest = Transaction(tuple(u for u in txn.units if u not in refused))
                    if isinstance(refusal, NodeVanished) or any(
                        u is not None and u.kind == "node" for u in refused
                    ):
                        break  # without its node, nothing else of this host can be written
                    if not rest.units:
                        continue
                    answer = self._put(rest)  # once: a second 409 gives up on this batch
                    if answer.status == 409:
                        failures.append(self._refused(rest, answer))
                        continue
                    txn = rest
            except ConsulRefused as exc:  # refused as a whole (400, 413, ...): the next may pass
                log.error("consul_write_refused", what="transaction", error=str(exc))
                failures.append(exc)
                continue
            except RegagentError as exc:  # no server, no leader: the next cycle retries
                failures.append(exc)
                break
            if answer.unsupported:
                self._mark_unsupported(answer.status)
                left = [u for t in [txn, *pending] for u in t.units]
                return _merge(outcome, send_all(self.pool, single_requests(left)), failures)
            _count(outcome, txn.units)
            outcome.requests += 1
            log.info(
                "consul_txn",
                ops=len(txn.ops),
                what=[u.what for u in txn.units],
                server=self.pool.current_server.address,
            )
        outcome.server = self.pool.current_server.address
        outcome.error = first_failure(failures)
        return outcome

    def _refused(self, txn: Transaction, answer: TxnAnswer) -> ConsulRefused:
        """The refusal; NodeVanished when the transaction did not write the node and Consul
        says it holds none (deleted since the cycle read it): the caller reads again, so that
        is a warning, not an error."""
        message = conflict_message(txn, answer.errors)
        server = self.pool.current_server.address
        if node_vanished(txn, answer.errors):
            vanished = NodeVanished(server, 409, message)
            log.warning("consul_node_vanished", what="transaction", error=str(vanished))
            return vanished
        error = ConsulRefused(server, 409, message)
        log.error("consul_write_refused", what="transaction", error=str(error))
        return error


MISSING_NODE = "Missing node registration"  # Consul's ErrMissingNode


def node_vanished(txn: Transaction, errors: Sequence[Tuple[int, str]]) -> bool:
    """Whether a refusal says the node is gone: a transaction without the node's own op,
    refused because Consul holds no node for one of its ops."""
    writes_node = any(unit.kind == "node" for unit in txn.units)
    return not writes_node and any(MISSING_NODE in what for _, what in errors)


def _singles_may_pass(error: Optional[RegagentError]) -> bool:
    """After another refusal the single writes may still pass; not without a cluster, nor when
    the node is gone: each single carries the node, and would bring it back with nothing on it
    but a node check (the cycle reads again and writes it whole)."""
    if error is None:
        return True
    return isinstance(error, ConsulRefused) and not isinstance(error, NodeVanished)


def counted(units: Sequence[Unit]) -> List[Unit]:
    """The units a report counts, as single writes would: the node's own write only when no
    service or check write carries the node (every catalog register does)."""
    others = [u for u in units if u.kind != "node"]
    return others or list(units)


def single_requests(units: Sequence[Unit]) -> List[WriteRequest]:
    """The single-write layout of `units`."""
    return [u.single for u in counted(units)]


def _count(outcome: ApplyOutcome, units: Sequence[Unit]) -> None:
    for unit in counted(units):
        outcome.writes_by_kind[unit.kind] = outcome.writes_by_kind.get(unit.kind, 0) + 1


def _merge(
    outcome: ApplyOutcome, other: ApplyOutcome, failures: Optional[List[RegagentError]] = None
) -> ApplyOutcome:
    for kind, n in other.writes_by_kind.items():
        outcome.writes_by_kind[kind] = outcome.writes_by_kind.get(kind, 0) + n
    outcome.requests += other.requests
    outcome.server = other.server
    errors = list(failures or []) + ([other.error] if other.error is not None else [])
    outcome.error = first_failure(errors)
    return outcome


def node_op(name: str, address: str, meta: Mapping[str, str], datacenter: Optional[str]) -> Op:
    """Node `set` replaces the stored node: the full NodeMeta goes every time."""
    node: Dict[str, Any] = {"Node": name, "Address": address, "Meta": dict(meta)}
    if datacenter:
        node["Datacenter"] = datacenter
    return {"Node": {"Verb": "set", "Node": node}}


def service_op(node: str, verb: str, service: Dict[str, Any]) -> Op:
    return {"Service": {"Verb": verb, "Node": node, "Service": service}}


def check_op(node: str, check: Dict[str, Any]) -> Op:
    return {"Check": {"Verb": "set", "Check": {"Node": node, **check}}}


def check_delete_op(node: str, check_id: str) -> Op:
    return {"Check": {"Verb": "delete", "Check": {"Node": node, "CheckID": check_id}}}
