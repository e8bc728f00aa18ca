"""Registration values: what discovery and the configuration want, what the planner compares
and what the Consul backends read and write.

Everything here is plain, frozen data in canonical form, so that equal desired states produce
byte-identical Consul requests (writes only on change depend on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

MANAGED_BY_KEY = "managed-by"
MANAGED_BY_VALUE = "regagent"

Result = Tuple[str, str]  # a check result: (status, stable output)


class Source(str, Enum):
    """Where a service intent comes from. The values are the `source` label of
    `regagent_services` and the `source` of `regagent discover --format json`."""

    STATIC = "static"  # a configured service
    DISCOVERY = "discovery"  # a discovered exporter
    SELF = "self"  # regagent's own metrics endpoint (telemetry.listen)

    def __str__(self) -> str:  # the value in f-strings and labels, on every Python version
        return self.value


PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"


def canonical_tags(tags: Sequence[str]) -> Tuple[str, ...]:
    """Sorted and de-duplicated: Consul compares tag lists in order, so order must be stable."""
    return tuple(sorted(set(tags)))


@dataclass(frozen=True)
class NodeRegistration:
    """The external node that represents this host in the catalog."""

    name: str
    address: str
    meta: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceRegistration:
    """One service instance as Consul stores it (the fields regagent controls)."""

    id: str
    name: str
    port: int
    address: str = ""
    tags: Tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def managed(self) -> bool:
        return self.meta.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


def canonical_service(service: ServiceRegistration) -> ServiceRegistration:
    """The form regagent writes: tags canonical, meta key-sorted, `managed-by=regagent` always
    set (it wins over any value the config or Consul had), so equal services compare equal."""
    return ServiceRegistration(
        id=service.id,
        name=service.name,
        port=service.port,
        address=service.address,
        tags=canonical_tags(service.tags),
        meta=meta_dict({**service.meta, MANAGED_BY_KEY: MANAGED_BY_VALUE}),
    )


@dataclass(frozen=True)
class CheckState:
    """A service check's state; regagent runs checks itself (Consul never runs catalog checks)."""

    check_id: str
    service_id: str
    name: str
    status: str
    output: str = ""


@dataclass(frozen=True)
class NodeCheck:
    """A node-level check (no ServiceID): its status counts for every service on the node, so
    one critical node check takes all of them out of `?passing` health reads.

    regagent writes only the node checks it declares (`regagent.nodechecks`); `type` and
    `definition` are sent as given (e.g. Type "session", Definition {"SessionName": ...}).
    `consul_owns_status`: Consul changes this check's status itself (a `session` check), so the
    planner never compares it: it is written (with `status` as given) only when anything else
    differs or the check is missing, and never "corrected" back."""

    check_id: str
    name: str
    status: str
    output: str = ""
    notes: str = ""
    type: str = ""
    definition: Mapping[str, str] = field(default_factory=dict)
    consul_owns_status: bool = False


@dataclass(frozen=True)
class HealthProbe:
    """How to check a service from this host: an HTTP GET or a TCP connect."""

    kind: str  # "http" or "tcp"
    target: str  # URL for http, host:port for tcp
    timeout: float = 2.0


@dataclass(frozen=True)
class ServiceIntent:
    """A service regagent wants registered, before its check has run.

    `status` is set when the source already knows the health (discovery probed the exporter, or
    it vanished); otherwise `probe` says how to find out; with neither the service is passing.
    """

    service: ServiceRegistration
    source: Source
    probe: Optional[HealthProbe] = None
    status: Optional[Tuple[str, str]] = None  # (status, stable output)


def url_host(address: str) -> str:
    """An address as the host part of a URL or host:port: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def service_check_id(service_id: str) -> str:
    """Deterministic check ID per service, in the agent's own `service:<id>` convention."""
    return f"service:{service_id}"


@dataclass(frozen=True)
class DesiredState:
    """What regagent wants Consul to hold for this node. Checks are either results regagent
    writes (`checks`, catalog mode) or definitions a Consul agent runs (`probes`, agent mode)."""

    node: NodeRegistration
    services: Tuple[ServiceRegistration, ...]
    checks: Tuple[CheckState, ...]
    probes: Mapping[str, HealthProbe] = field(default_factory=dict)  # service ID -> its check
    node_checks: Tuple[NodeCheck, ...] = ()  # wanted on the node, by check ID order
    # Node check IDs regagent manages here: wanted ones are written, the others removed if
    # present. A node check whose ID is not here (serfHealth, another tool's) is never touched.
    owned_node_checks: FrozenSet[str] = frozenset()


@dataclass(frozen=True)
class ActualState:
    """What Consul holds for this node (all services, owned or not) and their checks."""

    node: Optional[NodeRegistration]
    services: Tuple[ServiceRegistration, ...]
    checks: Tuple[CheckState, ...]
    node_check_ids: Tuple[str, ...] = ()  # node-level checks, e.g. serfHealth of a real agent
    node_checks: Tuple[NodeCheck, ...] = ()  # the same checks, as read (catalog mode)


def meta_dict(pairs: Mapping[str, str]) -> Dict[str, str]:
    """A plain, key-sorted copy for JSON output."""
    return {k: pairs[k] for k in sorted(pairs)}


def service_json(service: ServiceRegistration) -> Dict[str, Any]:
    """The JSON form every command prints (sync, status, discover)."""
    return {
        "id": service.id,
        "name": service.name,
        "address": service.address,
        "port": service.port,
        "tags": list(service.tags),
        "meta": meta_dict(service.meta),
    }
