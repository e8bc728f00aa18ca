"""`regagent status` output: each server's state, and this node's registrations and checks."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from regagent.model import ActualState, service_json, url_host
from regagent.render.escape import safe_lines


def status_report(
    node: str,
    servers: Sequence[Dict[str, Any]],
    actual: Optional[ActualState],
    error: Optional[str],
) -> Dict[str, Any]:
    """The JSON document of `status --format json` (the text form renders the same)."""
    report: Dict[str, Any] = {
        "node": actual.node.name if actual is not None and actual.node else node,
        "servers": list(servers),
        "registered": None,
        "error": error,
    }
    if actual is None:
        return report
    checks = {c.service_id: c for c in actual.checks}
    report["registered"] = actual.node is not None
    report["services"] = [
        {
            **service_json(s),
            "managed": s.managed,
            "check": None
            if s.id not in checks
            else {"status": checks[s.id].status, "output": checks[s.id].output},
        }
        for s in actual.services
    ]
    return report


def status_text(report: Dict[str, Any]) -> str:
    lines: List[str] = ["Servers:"]
    for s in report["servers"]:
        if s["reachable"]:
            leader = f"leader {s['leader']}" if s["leader"] else "NO LEADER"
            lines.append(f"  {s['server']}: reachable, {leader} ({s['latency_ms']} ms)")
        else:
            lines.append(f"  {s['server']}: unreachable ({s['error']})")
    if report["error"]:
        lines.append(f"Node {report['node']}: unknown ({report['error']})")
    elif not report["registered"]:
        lines.append(f"Node {report['node']}: not registered")
    else:
        lines.append(f"Node {report['node']}: {len(report['services'])} service(s)")
        for s in report["services"]:
            owner = "" if s["managed"] else " (not managed by regagent)"
            check = s["check"]
            state = f"{check['status']}: {check['output']}" if check else "no check"
            where = f"{url_host(s['address'])}:{s['port']}" if s["address"] else f":{s['port']}"
            lines.append(f"  {s['id']} {where} [{state}]{owner}")
    return "".join(line + "\n" for line in safe_lines(lines))
