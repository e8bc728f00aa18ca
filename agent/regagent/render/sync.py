"""Human and JSON renderings of a sync cycle (the dry-run output).

JSON schema (`regagent sync --format json`), one object:
  dry_run: bool          - nothing was written
  in_sync: bool | null   - Consul already matched, nothing skipped (null: Consul not read)
  server: str | null     - the server that answered
  node: {name, address, meta}
  changes: [ {action: "node"|"register"|"update"|"status"|"deregister"
                      |"node_check"|"node_check_removal",
              service_id: str | null,
              check_id: str,                          # node_check and node_check_removal only
              service: {id, name, address, port, tags, meta} | null,
              diff: {field: {old, new}},             # update and node only
              check: {status, output} | null} ]
  conflicts: [ {service_id, reason} ]
  desired: [ {id, name, address, port, tags, meta, check: {status, output}} ]
  node_checks: [ {check_id, name, status, output, notes, type, definition,
                  status_by: "regagent"|"consul"} ]   # node-level checks regagent wants
  writes: int            - writes made (0 for a dry run)
  requests: int          - write requests that carried them (one /v1/txn carries many)
  error: str | null
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from regagent.model import (
    CheckState,
    DesiredState,
    NodeCheck,
    ServiceRegistration,
    meta_dict,
    service_json,
    url_host,
)
from regagent.plan import FieldDiff, Plan
from regagent.render.escape import safe_lines
from regagent.report import CycleReport


def _check_json(check: Optional[CheckState]) -> Optional[Dict[str, str]]:
    return None if check is None else {"status": check.status, "output": check.output}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return meta_dict(value)
    return value


def _diff_json(diff: Tuple[FieldDiff, ...]) -> Dict[str, Any]:
    return {name: {"old": _jsonable(old), "new": _jsonable(new)} for name, old, new in diff}


def changes_json(plan: Plan) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    if plan.node_write is not None:
        out.append(
            {
                "action": "node",
                "service_id": None,
                "service": None,
                "diff": _diff_json(plan.node_write),
                "check": None,
            }
        )
    for write in plan.services:
        out.append(
            {
                "action": "register" if write.is_new else "update",
                "service_id": write.service.id,
                "service": service_json(write.service),
                "diff": _diff_json(write.diff),
                "check": _check_json(write.check),
            }
        )
    for check_write in plan.checks:
        out.append(
            {
                "action": "status",
                "service_id": check_write.check.service_id,
                "service": None,
                "diff": {},
                "check": _check_json(check_write.check),
            }
        )
    for service in plan.deregister:
        out.append(
            {
                "action": "deregister",
                "service_id": service.id,
                "service": service_json(service),
                "diff": {},
                "check": None,
            }
        )
    for node_check_write in plan.node_checks:
        out.append(
            {
                "action": "node_check",
                "service_id": None,
                "check_id": node_check_write.check.check_id,
                "service": None,
                "diff": _diff_json(node_check_write.diff),
                "check": _node_check_json(node_check_write.check),
            }
        )
    for removed in plan.node_checks_removed:
        out.append(
            {
                "action": "node_check_removal",
                "service_id": None,
                "check_id": removed.check_id,
                "service": None,
                "diff": {},
                "check": None,
            }
        )
    return out


def _node_check_json(check: NodeCheck) -> Dict[str, Any]:
    return {
        "check_id": check.check_id,
        "name": check.name,
        "status": check.status,
        "output": check.output,
        "notes": check.notes,
        "type": check.type,
        "definition": meta_dict(check.definition),
        "status_by": "consul" if check.consul_owns_status else "regagent",
    }


def desired_json(desired: DesiredState) -> List[Dict[str, Any]]:
    checks = {c.service_id: c for c in desired.checks}
    return [{**service_json(s), "check": _check_json(checks.get(s.id))} for s in desired.services]


def cycle_json(result: CycleReport, dry_run: bool) -> Dict[str, Any]:
    node = result.desired.node if result.desired else None
    return {
        "dry_run": dry_run,
        "in_sync": None if result.plan is None else result.plan.in_sync,
        "server": result.server,
        "node": None
        if node is None
        else {"name": node.name, "address": node.address, "meta": meta_dict(node.meta)},
        "changes": [] if result.plan is None else changes_json(result.plan),
        "conflicts": []
        if result.plan is None
        else [{"service_id": c.service_id, "reason": c.reason} for c in result.plan.conflicts],
        "desired": [] if result.desired is None else desired_json(result.desired),
        "node_checks": []
        if result.desired is None
        else [_node_check_json(c) for c in result.desired.node_checks],
        "writes": result.writes,
        "requests": result.requests,
        "error": None if result.error is None else str(result.error),
    }


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={value[k]}" for k in sorted(value)) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def _describe_service(service: ServiceRegistration) -> str:
    where = f"{url_host(service.address)}:{service.port}" if service.address else f":{service.port}"
    return f"{service.name} at {where} tags={_show(service.tags)}"


def plan_text(plan: Plan) -> List[str]:
    lines: List[str] = []
    if plan.node_write is not None:
        if plan.node_write:
            lines.append(f"~ update node {plan.node.name}")
            lines += [f"    {n}: {_show(o)} -> {_show(v)}" for n, o, v in plan.node_write]
        else:
            lines.append(f"+ register node {plan.node.name} ({plan.node.address})")
    for write in plan.services:
        check = f" [{write.check.status}]" if write.check else ""
        if write.is_new:
            lines.append(
                f"+ register {write.service.id}: {_describe_service(write.service)}{check}"
            )
        else:
            lines.append(f"~ update {write.service.id}")
            lines += [f"    {n}: {_show(o)} -> {_show(v)}" for n, o, v in write.diff]
    for check_write in plan.checks:
        old = check_write.old.status if check_write.old else "none"
        new = check_write.check
        lines.append(f"! status {new.service_id}: {old} -> {new.status} ({new.output})")
    for service in plan.deregister:
        lines.append(f"- deregister {service.id}: {_describe_service(service)}")
    for node_check_write in plan.node_checks:
        node_check = node_check_write.check
        if node_check_write.is_new:
            lines.append(f"+ node check {node_check.check_id}: {_describe_node_check(node_check)}")
        else:
            lines.append(f"~ node check {node_check.check_id}")
            lines += [f"    {n}: {_show(o)} -> {_show(v)}" for n, o, v in node_check_write.diff]
    for removed in plan.node_checks_removed:
        lines.append(f"- remove node check {removed.check_id}: {removed.name}")
    for conflict in plan.conflicts:
        lines.append(f"? skip {conflict.service_id}: {conflict.reason}")
    return lines


def _describe_node_check(check: NodeCheck) -> str:
    kind = f" type={check.type}" if check.type else ""
    definition = f" {_show(dict(check.definition))}" if check.definition else ""
    owner = ", then Consul's" if check.consul_owns_status else ""
    return f"{check.name!r}{kind}{definition} [{check.status}{owner}]"


def desired_text(desired: DesiredState) -> List[str]:
    checks = {c.service_id: c for c in desired.checks}
    lines = [f"Desired state for node {desired.node.name} ({desired.node.address}):"]
    if not desired.services:
        lines.append("  (no services)")
    for service in desired.services:
        check = checks.get(service.id)
        status = f" [{check.status}: {check.output}]" if check else ""
        lines.append(f"  {service.id}: {_describe_service(service)}{status}")
    for node_check in desired.node_checks:
        lines.append(f"  node check {node_check.check_id}: {_describe_node_check(node_check)}")
    return lines


def cycle_text(result: CycleReport, dry_run: bool) -> List[str]:
    """The text form, each line safe to print (control characters escaped)."""
    return safe_lines(_cycle_lines(result, dry_run))


def _cycle_lines(result: CycleReport, dry_run: bool) -> List[str]:
    lines: List[str] = []
    if result.plan is None:
        if result.desired is not None:
            lines += desired_text(result.desired)
        return lines
    plan = result.plan
    lines += plan_text(plan)
    if plan.empty and plan.conflicts:
        lines.append(
            f"Not in sync: nothing to write, but {len(plan.conflicts)} service(s) skipped "
            f"(node {plan.node.name}, via {result.server})."
        )
        return lines
    if plan.empty:
        count = len(result.desired.services) if result.desired else 0
        lines.append(
            f"In sync: node {plan.node.name}, {count} service(s), "
            f"nothing to write (via {result.server})."
        )
        return lines
    counts = {
        "to register": sum(1 for w in plan.services if w.is_new),
        "to update": sum(1 for w in plan.services if not w.is_new),
        "status change(s)": len(plan.checks),
        "to deregister": len(plan.deregister),
        "node check(s) to write": len(plan.node_checks),
        "node check(s) to remove": len(plan.node_checks_removed),
    }
    summary = ", ".join(f"{n} {label}" for label, n in counts.items() if n)
    if dry_run:
        lines.append(f"Plan: {summary or 'node update only'}. Dry run: nothing written.")
    elif result.error is not None:
        lines.append(
            f"Planned: {summary or 'node update'}; only {result.writes} of "
            f"{result.planned_writes} write(s) done before the error "
            "(the next cycle completes them)."
        )
    else:
        lines.append(
            f"Applied: {summary or 'node update'}; {result.writes} write(s) in "
            f"{result.requests} request(s) via {result.server}."
        )
    return lines
