"""`regagent maint status` output: the window as recorded on this host, and as Consul shows it."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from regagent.maintenance.window import NODE_MAINTENANCE_CHECK_ID, Window
from regagent.model import NodeCheck
from regagent.render.escape import safe_lines
from regagent.rules import format_duration, utc_text


def remaining_text(seconds: float) -> str:
    """`1h 29m 5s`-style, whole seconds."""
    left = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    if left or not parts:
        parts.append(f"{left}s")
    return " ".join(parts)


def window_report(
    node: str,
    window: Optional[Window],
    now: float,
    *,
    check: Optional[NodeCheck],
    daemon_running: bool,
    error: Optional[str] = None,
) -> Dict[str, Any]:
    """The JSON document of `maint status --format json` (the text form renders the same).
    `check`: the node's `_node_maintenance` check in Consul, None when absent (or, with
    `error`, not known)."""
    recorded: Optional[Dict[str, Any]] = None
    if window is not None:
        recorded = {
            "state": window.state(now),
            "reason": window.reason,
            "since": utc_text(round(window.since)),
            "until": utc_text(round(window.until)),
            "remaining_seconds": int(window.remaining(now)),  # whole seconds left
            "stopped": None if window.stopped is None else utc_text(round(window.stopped)),
        }
    return {
        "node": node,
        "window": recorded,
        "consul": {
            "check_id": NODE_MAINTENANCE_CHECK_ID,
            "present": None if error is not None else check is not None,
            "status": None if check is None else check.status,
            "notes": None if check is None else check.notes,
            "output": None if check is None else check.output,
            "error": error,
        },
        "daemon_running": daemon_running,
    }


def window_text(report: Dict[str, Any]) -> str:
    lines: List[str] = []
    node, window, consul = report["node"], report["window"], report["consul"]
    if window is None:
        lines.append(f"Node {node}: no maintenance window recorded.")
    elif window["state"] == "active":
        lines += [
            f"Node {node}: in maintenance",
            f"  reason:    {window['reason']}",
            f"  since:     {window['since']}",
            f"  until:     {window['until']}",
            f"  remaining: {remaining_text(window['remaining_seconds'])}",
        ]
    else:
        how = "stopped" if window["state"] == "stopped" else "ended"
        lines += [
            f"Node {node}: not in maintenance (the last window {how} at {window['until']})",
            f"  reason:    {window['reason']}",
            f"  since:     {window['since']}",
        ]
    if consul["error"] is not None:
        lines.append(f"Consul: not known ({consul['error']})")
    elif consul["present"]:
        lines.append(
            f"Consul: check {consul['check_id']} {consul['status']}, notes: {consul['notes']}"
        )
    else:
        lines.append(f"Consul: no {consul['check_id']} check on the node")
    active = window is not None and window["state"] == "active"
    if active and not report["daemon_running"]:
        lines.append(
            "The daemon (regagent run) is not running here: nothing will end the window "
            "in Consul until it starts."
        )
    return "".join(line + "\n" for line in safe_lines(lines))


def started_text(node: str, window: Window, replaced: bool) -> str:
    length = format_duration(round(window.until - window.since))
    what = "replaces the previous window" if replaced else "starts now"
    line = f"Node {node} in maintenance until {utc_text(round(window.until))} ({length}; {what}): "
    return "".join(text + "\n" for text in safe_lines([line + window.reason]))
