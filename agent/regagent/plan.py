"""The planner: desired registrations vs what Consul holds -> the writes to make. No I/O.

Only services carrying Meta `managed-by=regagent` are ever changed or removed (decision 2); a
foreign service with an ID regagent wants is reported as a conflict and left alone. Node-level
checks are diffed like service checks, but only those whose IDs the desired state owns
(`DesiredState.owned_node_checks`): a node check nobody in regagent claims is never touched.

The other direction lives here too, for every layer that keeps what Consul holds without
reading it again: `applied` (a plan written over a state) and `watched` (the node watch's
answer over a state).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Tuple

from regagent.model import (
    ActualState,
    CheckState,
    DesiredState,
    HealthProbe,
    NodeCheck,
    NodeRegistration,
    ServiceRegistration,
)
from regagent.rules import meta_problems

FieldDiff = Tuple[str, object, object]  # (field, old, new)


@dataclass(frozen=True)
class ServiceWrite:
    """Register (old is None) or update a service together with its check: the result
    regagent writes (`check`), or the definition a Consul agent runs (`probe`)."""

    service: ServiceRegistration
    check: Optional[CheckState]
    old: Optional[ServiceRegistration] = None
    diff: Tuple[FieldDiff, ...] = ()
    probe: Optional[HealthProbe] = None

    @property
    def is_new(self) -> bool:
        return self.old is None


@dataclass(frozen=True)
class CheckWrite:
    """Only the check's status/output changed: write the check alone (naming its service,
    which a transaction's ACL check needs)."""

    check: CheckState
    old: Optional[CheckState]
    service_name: str = ""


@dataclass(frozen=True)
class NodeCheckWrite:
    """Register (old is None) or rewrite a node-level check regagent owns."""

    check: NodeCheck
    old: Optional[NodeCheck] = None
    diff: Tuple[FieldDiff, ...] = ()

    @property
    def is_new(self) -> bool:
        return self.old is None


@dataclass(frozen=True)
class Conflict:
    service_id: str
    reason: str


@dataclass(frozen=True)
class Plan:
    node: NodeRegistration
    node_write: Optional[Tuple[FieldDiff, ...]] = None  # None: node unchanged; () new node
    services: Tuple[ServiceWrite, ...] = ()
    checks: Tuple[CheckWrite, ...] = ()
    deregister: Tuple[ServiceRegistration, ...] = ()
    conflicts: Tuple[Conflict, ...] = field(default=())
    node_checks: Tuple[NodeCheckWrite, ...] = ()
    node_checks_removed: Tuple[NodeCheck, ...] = ()  # owned, present, no longer wanted

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return not (
            self.node_write is not None
            or self.services
            or self.checks
            or self.deregister
            or self.node_checks
            or self.node_checks_removed
        )

    @property
    def in_sync(self) -> bool:
        """Consul holds exactly what is desired: nothing to write and nothing skipped."""
        return self.empty and not self.conflicts


def diff_fields(old: object, new: object, names: Tuple[str, ...]) -> Tuple[FieldDiff, ...]:
    return tuple(
        (name, getattr(old, name), getattr(new, name))
        for name in names
        if getattr(old, name) != getattr(new, name)
    )


SERVICE_FIELDS = ("name", "address", "port", "tags", "meta")
NODE_FIELDS = ("address", "meta")
NODE_CHECK_FIELDS = ("name", "status", "output", "notes", "type", "definition")


def _check_changed(old: Optional[CheckState], new: CheckState) -> bool:
    return old is None or (old.status, old.output, old.name) != (new.status, new.output, new.name)


def plan(desired: DesiredState, actual: ActualState) -> Plan:
    """The minimal set of writes that makes `actual` equal `desired` for regagent's services."""
    actual_services: Dict[str, ServiceRegistration] = {s.id: s for s in actual.services}
    actual_checks: Mapping[str, CheckState] = {c.check_id: c for c in actual.checks}
    desired_checks: Dict[str, CheckState] = {c.service_id: c for c in desired.checks}

    node_write: Optional[Tuple[FieldDiff, ...]] = None
    if actual.node is None:
        node_write = ()
    else:
        node_diff = diff_fields(actual.node, desired.node, NODE_FIELDS)
        if node_diff:
            node_write = node_diff

    service_writes: List[ServiceWrite] = []
    check_writes: List[CheckWrite] = []
    conflicts: List[Conflict] = []
    for service in desired.services:
        check = desired_checks.get(service.id)
        probe = desired.probes.get(service.id)
        current = actual_services.get(service.id)
        invalid = meta_problems(dict(service.meta))
        if invalid:
            # Consul would refuse it; an existing registration stays as it is (never dropped).
            conflicts.append(Conflict(service.id, "invalid Meta: " + "; ".join(invalid)))
            continue
        if current is not None and not current.managed:
            conflicts.append(
                Conflict(
                    service.id,
                    "a service with this ID exists without Meta managed-by=regagent; left alone",
                )
            )
            continue
        if current is None:
            service_writes.append(ServiceWrite(service, check, probe=probe))
            continue
        changes = diff_fields(current, service, SERVICE_FIELDS)
        if changes:
            service_writes.append(ServiceWrite(service, check, current, changes, probe))
        elif check is not None and _check_changed(actual_checks.get(check.check_id), check):
            old = actual_checks.get(check.check_id)
            check_writes.append(CheckWrite(check, old, service.name))

    wanted = {s.id for s in desired.services}
    deregister = tuple(s for s in actual.services if s.managed and s.id not in wanted)
    node_checks, node_checks_removed = plan_node_checks(desired, actual)
    return Plan(
        node=desired.node,
        node_write=node_write,
        services=tuple(service_writes),
        checks=tuple(check_writes),
        deregister=tuple(sorted(deregister, key=lambda s: s.id)),
        conflicts=tuple(conflicts),
        node_checks=node_checks,
        node_checks_removed=node_checks_removed,
    )


def plan_node_checks(
    desired: DesiredState, actual: ActualState
) -> Tuple[Tuple[NodeCheckWrite, ...], Tuple[NodeCheck, ...]]:
    """The owned node checks to write (missing or different) and to remove (present, owned,
    not wanted). A check whose status Consul owns is compared without its status: regagent
    never writes back a status Consul set (a session check turned critical stays critical)."""
    present: Dict[str, NodeCheck] = {c.check_id: c for c in actual.node_checks}
    writes: List[NodeCheckWrite] = []
    for check in desired.node_checks:
        old = present.get(check.check_id)
        if old is None:
            writes.append(NodeCheckWrite(check))
            continue
        fields = tuple(
            f for f in NODE_CHECK_FIELDS if not (f == "status" and check.consul_owns_status)
        )
        changes = diff_fields(old, check, fields)
        if changes:
            writes.append(NodeCheckWrite(check, old, changes))
    wanted = {c.check_id for c in desired.node_checks}
    removed = tuple(
        c
        for c in sorted(actual.node_checks, key=lambda c: c.check_id)
        if c.check_id in desired.owned_node_checks and c.check_id not in wanted
    )
    return tuple(writes), removed


def watched(
    known: ActualState,
    node: Optional[NodeRegistration],
    services: Tuple[ServiceRegistration, ...],
) -> ActualState:
    """What Consul holds after the node watch's answer (node and services) over the kept
    state: the checks kept for services still there, none once the node is gone (pure)."""
    if node is None:
        return ActualState(node=None, services=(), checks=())
    present = {s.id for s in services}
    return replace(
        known,
        node=node,
        services=services,
        checks=tuple(c for c in known.checks if c.service_id in present),
    )


def applied(actual: ActualState, done: Plan) -> ActualState:
    """What Consul holds after `done` was written to `actual` (pure; the kept state)."""
    services: Dict[str, ServiceRegistration] = {s.id: s for s in actual.services}
    checks: Dict[str, CheckState] = {c.check_id: c for c in actual.checks}
    for write in done.services:
        services[write.service.id] = write.service
        if write.check is not None:
            checks[write.check.check_id] = write.check
    for check_write in done.checks:
        checks[check_write.check.check_id] = check_write.check
    for gone in done.deregister:
        services.pop(gone.id, None)
        for check_id in [k for k, c in checks.items() if c.service_id == gone.id]:
            del checks[check_id]
    node_checks = {c.check_id: c for c in actual.node_checks}
    unparsed = [i for i in actual.node_check_ids if i not in node_checks]  # IDs only
    for node_check_write in done.node_checks:
        node_checks[node_check_write.check.check_id] = node_check_write.check
    for removed in done.node_checks_removed:
        node_checks.pop(removed.check_id, None)
    node = done.node if done.node_write is not None else actual.node
    return replace(
        actual,
        node=node,
        services=tuple(sorted(services.values(), key=lambda s: s.id)),
        checks=tuple(sorted(checks.values(), key=lambda c: c.check_id)),
        node_check_ids=tuple(sorted([*unparsed, *node_checks])),
        node_checks=tuple(sorted(node_checks.values(), key=lambda c: c.check_id)),
    )
