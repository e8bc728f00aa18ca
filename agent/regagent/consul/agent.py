"""Agent-mode I/O (`consul.mode: agent`): for hosts that run their own Consul agent.

Services go through the local agent's API, which owns them, runs their checks and keeps the
catalog in sync by anti-entropy (design decision 1). regagent still writes only what differs;
check status is the agent's business, so the plan compares services only.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import quote

from regagent.config.show import format_duration
from regagent.consul.catalog import parse_service
from regagent.consul.http import WriteRequest, get_json
from regagent.consul.pool import ServerPool
from regagent.discovery.intents import SOURCE_DISCOVERY
from regagent.discovery.probe import url_host
from regagent.errors import ConsulUnreachable
from regagent.model import (
    ActualState,
    CheckState,
    HealthProbe,
    NodeRegistration,
    ServiceIntent,
    ServiceRegistration,
    service_check_id,
)
from regagent.plan import Plan


def read_agent_actual(pool: ServerPool) -> ActualState:
    """The local agent's node name, services and checks (agent-local: no index, no leader)."""
    me = pool.call("read agent", lambda c: get_json(c, "/v1/agent/self", dict)).data
    services = pool.call("read agent services", lambda c: get_json(c, "/v1/agent/services", dict))
    checks = pool.call("read agent checks", lambda c: get_json(c, "/v1/agent/checks", dict))
    try:
        member = me.get("Member") or {}
        node = NodeRegistration(str(me["Config"]["NodeName"]), str(member.get("Addr") or ""), {})
        return ActualState(
            node=node,
            services=tuple(parse_service(raw) for _, raw in sorted((services.data or {}).items())),
            checks=tuple(
                CheckState(
                    raw["CheckID"],
                    raw["ServiceID"],
                    raw.get("Name", ""),
                    raw.get("Status", ""),
                    raw.get("Output", ""),
                )
                for _, raw in sorted((checks.data or {}).items())
                if raw.get("ServiceID")
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        server = pool.current_server.address
        raise ConsulUnreachable(f"{server} sent a malformed agent answer ({exc!r})") from None


CHECK_META_KEY = "regagent-check"


def agent_probe(intent: ServiceIntent) -> Optional[HealthProbe]:
    """What the agent should run: the intent's probe; for a discovered exporter without one (it
    vanished) a GET of its metrics URL, so the agent reports it critical; else nothing
    (a static service with `check: {type: none}`)."""
    if intent.probe is not None or intent.source != SOURCE_DISCOVERY:
        return intent.probe
    service = intent.service
    if "metrics_path" not in service.meta or not service.address:
        return None
    url = (
        f"{service.meta.get('scheme', 'http')}://{url_host(service.address)}:{service.port}"
        f"{service.meta['metrics_path']}"
    )
    return HealthProbe("http", url)


def describe_check(probe: Optional[HealthProbe], interval: float) -> str:
    """Stable one-line description of the check definition, kept in the service's Meta: the
    agent does not echo definitions back, so a changed definition must change the service."""
    if probe is None:
        return "none"
    return f"{probe.kind} {probe.target} every {format_duration(interval)}"


def with_check_meta(
    service: ServiceRegistration, probe: Optional[HealthProbe], interval: float
) -> ServiceRegistration:
    meta = {**service.meta, CHECK_META_KEY: describe_check(probe, interval)}
    return replace(service, meta=meta)


def check_definition(
    service: ServiceRegistration, probe: Optional[HealthProbe], interval: float
) -> Optional[Dict[str, Any]]:
    if probe is None:
        return None
    check: Dict[str, Any] = {
        "CheckID": service_check_id(service.id),
        "Name": f"{service.name} health",
        "Interval": format_duration(interval),
        "Timeout": format_duration(probe.timeout),
    }
    check["HTTP" if probe.kind == "http" else "TCP"] = probe.target
    return check


def agent_register_body(
    service: ServiceRegistration, check: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    body: Dict[str, Any] = {
        "ID": service.id,
        "Name": service.name,
        "Tags": list(service.tags),
        "Address": service.address,
        "Port": service.port,
        "Meta": dict(service.meta),
    }
    if check is not None:
        body["Check"] = check
    return body


def agent_requests(
    plan: Plan, probes: Mapping[str, Optional[HealthProbe]], interval: float
) -> List[WriteRequest]:
    """The agent API requests that carry out `plan` (services only; no node, no statuses)."""
    requests = [
        WriteRequest(
            "/v1/agent/service/register",
            agent_register_body(
                write.service,
                check_definition(write.service, probes.get(write.service.id), interval),
            ),
            f"service {write.service.id}",
        )
        for write in plan.services
    ]
    requests += [agent_deregister_request(s.id) for s in plan.deregister]
    return requests


def agent_deregister_request(service_id: str) -> WriteRequest:
    path = f"/v1/agent/service/deregister/{quote(service_id, safe='')}"
    return WriteRequest(path, {}, f"deregister {service_id}")
