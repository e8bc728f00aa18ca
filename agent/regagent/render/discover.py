"""`regagent discover` output: what listens here, what it was identified as, what would be
registered. The command (in `regagent.cli`) runs without Consul and without root (process names
are then partly unknown); it reads the discovery state file, if readable, to show vanished
exporters still kept, but never writes it.

JSON schema (`--format json`), one object:

    {
      "node_address": "192.0.2.10",
      "discovery_enabled": true,
      "complete": true,              # false when the listening sockets could not be read
      "error": "",                   # why not complete
      "listeners": [                 # one entry per listening port, sorted by port
        {
          "port": 9100,
          "endpoints": ["0.0.0.0:9100", "[::]:9100"],
          "address_kind": "wildcard",          # wildcard | loopback | specific
          "process": {"pid": 812, "name": "prometheus-node-exporter", "exe": "/usr/bin/...",
                      "cmdline": ["..."], "user": "prometheus"} or null (unknown, not
                      permitted, or not looked up: only where it can change the outcome),
          "candidate_reasons": ["default port of node_exporter"],
          "outcome": "identified",   # identified | unknown-exporter | not-exporter
                                     # | excluded | not-candidate | pending (an unconfirmed
                                     # listener whose background probe has not answered yet)
          "reason": "node_exporter_build_info",   # how identified, or why not
          "exporter": "node_exporter" or null,
          "version": "1.5.0" or null,
          "identified_by": "build_info" or null,  # build_info | fingerprint | process | port
          "problem": "",             # identified by its process or port while its answer
                                     # failed: why (e.g. "timed out after 10s"); else ""
          "metrics_path": "/metrics",
          "scheme": "http",
          "service_id": "node-exporter-9100" or null,         # what it is registered as
          "not_registered": null or "listens on loopback only (...)"
        }
      ],
      "services": [                  # every service that would be registered, sorted by id
        {
          "id": "node-exporter-9100", "name": "node-exporter", "address": "192.0.2.10",
          "port": 9100, "tags": ["node_exporter"], "meta": {"exporter": "node_exporter", ...},
          "source": "discovery",     # discovery | static
          "status": "passing" or "critical" or null (decided by the probe),
          "output": "node_exporter 1.5.0 serving /metrics on :9100" or null,
          "probe": {"kind": "http", "target": "http://192.0.2.10:9100/metrics"} or null
        }
      ]
    }
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from regagent.discovery.identify import (
    EXCLUDED,
    IDENTIFIED,
    NOT_CANDIDATE,
    PENDING,
    UNKNOWN_EXPORTER,
    DiscoveryResult,
    Finding,
)
from regagent.discovery.intents import IntentSet
from regagent.model import ServiceIntent, service_json
from regagent.render.escape import safe_lines


def report_json(
    node_address: str, result: Optional[DiscoveryResult], wanted: IntentSet
) -> Dict[str, Any]:
    findings = result.findings if result is not None else ()
    return {
        "node_address": node_address,
        "discovery_enabled": result is not None,
        "complete": result.complete if result is not None else True,
        "error": result.error if result is not None else "",
        "listeners": [_finding_json(f, wanted) for f in findings],
        "services": [_intent_json(i) for i in sorted(wanted.intents, key=_intent_id)],
    }


def _intent_id(intent: ServiceIntent) -> str:
    return intent.service.id


def _finding_json(finding: Finding, wanted: IntentSet) -> Dict[str, Any]:
    process = finding.process
    return {
        "port": finding.port,
        "endpoints": [listener.endpoint for listener in finding.listeners],
        "address_kind": finding.address_kind,
        "process": None
        if process is None
        else {
            "pid": process.pid,
            "name": process.name,
            "exe": process.exe,
            "cmdline": list(process.cmdline),
            "user": process.user,
        },
        "candidate_reasons": list(finding.candidate_reasons),
        "outcome": finding.outcome,
        "reason": finding.reason,
        "exporter": finding.exporter,
        "version": finding.version,
        "identified_by": finding.identified_by,
        "problem": finding.problem,
        "metrics_path": finding.metrics_path,
        "scheme": finding.scheme,
        "service_id": wanted.by_port.get(finding.port),
        "not_registered": _not_registered(finding, wanted),
    }


def _not_registered(finding: Finding, wanted: IntentSet) -> Optional[str]:
    for item in wanted.skipped:
        if item.port == finding.port:
            return item.reason
    return None


def _intent_json(intent: ServiceIntent) -> Dict[str, Any]:
    return {
        **service_json(intent.service),
        "source": intent.source,
        "status": intent.status[0] if intent.status else None,
        "output": intent.status[1] if intent.status else None,
        "probe": None
        if intent.probe is None
        else {"kind": intent.probe.kind, "target": intent.probe.target},
    }


def report_text(
    node_address: str, result: Optional[DiscoveryResult], wanted: IntentSet
) -> List[str]:
    """A table of listeners, then the services that would be registered; safe to print."""
    lines: List[str] = []
    if result is None:
        lines.append("Discovery is disabled (discovery.enabled: false).")
    elif not result.complete:
        lines.append(f"Could not list listening sockets: {result.error}")
    else:
        lines.append(f"Listening TCP sockets (node address {node_address}):")
        rows = [["LISTENER", "PROCESS", "IDENTIFIED AS / WHY NOT", "REGISTERED AS"]]
        rows += [_finding_row(f, wanted) for f in result.findings]
        lines += _table(rows)
    lines.append("")
    intents = sorted(wanted.intents, key=_intent_id)
    lines.append(f"Would register {len(intents)} service(s):")
    for intent in intents:
        service = intent.service
        status = f"{intent.status[0]}: {intent.status[1]}" if intent.status else _probe_text(intent)
        tags = ",".join(service.tags) or "-"
        lines.append(
            f"  {service.id}  {service.name} at {_hostport(service.address, service.port)}"
            f"  [{intent.source}]  tags={tags}  {status}"
        )
    return safe_lines(lines)


def _probe_text(intent: ServiceIntent) -> str:
    if intent.probe is None:
        return "passing (no check)"
    return f"checked by {intent.probe.kind} {intent.probe.target}"


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _finding_row(finding: Finding, wanted: IntentSet) -> List[str]:
    process = finding.process.label if finding.process is not None else "?"
    if finding.outcome == IDENTIFIED:
        version = f" {finding.version}" if finding.version else ""
        how = f"by {finding.identified_by}: " if finding.identified_by else ""
        what = f"{finding.exporter}{version} ({how}{finding.reason})"
    elif finding.outcome == UNKNOWN_EXPORTER:
        what = f"unknown exporter: {finding.reason}"
    elif finding.outcome in (EXCLUDED, NOT_CANDIDATE, PENDING):
        what = finding.reason
    else:
        what = f"not an exporter: {finding.reason}"
    if finding.candidate_reasons and finding.outcome not in (IDENTIFIED, NOT_CANDIDATE):
        what += f" [candidate: {'; '.join(finding.candidate_reasons)}]"
    service_id = wanted.by_port.get(finding.port)
    if service_id is not None:
        registered = service_id
    else:
        skipped = _not_registered(finding, wanted)
        registered = f"no: {skipped}" if skipped else "-"
    return [finding.endpoints, process, what, registered]


def _table(rows: Sequence[List[str]]) -> List[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows
    ]
