"""One server's agent-local state: services and checks registered through ``/v1/agent/*``.

A registration made through server B's agent API belongs to B's node, lives in B's local
state (kept across a simulated restart, as the data_dir keeps it) and reaches the catalog only
through B's anti-entropy sync. Keeping that state per server is what makes the difference
between agent and catalog registration observable in tests.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .state import CHECK_STATUSES, check_type, valid_weights, validate_meta

Record = Dict[str, Any]
OUTPUT_MAX = 4096


class AgentError(Exception):
    """An agent endpoint refusal with its HTTP status and Consul's text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


@dataclass
class LocalCheck:
    """A check as the agent keeps it: the HealthCheck row plus its TTL clock."""

    row: Record
    ttl_ns: int = 0
    expires_at: Optional[float] = None


@dataclass
class AgentState:
    """Services and checks local to one server's agent, keyed by their exact IDs."""

    node: str
    address: str
    datacenter: str
    services: Dict[str, Record] = field(default_factory=dict)
    checks: Dict[str, LocalCheck] = field(default_factory=dict)

    def register_service(self, defn: Record, replace_checks: bool, now: float) -> Record:
        """Validate and store a ServiceDefinition; returns the stored NodeService row."""
        name = defn.get("Name", "")
        if not name:
            raise AgentError(400, "Missing service name")
        sid = defn.get("ID") or name
        weights = defn.get("Weights")
        if weights is not None:
            if weights.get("Passing", 0) < 1:
                raise AgentError(400, "Invalid Weights: Passing must be greater than 0")
            if weights.get("Warning", 0) < 0:
                raise AgentError(400, "Invalid Weights: Warning must be greater or equal than 0")
        problem = validate_meta(defn.get("Meta"))
        if problem:
            raise AgentError(400, f"Invalid Service Meta: {problem}")
        check_types = [c for c in [defn.get("Check"), *(defn.get("Checks") or [])] if c]
        for chk in check_types:
            reason = _check_problem(chk)
            if reason:
                raise AgentError(400, f"Invalid check: {reason}")
            if chk.get("Status") and chk["Status"] not in CHECK_STATUSES:
                raise AgentError(400, "Status for checks must 'passing', 'warning', 'critical'")
        address = defn.get("Address", "")
        if address in ("0.0.0.0", "::", "[::]"):
            raise AgentError(400, "Invalid service address")

        row: Record = {
            "Kind": defn.get("Kind", ""),
            "ID": sid,
            "Service": name,
            "Tags": defn.get("Tags"),
            "Address": address,
            "TaggedAddresses": _tagged_addresses(defn, address),
            "Meta": defn.get("Meta"),
            "Port": defn.get("Port", 0),
            "Weights": valid_weights(weights),
            "EnableTagOverride": bool(defn.get("EnableTagOverride")),
        }
        snapshot = {cid: dict(c.row) for cid, c in self.checks.items()}
        self.services[sid] = row
        if replace_checks:
            for cid in [cid for cid, c in self.checks.items() if c.row.get("ServiceID") == sid]:
                del self.checks[cid]
        for i, chk in enumerate(check_types):
            cid = chk.get("CheckID") or chk.get("ID") or f"service:{sid}"
            if not (chk.get("CheckID") or chk.get("ID")) and len(check_types) > 1:
                cid += f":{i + 1}"
            check_row = self._check_row(chk, cid, row)
            prev = snapshot.get(cid)
            if prev is not None:  # re-registration keeps the previous Status and Output
                check_row["Status"] = prev["Status"]
                check_row["Output"] = prev.get("Output", "")
            ttl = int(chk.get("TTL") or 0)
            self.checks[cid] = LocalCheck(
                row=check_row, ttl_ns=ttl, expires_at=now + ttl / 1e9 if ttl else None
            )
        return row

    def _check_row(self, chk: Record, cid: str, service: Record) -> Record:
        definition = {
            key: chk[key]
            for key in (
                "HTTP",
                "Header",
                "Method",
                "Body",
                "TCP",
                "UDP",
                "GRPC",
                "TLSServerName",
                "TLSSkipVerify",
                "Interval",
                "Timeout",
                "TTL",
                "DeregisterCriticalServiceAfter",
                "ScriptArgs",
                "H2PING",
                "OSService",
                "AliasNode",
                "AliasService",
            )
            if chk.get(key)
        }
        return {
            "Node": self.node,
            "CheckID": cid,
            "Name": chk.get("Name") or f"Service '{service['Service']}' check",
            "Status": chk.get("Status") or "critical",
            "Notes": chk.get("Notes", ""),
            "Output": "",
            "ServiceID": service["ID"],
            "ServiceName": service["Service"],
            "ServiceTags": service.get("Tags"),
            "Type": check_type(definition),
            "Definition": definition,
        }

    def deregister_service(self, sid: str) -> None:
        """Remove a service and its checks; 404 with Consul's hint for an unknown ID."""
        if sid not in self.services:
            raise AgentError(
                404,
                f'Unknown service ID "{sid}". Ensure that the service ID is passed, '
                "not the service name.",
            )
        del self.services[sid]
        for cid in [cid for cid, c in self.checks.items() if c.row.get("ServiceID") == sid]:
            del self.checks[cid]

    def find_check(self, cid: str) -> LocalCheck:
        """The local check or Consul's 404 for an unknown check ID."""
        check = self.checks.get(cid)
        if check is None:
            raise AgentError(
                404,
                f'Unknown check ID "{cid}". Ensure that the check ID is passed, '
                "not the check name.",
            )
        return check

    def update_ttl(self, cid: str, status: str, output: str, now: float) -> None:
        """``updateTTLCheck``: only TTL checks accept pass/warn/fail/update."""
        check = self.find_check(cid)
        if not check.ttl_ns:
            raise AgentError(500, f'CheckID "{cid}" does not have associated TTL')
        if len(output) > OUTPUT_MAX:
            output = f"{output[:OUTPUT_MAX]} ... (captured {OUTPUT_MAX} of {len(output)} bytes)"
        check.row["Status"] = status
        check.row["Output"] = output
        check.expires_at = now + check.ttl_ns / 1e9

    def expire_ttls(self, now: float) -> bool:
        """Turn checks whose TTL ran out critical; True if any changed."""
        changed = False
        for check in self.checks.values():
            if check.expires_at is not None and now >= check.expires_at:
                last = check.row.get("Output", "")
                check.row["Status"] = "critical"
                check.row["Output"] = (
                    f"TTL expired (last output before timeout follows): {last}"
                    if last
                    else "TTL expired"
                )
                check.expires_at = None
                changed = True
        return changed

    def next_expiry(self) -> Optional[float]:
        times = [c.expires_at for c in self.checks.values() if c.expires_at is not None]
        return min(times) if times else None

    def service_json(self, row: Record) -> Record:
        """``api.AgentService`` shape: Tags [] and Meta {} never null."""
        out: Record = {}
        if row.get("Kind"):
            out["Kind"] = row["Kind"]
        out.update(
            {
                "ID": row["ID"],
                "Service": row["Service"],
                "Tags": list(row.get("Tags") or []),
                "Meta": dict(row.get("Meta") or {}),
                "Port": row.get("Port", 0),
                "Address": row.get("Address", ""),
            }
        )
        if row.get("TaggedAddresses"):
            out["TaggedAddresses"] = row["TaggedAddresses"]
        out["Weights"] = row["Weights"]
        out["EnableTagOverride"] = row["EnableTagOverride"]
        out["Datacenter"] = self.datacenter
        return out

    def checks_for(self, service_id: Optional[str]) -> List[Record]:
        return [
            c.row for c in self.checks.values() if c.row.get("ServiceID", "") == (service_id or "")
        ]


def _check_problem(chk: Record) -> Optional[str]:
    """``CheckType.Validate`` for the check kinds the emulator knows."""
    interval_kind = any(
        chk.get(k) for k in ("ScriptArgs", "HTTP", "TCP", "UDP", "GRPC", "H2PING", "OSService")
    )
    alias = bool(chk.get("AliasNode") or chk.get("AliasService"))
    interval = chk.get("Interval") or 0
    ttl = chk.get("TTL") or 0
    if interval > 0 and ttl > 0:
        return "Interval and TTL cannot both be specified"
    if interval_kind and interval <= 0:
        return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    if not interval_kind and not alias and ttl <= 0:
        return "TTL must be > 0 for TTL checks"
    if (chk.get("FailuresBeforeWarning") or 0) > (chk.get("FailuresBeforeCritical") or 0):
        return "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
    return None


def _tagged_addresses(defn: Record, address: str) -> Optional[Record]:
    """Agent default: ``lan_ipv4``/``wan_ipv4`` (or ``_ipv6``) filled from an IP Address."""
    tagged = dict(defn.get("TaggedAddresses") or {})
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return tagged or None
    suffix = "ipv4" if ip.version == 4 else "ipv6"
    port = defn.get("Port", 0)
    for kind in ("lan", "wan"):
        tagged.setdefault(f"{kind}_{suffix}", {"Address": address, "Port": port})
    return tagged
